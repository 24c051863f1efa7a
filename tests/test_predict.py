"""predict.py on models in the form the search keeps them (a .keras and its
JSON): a folder of mixed PNG/JPEG/BMP/GIF in every mode, one image, the
CSV's columns, --evaluate on a one-level and a two-level folder with
confusion_matrix.png, and what it refuses."""

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

import predict
from conftest import ROOT, TINY_HYPE_SPACE
from hks.data import image_folders
from hks.trials import kept_models
from image_sets import write_folder

SIZE = 16


def keep_a_model(folder, class_names, group_names=None):
    """A tiny untrained model saved as the search keeps one: models/<name>.keras + .json."""
    import neural_net
    model = neural_net.build_model(TINY_HYPE_SPACE, image_size=SIZE, nb_classes=len(class_names),
                                   nb_groups=None if group_names is None else len(group_names))
    name = "model_0.500000_abcde"
    result = {"status": "ok", "model_name": name, "fine_best_accuracy": 0.5,
              "space": TINY_HYPE_SPACE, "dataset": "/data/mine", "image_size": SIZE,
              "nb_classes": len(class_names), "class_names": class_names,
              "nb_groups": None if group_names is None else len(group_names),
              "group_names": group_names,
              "history": {"val_fine_outputs_accuracy": [0.25, 0.5, 0.4]}}
    path = kept_models.save(model, kept_models.model_info(result, folder),
                            kept_models.model_path(folder, name))
    return path, model


@pytest.fixture(scope="module")
def one_head(tmp_path_factory):
    return keep_a_model(tmp_path_factory.mktemp("results"), ["ant", "bee", "cat"])


@pytest.fixture(scope="module")
def two_heads(tmp_path_factory):
    return keep_a_model(tmp_path_factory.mktemp("results"), ["ant", "bee", "cat", "dog"],
                        ["insects", "pets"])


def test_the_kept_file_holds_what_a_user_needs(one_head):
    path, _ = one_head
    info = json.loads(path.with_suffix(".json").read_text())
    assert info["class_names"] == ["ant", "bee", "cat"] and info["image_size"] == SIZE
    assert info["result_file"] == "model_0.500000_abcde.txt.json" and info["best_epoch"] == 2
    assert info["dataset"] == "/data/mine" and info["space"] == TINY_HYPE_SPACE
    assert set(info["outputs"]) == {"fine_outputs"}


def test_a_folder_of_mixed_images_gives_the_top_classes_and_a_csv(one_head, tmp_path, capsys):
    path, model = one_head
    written = write_folder(tmp_path / "photos", ["a", "b/deeper"], per_class=8)
    (tmp_path / "photos" / "a" / "notes.txt").write_text("not an image")
    (tmp_path / "photos" / "b" / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "out" / "p.csv"
    assert predict.main(["--model", str(path), "--out", str(out), str(tmp_path / "photos")]) == 0
    captured = capsys.readouterr()
    assert "Skipped 1 file(s) that are not images" in captured.out
    assert "broken.png: not a readable image" in captured.err
    frame = pd.read_csv(out)
    images = sorted(str(p) for paths in written.values() for p in paths)
    assert sorted(frame["image"]) == images  # every image, recursively, the broken one named
    assert list(frame.columns[:7]) == ["image", "fine_top1", "fine_top1_probability", "fine_top2",
                                       "fine_top2_probability", "fine_top3",
                                       "fine_top3_probability"]
    assert list(frame.columns[7:]) == ["fine:ant", "fine:bee", "fine:cat"]
    assert np.allclose(frame[["fine:ant", "fine:bee", "fine:cat"]].sum(axis=1), 1, atol=1e-4)
    # The very probabilities of the model on the images as the folder reader decodes them.
    first = frame.iloc[0]
    image = image_folders.decode_image(first["image"], SIZE)
    expected = np.asarray(model.predict(image[None], verbose=0)["fine_outputs"]).reshape(-1)
    assert np.allclose(first[["fine:ant", "fine:bee", "fine:cat"]].astype(float), expected,
                       atol=1e-5)
    assert first["fine_top1"] == ["ant", "bee", "cat"][int(expected.argmax())]
    assert f"{first['fine_top1']} (" in captured.out
    assert not any(p.suffix == ".csv" for p in (tmp_path / "photos").rglob("*"))


def test_one_image_and_the_best_kept_model_of_a_results_folder(two_heads, tmp_path,
                                                               monkeypatch, capsys):
    path, _ = two_heads
    written = write_folder(tmp_path / "one", ["x"], per_class=1)
    monkeypatch.chdir(tmp_path)
    assert predict.main(["--results-dir", str(path.parent.parent), str(written["x"][0])]) == 0
    frame = pd.read_csv(tmp_path / predict.CSV_NAME)
    assert len(frame) == 1 and frame.loc[0, "coarse_top1"] in ("insects", "pets")
    assert "coarse_top2_probability" in frame.columns and "coarse_top3" not in frame.columns
    assert "coarse:pets" in frame.columns
    assert "model_0.500000_abcde.keras" in capsys.readouterr().out


@pytest.mark.parametrize("layout", ["one level", "two levels"])
def test_evaluate_scores_each_head_and_draws_the_confusion_matrix(two_heads, tmp_path,
                                                                  layout, capsys):
    path, model = two_heads
    classes = ["ant", "dog"] if layout == "one level" else ["insects/ant", "pets/dog"]
    write_folder(tmp_path / "labelled", classes, per_class=6)
    out = tmp_path / "eval" / "p.csv"
    assert predict.main(["--model", str(path), "--evaluate", str(tmp_path / "labelled"),
                         "--out", str(out)]) == 0
    text = capsys.readouterr().out
    frame = pd.read_csv(out)
    truth = np.array([0] * 6 + [3] * 6)  # ant, dog in the model's order
    accuracy = np.mean(frame["fine_top1"].map(["ant", "bee", "cat", "dog"].index) == truth)
    assert f"fine accuracy {accuracy:.4f}" in text
    assert ("coarse accuracy" in text) == (layout == "two levels")
    assert "most confused with" in text and " ant " in text and " dog " in text
    assert (out.parent / predict.CONFUSION_PNG).stat().st_size > 1000


def test_evaluate_refuses_classes_the_model_does_not_know(one_head, tmp_path, capsys):
    path, _ = one_head
    write_folder(tmp_path / "zoo", ["ant", "yak", "zebu"], per_class=2)
    assert predict.main(["--model", str(path), "--evaluate", str(tmp_path / "zoo")]) == 2
    assert "classes the model does not know: yak, zebu" in capsys.readouterr().err


def test_a_fresh_interpreter_loads_it_with_nothing_of_the_project(one_head, clean_env):
    path, model = one_head
    code = ("import sys, keras, numpy as np; "
            f"m = keras.saving.load_model({str(path)!r}); "
            f"x = np.zeros((2, {SIZE}, {SIZE}, 3), np.uint8); "
            "p = np.asarray(m.predict(x, verbose=0)['fine_outputs']); "
            "print('SUM', round(float(p.sum()), 3)); "
            "print('OURS', sorted(n for n in sys.modules if n.startswith('hks') "
            "or n in ('utils', 'neural_net', 'kept_models', 'flags')))")
    done = subprocess.run([sys.executable, "-c", code], cwd=path.parent, env=clean_env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "SUM 2.0" in done.stdout and "OURS []" in done.stdout
    assert "Warning" not in done.stderr  # no optimizer state to skip: saved for inference


def test_predict_runs_from_the_command_line(one_head, tmp_path, clean_env):
    path, _ = one_head
    written = write_folder(tmp_path / "photos", ["a"], per_class=3)
    done = subprocess.run([sys.executable, str(ROOT / "predict.py"), "--model", str(path),
                           str(tmp_path / "photos")], cwd=tmp_path, env=clean_env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert len(pd.read_csv(tmp_path / predict.CSV_NAME)) == len(written["a"])
