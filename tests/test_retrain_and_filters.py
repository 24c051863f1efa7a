"""retrain_best_with_tensorboard.py and conv_filters_visualization.py on the
tiny data set: the best result is retrained for one epoch with TensorBoard
logs and best weights, the weights load back into the model of their
hyperspace, and each convolution layer gets its grid of filter patterns.
Bad inputs end with exit code 1 and one line, never a traceback."""

import json
import re
import subprocess
import sys

import pytest

import retrain_best_with_tensorboard as retrain_script
from conftest import ROOT, TINY_HYPE_SPACE
from hks.core import flags, storage

RETRAIN = str(ROOT / "retrain_best_with_tensorboard.py")
FILTERS = str(ROOT / "conv_filters_visualization.py")
PICTURE_NAME = re.compile(r"(?P<layer>.+)_best_filters_(?P<shown>\d+)_\((?P<rows>\d+)x"
                          r"(?P<columns>\d+)\)_out_of_(?P<filters>\d+)\.png")
# TINY_HYPE_SPACE: two stages of int(40 x 0.15) = 6, then 12 filters, 3x3.
EXPECTED_PICTURES = {"conv2d": (6, 2, 3, 6), "conv2d_1": (12, 3, 4, 12)}
TILE = 32 * 4  # a 32x32 pattern drawn 4 times larger
MARGIN = 4


def run(script, args, env, cwd, timeout=300):
    return subprocess.run([sys.executable, script, *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)


def write_result(folder, accuracy, uid, space):
    result = {"status": "ok", "loss": -accuracy, "fine_best_accuracy": accuracy,
              "model_name": storage.model_name_for(accuracy, uid), "space": space}
    return storage.save_json_result(result, folder)


def event_tags(folder):
    """{tag: plugin} of the TensorBoard event files in `folder`."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    tags = {}
    for path in sorted(folder.glob("events.out.tfevents.*")):
        for event in EventFileLoader(str(path)).Load():
            for value in event.summary.value:
                tags[value.tag] = value.metadata.plugin_data.plugin_name
    return tags


def h5_arrays(path):
    """Every array of a .weights.h5 file's layers, by its path in the file."""
    import h5py
    arrays = {}
    with h5py.File(path, "r") as f:
        f["layers"].visititems(lambda name, item: arrays.__setitem__(name, item[()])
                               if isinstance(item, h5py.Dataset) else None)
    return arrays


def assert_one_line_error(done, code=1):
    assert done.returncode == code, done.stdout[-2000:] + done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    return done.stderr.strip()


@pytest.mark.filterwarnings("ignore:Skipping variable loading for optimizer")
def test_retrain_best_then_draw_filters(cifar_dir, tmp_path, monkeypatch, capsys):
    """Both scripts' main() in this process: TensorFlow starts once. (Their
    command lines run as processes in the bad-input tests below.)"""
    for name in ("HKS_VAL_SPLIT", "CODE_TESTING", "DATASET_SIZE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)  # TensorBoard/, weights/ and layers/ land here
    write_result(tmp_path / "results", 0.5, "aaaaa", TINY_HYPE_SPACE)
    write_result(tmp_path / "results", 0.1, "bbbbb", dict(TINY_HYPE_SPACE, use_BN=True))
    assert retrain_script.main(["--results-dir", "results", "--data-dir", str(cifar_dir),
                                "--dataset-size", "200", "--offline", "--epochs", "1"]) == 0
    out = capsys.readouterr().out
    assert "model_0.500000_aaaaa" in out  # the best result was retrained
    assert "Total params" in out  # the model summary
    assert "tensorboard --logdir TensorBoard" in out

    # TensorBoard: per-epoch scalars for train and validation, weight histograms.
    (log_dir,) = (tmp_path / "TensorBoard").iterdir()
    assert log_dir.name.startswith("model_") and log_dir.name in out
    train_tags, validation_tags = event_tags(log_dir / "train"), event_tags(log_dir / "validation")
    assert train_tags["epoch_fine_outputs_accuracy"] == "scalars"
    assert validation_tags["epoch_fine_outputs_accuracy"] == "scalars"
    assert "histograms" in train_tags.values()

    # The best weights and their hyperspace, named after the model's id.
    uid = log_dir.name.rsplit("_", 1)[-1]
    weights = tmp_path / "weights" / f"{uid}.weights.h5"
    assert str(weights.relative_to(tmp_path)) in out
    assert json.loads((tmp_path / "weights" / f"{uid}.space.json").read_text()) == TINY_HYPE_SPACE

    # They load back into the model of that hyperspace, every array as saved.
    import neural_net
    model = neural_net.build_model(TINY_HYPE_SPACE)
    model.load_weights(str(weights))
    model.save_weights(str(tmp_path / "reloaded.weights.h5"))
    saved, reloaded = h5_arrays(weights), h5_arrays(tmp_path / "reloaded.weights.h5")
    assert saved.keys() == reloaded.keys() and len(saved) == 10
    for name, array in saved.items():
        assert (reloaded[name] == array).all(), name

    # The filters of the one-epoch model.
    import conv_filters_visualization
    from PIL import Image
    assert conv_filters_visualization.main(["--weights", f"weights/{uid}.weights.h5"]) == 0
    pictures = {}
    for path in (tmp_path / "layers").iterdir():
        match = PICTURE_NAME.fullmatch(path.name)
        assert match, path.name
        shown, rows, columns, filters = (int(match[k]) for k in ("shown", "rows", "columns",
                                                                  "filters"))
        pictures[match["layer"]] = (shown, rows, columns, filters)
        with Image.open(path) as image:
            assert image.size == (columns * TILE + (columns + 1) * MARGIN,
                                  rows * TILE + (rows + 1) * MARGIN)
            assert image.mode == "RGB" and image.getextrema() != ((0, 0),) * 3
    assert pictures == EXPECTED_PICTURES

    # The whole model too, in the form the search keeps: predict.py and the filters take it.
    whole = tmp_path / "weights" / f"{log_dir.name}.keras"
    assert str(whole.relative_to(tmp_path)) in out
    info = json.loads(whole.with_suffix(".json").read_text())
    assert info["space"] == TINY_HYPE_SPACE and info["image_size"] == 32
    assert len(info["class_names"]) == 100 and len(info["group_names"]) == 20
    assert conv_filters_visualization.main(["--weights", str(whole), "--out-dir", "whole",
                                            "--max-filters", "1", "--steps", "1"]) == 0
    assert len(list((tmp_path / "whole").iterdir())) == len(EXPECTED_PICTURES)

    # A weights file that is not one: one line, exit code 1.
    (tmp_path / "weights" / "broken.weights.h5").write_bytes(b"not HDF5")
    (tmp_path / "weights" / "broken.space.json").write_text(json.dumps(TINY_HYPE_SPACE))
    capsys.readouterr()
    assert conv_filters_visualization.main(["--weights", "weights/broken.weights.h5"]) == 1
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: weights/broken.weights.h5 does not fit") and "\n" not in error


@pytest.mark.parametrize("script, args, message", [
    (RETRAIN, ["--results-dir", "empty"], "error: no successful result in empty/"),
    (RETRAIN, ["--result", "missing.txt.json"], "error: cannot read the result file"),
    (FILTERS, ["--weights", "weights/missing.weights.h5"], "error: weights file"),
    (FILTERS, ["--weights", "lonely.weights.h5"], "error: no hyperspace next to the weights"),
    (FILTERS, ["--weights", "model.h5"], "error: model.h5: expected a <id>.weights.h5 file"),
])
def test_bad_inputs_end_with_one_line(script, args, message, clean_env, tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "lonely.weights.h5").write_bytes(b"")
    (tmp_path / "model.h5").write_bytes(b"")
    error = assert_one_line_error(run(script, args, clean_env, tmp_path))
    assert error.startswith(message), error


def test_bad_flag_values_exit_2(clean_env, tmp_path):
    assert_one_line_error(run(RETRAIN, ["--epochs", "0"], clean_env, tmp_path), code=2)
    assert_one_line_error(run(FILTERS, ["--weights", "w.weights.h5", "--steps", "x"],
                              clean_env, tmp_path), code=2)


def test_original_best_is_the_fallback_without_results(tmp_path):
    import hyperopt_optimize
    args = retrain_script.build_parser().parse_args(
        ["--original-best", "--results-dir", str(tmp_path)])
    config = flags.read_settings(flags.TrialSettings, args, environ={},
                                 only=retrain_script.RETRAIN_OPTIONS)
    space, source, result = retrain_script.choose_hyperspace(args, config)
    assert space == hyperopt_optimize.SPACE_BEST_ORIGINAL and "original" in source
    assert result is None
    write_result(tmp_path, 0.3, "ccccc", TINY_HYPE_SPACE)
    assert retrain_script.choose_hyperspace(args, config)[0] == TINY_HYPE_SPACE


def test_a_space_that_builds_no_model_is_refused(tmp_path, capsys):
    import neural_net
    with pytest.raises(retrain_script.RetrainError, match="cannot build a model"):
        retrain_script.show_model(neural_net, dict(TINY_HYPE_SPACE, pooling_type="median"), {})
    (tmp_path / "odd.weights.h5").write_bytes(b"")
    (tmp_path / "odd.space.json").write_text(json.dumps({"use_BN": True}))
    import conv_filters_visualization
    assert conv_filters_visualization.main(["--weights", str(tmp_path / "odd.weights.h5")]) == 1
    assert capsys.readouterr().err.startswith("error: the hyperspace cannot build a model")
