"""--warm-start: result JSON files become hyperopt trials that TPE goes on from
(the recovery path when results.pkl is lost)."""

import json
import os
import shutil
from pathlib import Path

import pytest
from hyperopt import Trials, space_eval

import hyperopt_optimize
from hks.core import storage
from hks.trials import warm_start

ORIGINAL_RESULTS = Path(__file__).parent / "fixtures" / "original-results"
ORIGINAL_BEST = ORIGINAL_RESULTS / "model_0.676100010872_6066e.txt.json"


def cheap_objective(hype_space, config, earlier=None):
    """Stands in for training: TPE's suggestion is what these tests look at."""
    return {"loss": -0.1, "status": "ok", "fine_best_accuracy": 0.1,
            "coarse_best_accuracy": 0.2, "model_name": "model_new", "space": hype_space}


def test_the_42_original_results_become_42_trials_and_the_best_is_theirs():
    trials = Trials()
    assert warm_start.warm_start(trials, ORIGINAL_RESULTS, hyperopt_optimize.space) == 42
    assert len(trials.trials) == 42
    assert min(trials.losses()) == pytest.approx(-0.6761, abs=1e-6)
    best = min(trials.trials, key=lambda t: t["result"]["loss"])
    vals = {label: v[0] for label, v in best["misc"]["vals"].items() if v}
    assert space_eval(hyperopt_optimize.space, vals) == json.loads(ORIGINAL_BEST.read_text())["space"]


def test_unused_conditional_branches_have_no_value():
    misc = warm_start.misc_of(json.loads(ORIGINAL_BEST.read_text())["space"], 7,
                               hyperopt_optimize.space)
    assert misc["vals"]["first_conv"] == [1] and misc["vals"]["first_conv_size"] == [0]  # 3
    assert misc["vals"]["residual"] == [1] and misc["vals"]["residual_units"] == [3.0]
    assert misc["vals"]["one_more_fc"] == [0] and misc["vals"]["fc_units_2_mult"] == []
    assert misc["idxs"]["fc_units_2_mult"] == [] and misc["idxs"]["residual_units"] == [7]
    assert misc["vals"]["use_BN"] == [1]  # True is the second choice, not the number 1


def test_tpe_goes_on_from_the_imported_trials(config, monkeypatch):
    monkeypatch.setattr(hyperopt_optimize, "optimize_cnn", cheap_objective)
    trials = Trials()
    warm_start.warm_start(trials, ORIGINAL_RESULTS, hyperopt_optimize.space)
    config.max_evals, config.plots = 43, False
    hyperopt_optimize.run_search(config, trials)
    saved = hyperopt_optimize.load_trials(config.trials_file)
    assert len(saved.trials) == 43
    new = saved.trials[-1]
    assert new["result"]["model_name"] == "model_new" and new["tid"] == 42
    assert space_eval(hyperopt_optimize.space, {k: v[0] for k, v in new["misc"]["vals"].items()
                                                if v}) == new["result"]["space"]


def test_files_that_do_not_fit_are_skipped_with_the_reason(tmp_path, capsys):
    shutil.copy(ORIGINAL_BEST, tmp_path)
    wrong = json.loads(ORIGINAL_BEST.read_text())
    wrong["space"]["optimizer"], wrong["model_name"] = "SGD", "model_0.5_sgd"
    (tmp_path / "model_0.5_sgd.txt.json").write_text(json.dumps(wrong))
    wrong["space"] = dict(wrong["space"], optimizer="Adam", batch_size=5000.0)
    wrong["model_name"] = "model_0.4_big"
    (tmp_path / "model_0.4_big.txt.json").write_text(json.dumps(wrong))
    (tmp_path / "model_0.3_cut.txt.json").write_text('{"loss": -0.3, "space": {')
    trials = Trials()
    assert warm_start.warm_start(trials, tmp_path, hyperopt_optimize.space) == 1
    out = capsys.readouterr().out
    assert "model_0.5_sgd.txt.json: optimizer: 'SGD' is none of its choices" in out
    assert "model_0.4_big.txt.json: batch_size: 5000.0 is outside" in out
    assert "model_0.3_cut.txt.json" in out
    assert warm_start.warm_start(trials, tmp_path, hyperopt_optimize.space) == 0  # never twice


def test_the_command_line_warm_starts_and_suggests_it(config, cifar_dir, monkeypatch, capsys):
    monkeypatch.setattr(hyperopt_optimize, "optimize_cnn", cheap_objective)
    results = Path(config.results_dir)
    results.mkdir(parents=True)
    shutil.copy(ORIGINAL_BEST, results)
    argv = ["--data-dir", str(cifar_dir), "--results-dir", str(results), "--no-plots",
            "--trials-file", config.trials_file, "--offline", "--max-evals", "2"]
    assert hyperopt_optimize.main(argv[:-2] + ["--max-evals", "1"]) == 0
    assert f"--warm-start {results}" in capsys.readouterr().out  # results.pkl was missing
    Path(config.trials_file).unlink()  # as if it was lost
    assert hyperopt_optimize.main(argv + ["--warm-start", str(results)]) == 0
    assert "Warm start: added 1 trials" in capsys.readouterr().out
    trials = hyperopt_optimize.load_trials(config.trials_file)
    assert len(trials.trials) == 2 and trials.trials[0]["result"]["loss"] == pytest.approx(-0.6761)
    assert storage.load_best_result(results)["loss"] == pytest.approx(-0.6761)


def test_a_result_file_that_results_pkl_missed_is_taken_back_not_trained_again(
        config, cifar_dir, monkeypatch, capsys):
    """Killed between a trial's result file and results.pkl: the resumed
    search adds that file's trial instead of training another in its place.
    A file older than results.pkl (another search's) is left alone."""
    trained = []

    def objective(hype_space, config, earlier=None):
        result = dict(cheap_objective(hype_space, config), model_name=f"model_new{len(trained)}")
        trained.append(result)
        storage.save_json_result(result, config.results_dir)
        return result

    monkeypatch.setattr(hyperopt_optimize, "optimize_cnn", objective)
    results = Path(config.results_dir)
    argv = ["--data-dir", str(cifar_dir), "--results-dir", str(results), "--no-plots",
            "--trials-file", config.trials_file, "--offline"]
    assert hyperopt_optimize.main(argv + ["--max-evals", "1"]) == 0
    older = results / "model_0.200000_older.txt.json"
    older.write_text(ORIGINAL_BEST.read_text().replace("model_0.676100010872_6066e",
                                                       "model_0.200000_older"))
    saved_at = Path(config.trials_file).stat().st_mtime
    os.utime(older, (saved_at - 60, saved_at - 60))
    unsaved = dict(json.loads(ORIGINAL_BEST.read_text()), model_name="model_0.676100_unsvd")
    storage.save_json_result(unsaved, results)  # ... and then the search was killed
    capsys.readouterr()

    assert hyperopt_optimize.main(argv + ["--max-evals", "2"]) == 0
    assert "Took back 1 trials whose result file was written after" in capsys.readouterr().out
    assert len(trained) == 1  # nothing trained in its place
    names = [t["result"]["model_name"] for t in hyperopt_optimize.load_trials(
        config.trials_file).trials]
    assert names == ["model_new0", "model_0.676100_unsvd"]
    assert hyperopt_optimize.main(argv + ["--max-evals", "3"]) == 0  # never twice
    assert len(hyperopt_optimize.load_trials(config.trials_file).trials) == 3


def test_more_than_one_unsaved_result_file_is_left_to_warm_start(config, cifar_dir, monkeypatch,
                                                                 capsys):
    """A killed search leaves at most one result file unsaved: two or more
    newer files come from elsewhere and are not adopted silently."""
    monkeypatch.setattr(hyperopt_optimize, "optimize_cnn", cheap_objective)
    results = Path(config.results_dir)
    argv = ["--data-dir", str(cifar_dir), "--results-dir", str(results), "--no-plots",
            "--trials-file", config.trials_file, "--offline", "--max-evals", "1"]
    assert hyperopt_optimize.main(argv) == 0
    for uid in ("other1", "other2"):
        copy = dict(json.loads(ORIGINAL_BEST.read_text()), model_name=f"model_0.5_{uid}")
        storage.save_json_result(copy, results)
    capsys.readouterr()
    assert hyperopt_optimize.main(argv) == 0
    assert "2 result files" in capsys.readouterr().out
    assert len(hyperopt_optimize.load_trials(config.trials_file).trials) == 1
