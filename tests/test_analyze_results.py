"""analyze_results.py on a copy of the original project's 42 results plus a
few of this project's own (Keras 3 names, a failed trial), a truncated JSON
and a file that is not a result: leaderboard, summary, plots, CSV and the
TensorBoard HParams files; then the folders it must refuse or pass over."""

import contextlib
import csv
import io
import json
import os
import shutil
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest

import analyze_results
import hyperopt_optimize
from hks.reports import results_table, tensorboard_hparams
from tensorboard_events import read_events, run_contents

# The conditional hyperparameters of the search space: the original's nulls.
CONDITIONAL = tensorboard_hparams.conditional_hparams(hyperopt_optimize.space)
ORIGINAL_RESULTS = Path(__file__).parent / "fixtures" / "original-results"
BEST = "model_0.676100010872_6066e.txt.json"
TRUNCATED = "model_0.500000_trunc.txt.json"
RESIDUAL_UNUSED = "model_0.0841000030488_eb09e"  # residual null, first_conv used
FIRST_CONV_UNUSED = "model_0.420600043416_33dfa"  # first_conv, residual, one_more_fc null
N_ORIGINAL = 42
PNGS = ["hyperparameters_scatter_matrix.png", "optimization_history.png",
        "learning_curves.png"]

SPACE = {
    "lr_rate_mult": 1.0, "l2_weight_reg_mult": 1.0, "batch_size": 50.0,
    "optimizer": "Adam", "coarse_labels_weight": 0.3,
    "conv_dropout_drop_proba": 0.1, "fc_dropout_drop_proba": 0.2, "use_BN": False,
    "first_conv": None, "residual": 2.0, "conv_hiddn_units_mult": 0.15,
    "nb_conv_pool_layers": 2, "conv_pool_res_start_idx": 0.0, "pooling_type": "max",
    "conv_kernel_size": 3.0, "res_conv_kernel_size": 2.0, "fc_units_1_mult": 0.03,
    "one_more_fc": 1.25, "activation": "relu",
}


def own_result(uid, fine, coarse, **space):
    """A successful result as neural_net.make_result writes it (Keras 3 names)."""
    fine_curve, coarse_curve = [fine - 0.1, fine, fine - 0.01], [coarse - 0.1, coarse, coarse]
    history = {"loss": [3.0, 2.5, 2.4], "val_loss": [3.1, 2.6, 2.7],
               "val_fine_outputs_accuracy": fine_curve, "val_fine_outputs_loss": [2.0, 1.8, 1.9],
               "val_coarse_outputs_accuracy": coarse_curve,
               "val_coarse_outputs_loss": [1.5, 1.2, 1.3]}
    return {
        "status": "ok", "model_name": f"model_{fine:.6f}_{uid}", "space": {**SPACE, **space},
        "history": history, "epochs": 3, "training_seconds": 12.5, "nb_params": 123456,
        "keras_backend": "tensorflow", "keras_version": "3.15.1", "train_images": 400,
        "validation_images": 100, "fine_best_accuracy": fine, "fine_end_accuracy": fine_curve[-1],
        "fine_best_loss": 1.8, "fine_end_loss": 1.9, "coarse_best_accuracy": coarse,
        "coarse_end_accuracy": coarse, "coarse_best_loss": 1.2, "coarse_end_loss": 1.3,
        "loss": -fine, "real_loss": 2.6,
    }


FAILED = {"status": "fail", "model_name": "failed_abcde", "space": SPACE,
          "error": "ResourceExhaustedError: out of memory\nmore detail",
          "traceback": "Traceback (most recent call last):\n...", "keras_backend": "tensorflow"}
OWN = [own_result("aaaa1", 0.4512, 0.55, first_conv=3, residual=None),
       FAILED,
       own_result("bbbb2", 0.6600, 0.75)]  # in the order written


def run_main(argv):
    """main(argv) in this process: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = analyze_results.main(argv)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def analysed(tmp_path_factory):
    """One run of the whole analysis over the mixed folder."""
    root = tmp_path_factory.mktemp("analysis")
    folder = root / "results"
    folder.mkdir()
    for path in ORIGINAL_RESULTS.glob("*.txt.json"):
        shutil.copyfile(path, folder / path.name)
    later = time.time() + 60
    for number, result in enumerate(OWN, 1):  # written one by one, minutes apart
        path = folder / f"{result['model_name']}.txt.json"
        path.write_text(json.dumps(result))
        os.utime(path, (later + 60 * number,) * 2)
    (folder / TRUNCATED).write_text('{"status": "ok", "fine_best_accur')
    (folder / "notes.txt").write_text("not a result")
    # A 6 x 6 scatter matrix instead of 12 x 12: the same code, a third of the
    # drawing time (the suite runs on 2 cores under a time budget).
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(results_table, "SCATTER_HPARAMS", 4)
        code, stdout, stderr = run_main(["--results-dir", str(folder), "--out-dir",
                                         str(root / "out"), "--to-tensorboard", str(root / "tb")])
    return types.SimpleNamespace(folder=folder, out=root / "out", tb=root / "tb",
                                 code=code, stdout=stdout, stderr=stderr)


def all_results():
    results = [json.loads(p.read_text()) for p in ORIGINAL_RESULTS.glob("*.txt.json")]
    return results + OWN


def test_leaderboard_and_summary(analysed):
    assert analysed.code == 0, analysed.stderr
    board = analysed.stdout.split("by best fine accuracy:\n")[1].split("\n\n")[0].splitlines()
    ranked = sorted((r for r in all_results() if r["status"] == "ok"),
                    key=lambda r: -r["fine_best_accuracy"])[:10]
    assert len(board) == 1 + 10  # header + top 10
    for line, result in zip(board[1:], ranked):
        assert f"{result['model_name']}.txt.json" in line
        assert f"{result['fine_best_accuracy']:.4f}" in line
        assert f"{result['coarse_best_accuracy']:.4f}" in line
    assert board[1].split()[:3] == ["1", "0.6761", "0.7731"] and BEST in board[1]
    own = next(line for line in board if "bbbb2" in line)  # Keras 3 result: time known
    assert "12 s" in own and " 3 " in own
    assert ("Summary: 45 trials read (44 successful, 1 failed), 1 skipped; "
            f"best fine accuracy 0.6761 in {BEST}") in analysed.stdout
    assert "failed_abcde.txt.json: ResourceExhaustedError: out of memory" in analysed.stdout


def test_broken_and_foreign_files(analysed):
    assert f"warning: skipped {TRUNCATED}: not readable JSON" in analysed.stderr
    assert "notes.txt" not in analysed.stdout + analysed.stderr
    assert "Traceback" not in analysed.stdout + analysed.stderr


def test_plots_are_real_images(analysed):
    from matplotlib.image import imread
    for name in PNGS:
        image = imread(analysed.out / name)
        height, width = image.shape[:2]
        assert 300 <= height <= 3000 and 500 <= width <= 3000, (name, image.shape)
        assert image[..., :3].std() > 0.05, f"{name} is blank"
    assert not any(analysed.folder.glob("*.png"))  # --out-dir was given


def test_csv_has_every_readable_trial(analysed):
    with open(analysed.out / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == N_ORIGINAL + len(OWN)
    by_name = {row["model_name"]: row for row in rows}
    # Own files in the order written; the originals, copied together, by id.
    assert [row["file"] for row in rows[-3:]] == [f"{r['model_name']}.txt.json" for r in OWN]
    ids = [row["model_name"].rsplit("_", 1)[1] for row in rows[:N_ORIGINAL]]
    assert ids == sorted(ids)
    failed = by_name["failed_abcde"]
    assert failed["status"] == "fail" and failed["fine_best_accuracy"] == ""
    assert failed["error"] == "ResourceExhaustedError: out of memory"
    unused = by_name[RESIDUAL_UNUSED]
    assert unused["residual"] == "" and unused["first_conv"] in ("3", "4")
    assert by_name[FIRST_CONV_UNUSED]["first_conv"] == ""
    assert by_name[FIRST_CONV_UNUSED]["one_more_fc"] == ""
    best = by_name[BEST.removesuffix(".txt.json")]
    assert best["residual"] == "3" and best["use_BN"] == "True" and best["optimizer"] == "Nadam"
    assert best["epochs"] == "100" and best["training_seconds"] == ""  # Keras 2: from history
    assert by_name["model_0.660000_bbbb2"]["epochs"] == "3"
    assert float(best["fine_best_accuracy"]) == pytest.approx(0.6761000108718872)


def test_tensorboard_hparams(analysed):
    from tensorboard.plugins.hparams import metadata
    successful = [r for r in all_results() if r["status"] == "ok"]
    runs = sorted(p.name for p in analysed.tb.iterdir() if p.is_dir())
    assert runs == sorted(r["model_name"] for r in successful)  # no failed run
    for result in successful:
        hparams, scalars = run_contents(analysed.tb / result["model_name"])
        assert set(hparams) == set(SPACE)
        assert scalars["fine_best_accuracy"] == pytest.approx(result["fine_best_accuracy"])
        assert scalars["coarse_best_accuracy"] == pytest.approx(result["coarse_best_accuracy"])
    hparams, scalars = run_contents(analysed.tb / RESIDUAL_UNUSED)
    assert hparams["residual"] == "none" and hparams["first_conv"] in ("3", "4")
    hparams, _ = run_contents(analysed.tb / BEST.removesuffix(".txt.json"))
    assert hparams["residual"] == "3" and hparams["one_more_fc"] == "none"
    assert hparams["batch_size"] == 320.0 and hparams["use_BN"] is True
    assert hparams["optimizer"] == "Nadam"
    _, scalars = run_contents(analysed.tb / "model_0.660000_bbbb2")
    assert scalars["training_seconds"] == pytest.approx(12.5)

    [config] = [v for e in read_events(analysed.tb) for v in e.summary.value
                if v.tag == metadata.EXPERIMENT_TAG]
    experiment = metadata.parse_experiment_plugin_data(config.metadata.plugin_data.content)
    infos = {info.name: info for info in experiment.hparam_infos}
    assert set(infos) == set(SPACE)
    residuals = {tensorboard_hparams.hparams_of(r["space"], CONDITIONAL)["residual"]
                 for r in successful}
    assert {v.string_value for v in infos["residual"].domain_discrete.values} == residuals
    assert "none" in residuals and "3" in residuals
    assert infos["batch_size"].domain_interval.min_value == 50.0
    tags = {m.name.tag for m in experiment.metric_infos}
    assert {"fine_best_accuracy", "coarse_best_accuracy", "training_seconds"} <= tags


def test_hparams_of_and_the_conditional_keys():
    values = tensorboard_hparams.hparams_of({**SPACE, "first_conv": 3, "use_BN": True}, CONDITIONAL)
    assert values["first_conv"] == "3" and values["residual"] == "2"
    assert values["one_more_fc"] == "1.25" and values["use_BN"] is True
    assert values["nb_conv_pool_layers"] == 2.0 and values["optimizer"] == "Adam"
    assert tensorboard_hparams.hparams_of(SPACE, CONDITIONAL)["first_conv"] == "none"
    # The original's space is this one, key for key: its nulls are the conditional keys.
    nullable = {k for r in all_results() for k, v in r["space"].items() if v is None}
    assert nullable == set(CONDITIONAL)


def test_write_hparams_run_replaces_its_file(tmp_path):
    result = own_result("ccccc", 0.5, 0.6)
    run = tensorboard_hparams.write_hparams_run(result, tmp_path)
    tensorboard_hparams.write_hparams_run(result, tmp_path)
    assert run == tmp_path / result["model_name"]
    assert len(list(run.iterdir())) == 1
    assert tensorboard_hparams.write_hparams_run(FAILED, tmp_path) is None
    assert tensorboard_hparams.write_hparams_experiment(tmp_path, [result, FAILED]) == len(SPACE)
    assert tensorboard_hparams.write_hparams_experiment(tmp_path, [result]) == len(SPACE)
    assert len([p for p in tmp_path.iterdir() if p.is_file()]) == 1


def test_empty_folder(tmp_path):
    (tmp_path / "notes.txt").write_text("not a result")
    code, stdout, stderr = run_main(["--results-dir", str(tmp_path)])
    assert code == 0 and "No trial results (*.txt.json) to analyse" in stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_only_broken_results(tmp_path):
    (tmp_path / TRUNCATED).write_text('{"status": ')
    (tmp_path / "model_0.1_list.txt.json").write_text("[1, 2]")
    code, stdout, stderr = run_main(["--results-dir", str(tmp_path)])
    assert code == 0 and "(2 skipped)" in stdout
    assert f"skipped {TRUNCATED}: not readable JSON" in stderr
    assert "skipped model_0.1_list.txt.json: a JSON list, not a trial result" in stderr


def test_only_failed_trials(tmp_path):
    (tmp_path / "failed_abcde.txt.json").write_text(json.dumps(FAILED))
    code, stdout, stderr = run_main(["--results-dir", str(tmp_path)])
    assert code == 0, stderr
    assert "1 trials read (0 successful, 1 failed), 0 skipped" in stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "failed_abcde.txt.json", "optimization_history.png", "results.csv"]


def test_refused_folders_and_flags(tmp_path, capsys):
    code, _, stderr = run_main(["--results-dir", str(tmp_path / "nope")])
    assert code == 1 and "results folder" in stderr and "does not exist" in stderr
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "failed_abcde.txt.json").write_text(json.dumps(FAILED))
    (tmp_path / "a_file").write_text("")
    code, _, stderr = run_main(["--results-dir", str(tmp_path / "results"),
                                "--out-dir", str(tmp_path / "a_file")])
    assert code == 1 and "error: cannot use --out-dir" in stderr
    with pytest.raises(SystemExit) as exit_:
        analyze_results.main(["--top", "0"])
    assert exit_.value.code == 2
    assert "--top: '0' must be at least 1" in capsys.readouterr().err


def test_command_line_exit_code(tmp_path):
    script = Path(analyze_results.__file__)
    done = subprocess.run([sys.executable, str(script), "--results-dir", str(tmp_path / "nope")],
                          capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert done.returncode == 1
    assert done.stderr.startswith("error: results folder") and "Traceback" not in done.stderr


def test_conditional_hyperparameters_come_from_the_space_even_when_always_used(tmp_path):
    """A folder whose trials all used residual blocks still writes `residual`
    as a string, as the search's own --tensorboard does, so that both can
    share one TensorBoard folder."""
    results, tb = tmp_path / "results", tmp_path / "tb"
    results.mkdir()
    for uid, fine in (("ddddd", 0.31), ("eeeee", 0.32)):
        result = own_result(uid, fine, 0.4, residual=2.0)
        (results / f"{result['model_name']}.txt.json").write_text(json.dumps(result))
    code, _, err = run_main(["--results-dir", str(results), "--to-tensorboard", str(tb)])
    assert code == 0, err
    hparams, _ = run_contents(tb / "model_0.310000_ddddd")
    assert hparams["residual"] == "2" and hparams["one_more_fc"] == "1.25"


def test_the_search_hparams_pass_over_a_result_without_space(tmp_path, capsys):
    (tmp_path / "model_0.900000_bad00.txt.json").write_text('{"status": "ok", "loss": -0.9}')
    good = own_result("fffff", 0.5, 0.6)
    (tmp_path / f"{good['model_name']}.txt.json").write_text(json.dumps(good))
    tensorboard_hparams.log_trial(good, tmp_path / "tb", tmp_path, CONDITIONAL)
    assert "warning" not in capsys.readouterr().out
    assert read_events(tmp_path / "tb") and run_contents(tmp_path / "tb" / good["model_name"])[0]
