"""--dataset: CIFAR-10 in the real format, folders of images (one and two
label levels, train/ and test/, every bad layout), their cache, the synthetic
set, the one-headed model at any image size, and a trial trained on each."""

import dataclasses
import json
import os
import shutil
import tarfile

import keras
import numpy as np
import pytest
from PIL import Image

import neural_net
from conftest import TINY_HYPE_SPACE
from hks.core import console, flags, storage
from hks.data import cifar_archives, dataset, image_folders
from hks.trials import warm_start
from image_sets import CIFAR10_NAMES, write_cifar10_archive, write_folder
from test_model import BRANCHES


@pytest.fixture(autouse=True)
def fresh_loader():
    """Each test decodes afresh and hears the notices that are said once."""
    dataset.unload()
    console._said.clear()
    yield
    dataset.unload()
    keras.backend.clear_session()


def settings(name, tmp_path, **more):
    return flags.TrialSettings(dataset=str(name), cache_dir=str(tmp_path / "cache"),
                               keras_home=str(tmp_path / "keras_home"), offline=True,
                               epochs=1, **more)


def folder_with(tmp_path, classes, per_class=10, name="images", seed=0):
    write_folder(tmp_path / name, classes, per_class, seed)
    return tmp_path / name


# ------------------------------------------------------------- CIFAR-10 ----

def test_cifar10_archive_gives_one_head_of_ten_named_classes(tmp_path, capsys):
    write_cifar10_archive(tmp_path / "cifar-10-python.tar.gz", per_batch=40, n_test=50)
    loaded = dataset.load_dataset(settings("cifar10", tmp_path, data_dir=str(tmp_path)))
    (x, fine, coarse), (xt, fine_t, coarse_t) = loaded.train, loaded.test
    assert x.shape == (200, 32, 32, 3) and xt.shape == (50, 32, 32, 3)  # 5 batches joined
    assert coarse is None and coarse_t is None
    assert fine.min() >= 0 and fine.max() <= 9 and fine_t.min() >= 0 and fine_t.max() <= 9
    assert loaded.info == {"dataset": "cifar10", "image_size": 32, "nb_classes": 10,
                           "nb_groups": None, "class_names": CIFAR10_NAMES,
                           "group_names": None}
    assert "not the official archive" in capsys.readouterr().out


def test_cifar10_rows_become_images_pixel_by_pixel(tmp_path):
    """A row is 1024 red, 1024 green then 1024 blue values, row-major."""
    import pickle
    row = (np.arange(3072) * 7 % 256).astype(np.uint8)
    batch = {b"data": np.stack([row] * 2), b"labels": [3, 4], b"batch_label": b"x"}
    write_cifar10_archive(tmp_path / "cifar-10-python.tar.gz",
                          members={"test_batch": pickle.dumps(batch, protocol=2)})
    (x, fine, _) = dataset.load_dataset(settings("cifar10", tmp_path,
                                                 data_dir=str(tmp_path))).test
    assert list(fine) == [3, 4]
    assert x[0, 0, 1].tolist() == [row[1], row[1024 + 1], row[2048 + 1]]
    assert x[0, 1, 0].tolist() == [row[32], row[1024 + 32], row[2048 + 32]]


def test_official_cifar10_archive_is_recognised_and_decoded_once(tmp_path, capsys, monkeypatch):
    archive = write_cifar10_archive(tmp_path / "cifar-10-python.tar.gz")
    monkeypatch.setitem(cifar_archives.ARCHIVES, "cifar10", dataclasses.replace(
        cifar_archives.ARCHIVES["cifar10"], sha256=storage.sha256_of(archive)))
    config = settings("cifar10", tmp_path, data_dir=str(tmp_path))
    dataset.load_dataset(config)
    assert "CIFAR-10: " in capsys.readouterr().out
    dataset.unload()
    monkeypatch.setattr(cifar_archives, "read_archive_members", lambda *a: pytest.fail("decoded again"))
    again = dataset.load_dataset(config)
    out = capsys.readouterr().out
    assert "is the official archive" in out and "decoded copy" in out
    assert again.info["class_names"] == CIFAR10_NAMES


def test_cifar10_is_found_in_keras_cache_and_as_an_extracted_folder(tmp_path):
    archive = write_cifar10_archive(tmp_path / "cifar-10-python.tar.gz")
    cache = tmp_path / "keras_home" / "datasets" / "cifar-10-batches-py-target"
    with tarfile.open(archive) as tar:
        tar.extractall(cache, filter="data")
    archive.unlink()
    empty = tmp_path / "empty"
    empty.mkdir()
    loaded = dataset.load_dataset(settings("cifar10", tmp_path, data_dir=str(empty)))
    assert loaded.train[0].shape == (200, 32, 32, 3)
    assert loaded.info["class_names"] == CIFAR10_NAMES  # batches.meta of the folder


def test_missing_cifar10_says_where_to_put_it(tmp_path):
    with pytest.raises(dataset.DatasetError) as err:
        dataset.load_dataset(settings("cifar10", tmp_path, data_dir=str(tmp_path)))
    message = str(err.value)
    assert "CIFAR-10 not found" in message and "cifar-10-python.tar.gz" in message
    assert cifar_archives.CIFAR10_URL in message and str(tmp_path) in message


def test_a_cifar10_archive_without_a_batch_names_it(tmp_path):
    write_cifar10_archive(tmp_path / "cifar-10-python.tar.gz", members={"data_batch_3": None})
    with pytest.raises(dataset.DatasetError, match="no member cifar-10-batches-py/data_batch_3"):
        dataset.load_dataset(settings("cifar10", tmp_path, data_dir=str(tmp_path)))


# ------------------------------------------------------ image folders ----

def test_one_level_folder_of_mixed_files_becomes_rgb_images(tmp_path):
    """PNG, JPEG, BMP and GIF, grey, RGBA and palette images of any size,
    all N x 32 x 32 x 3; a stratified 20% of each class is held out."""
    root = folder_with(tmp_path, ["cat", "dog", "fish"], per_class=10)
    (root / "dog" / "notes.txt").write_text("not an image")
    (root / ".hidden").mkdir()
    loaded = dataset.load_dataset(settings(root, tmp_path))
    (x, fine, coarse), (xt, fine_t, _) = loaded.train, loaded.test
    assert x.dtype == np.uint8 and x.shape == (24, 32, 32, 3) and xt.shape == (6, 32, 32, 3)
    assert coarse is None
    assert np.bincount(fine).tolist() == [8, 8, 8] and np.bincount(fine_t).tolist() == [2, 2, 2]
    assert loaded.info == {"dataset": str(root), "image_size": 32, "nb_classes": 3,
                           "nb_groups": None, "class_names": ["cat", "dog", "fish"],
                           "group_names": None}


def test_an_image_keeps_its_colours_and_is_resized_whole(tmp_path):
    root = tmp_path / "images"
    for name, colour in (("red", (255, 0, 0)), ("blue", (0, 0, 255))):
        (root / name).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (50, 20), colour).save(root / name / f"{i}.png")
    loaded = dataset.load_dataset(settings(root, tmp_path, image_size=16, test_split=0.34))
    x, fine, _ = loaded.train
    assert x.shape[1:] == (16, 16, 3)
    blue, red = loaded.info["class_names"].index("blue"), loaded.info["class_names"].index("red")
    assert (x[fine == red] == [255, 0, 0]).all() and (x[fine == blue] == [0, 0, 255]).all()


def test_two_level_folder_gives_fine_classes_and_coarse_groups(tmp_path):
    root = folder_with(tmp_path, ["animals/cat", "animals/dog", "vehicles/car",
                                  "vehicles/bus", "vehicles/other", "plants/other"], per_class=5)
    loaded = dataset.load_dataset(settings(root, tmp_path))
    x, fine, coarse = loaded.train
    info = loaded.info
    assert info["group_names"] == ["animals", "plants", "vehicles"] and info["nb_groups"] == 3
    # "other" is in two groups: the names say which
    assert info["class_names"] == ["animals/cat", "animals/dog", "plants/other",
                                   "vehicles/bus", "vehicles/car", "vehicles/other"]
    group_of = {0: 0, 1: 0, 2: 1, 3: 2, 4: 2, 5: 2}
    assert [group_of[f] for f in fine] == coarse.tolist()
    assert len(loaded.test[0]) == 6  # one of each class's 5 images


def test_train_and_test_folders_are_the_split(tmp_path):
    root = tmp_path / "images"
    write_folder(root / "train", ["a", "b"], per_class=6)
    write_folder(root / "test", ["a", "b"], per_class=2, seed=1)
    loaded = dataset.load_dataset(settings(root, tmp_path, test_split=0.5))
    assert len(loaded.train[0]) == 12 and len(loaded.test[0]) == 4
    assert loaded.info["class_names"] == ["a", "b"]


def test_the_split_is_the_same_in_every_process_and_follows_test_split(tmp_path):
    root = folder_with(tmp_path, ["a", "b"], per_class=20)
    first = dataset.load_dataset(settings(root, tmp_path))
    dataset.unload()
    again = dataset.load_dataset(settings(root, tmp_path))
    np.testing.assert_array_equal(first.test[0], again.test[0])
    dataset.unload()
    half = dataset.load_dataset(settings(root, tmp_path, test_split=0.5))
    assert len(half.test[0]) == 20 and np.bincount(half.test[1]).tolist() == [10, 10]


def test_the_cache_is_outside_the_folder_reused_and_redone_when_files_change(
        tmp_path, monkeypatch, capsys):
    root = folder_with(tmp_path, ["a", "b"], per_class=5)
    before = sorted(p for p in root.rglob("*"))
    config = settings(root, tmp_path)
    first = dataset.load_dataset(config)
    assert sorted(p for p in root.rglob("*")) == before  # nothing written in the user's folder
    caches = list((tmp_path / "cache").glob("images-*-32px.npz"))
    assert len(caches) == 1
    dataset.unload()
    real_decode = image_folders.decode_image
    monkeypatch.setattr(image_folders, "decode_image", lambda *a: pytest.fail("decoded again"))
    again = dataset.load_dataset(config)
    np.testing.assert_array_equal(first.train[0], again.train[0])
    assert "decoded copy" in capsys.readouterr().out

    monkeypatch.setattr(image_folders, "decode_image", real_decode)
    dataset.unload()
    shutil.copy(next((root / "a").iterdir()), root / "a" / "added.png")  # a file more
    loaded = dataset.load_dataset(config)
    assert len(loaded.train[0]) + len(loaded.test[0]) == 11
    dataset.unload()
    target = next((root / "b").glob("*.png"))
    os.utime(target, ns=(1, 1))  # the same files, one touched
    calls = []
    monkeypatch.setattr(image_folders, "decode_image", lambda *a: calls.append(a) or real_decode(*a))
    dataset.load_dataset(config)
    assert len(calls) == 11
    dataset.unload()
    dataset.load_dataset(dataclasses.replace(config, image_size=24))  # another size, another copy
    assert len(list((tmp_path / "cache").glob("images-*px.npz"))) == 2


def test_an_image_that_cannot_be_decoded_is_skipped_and_named_once(tmp_path, capsys):
    root = folder_with(tmp_path, ["a", "b"], per_class=5)
    (root / "a" / "broken.jpg").write_bytes(b"this is no jpeg")
    config = settings(root, tmp_path)
    loaded = dataset.load_dataset(config)
    assert len(loaded.train[0]) + len(loaded.test[0]) == 10
    dataset.unload()
    dataset.load_dataset(config)  # from the cache: not said again
    out = capsys.readouterr().out
    assert out.count("a/broken.jpg") == 1 and "skipped 1 that cannot be decoded" in out


@pytest.mark.parametrize("make, expected", [
    (lambda r: write_folder(r, ["only"]), r"has one class folder \(only/\)"),
    (lambda r: (write_folder(r, ["a"]), (r / "b").mkdir()),
     "class folder b/ in .* has no image"),
    (lambda r: write_folder(r, ["a", "g/b", "g/c"]), "mixes the two layouts: a/ holds images "
                                                     "but g/ holds folders"),
    (lambda r: write_folder(r, ["g/a", "g/b"]), "has one group folder"),
    (lambda r: (write_folder(r, ["g/a", "h/b"]), (r / "h" / "c").mkdir()),
     "class folder h/c/ in .* has no image"),
    (lambda r: write_folder(r, ["a", "b/x/deep"]), "mixes the two layouts"),
    (lambda r: write_folder(r, ["g/a", "h/b/deep"]), "holds folders: the layout has at most two"),
    (lambda r: r.mkdir(), "holds no class folders"),
    (lambda r: None, "no such folder, and not one of cifar100, cifar10, synthetic"),
    (lambda r: (write_folder(r / "train", ["a", "b"]), write_folder(r / "test", ["a", "c"])),
     "train/ and test/ must hold the same class folders; they differ in b, c"),
    (lambda r: (write_folder(r, ["a", "b"]), [p.write_bytes(b"junk") for p in
                                             (r / "b").iterdir()]),
     "class b has no image that can be decoded"),
], ids=["one class", "empty class", "mixed", "one group", "empty class in a group",
        "three levels", "three levels in groups", "no class folder", "missing", "train/test differ",
        "no decodable image in a class"])
def test_each_bad_layout_gets_one_clear_line(tmp_path, make, expected):
    root = tmp_path / "images"
    make(root)
    with pytest.raises(dataset.DatasetError, match=expected) as err:
        dataset.load_dataset(settings(root, tmp_path))
    assert "\n" not in str(err.value)


def test_test_split_zero_without_test_folder_is_refused(tmp_path):
    root = folder_with(tmp_path, ["a", "b"], per_class=3)
    with pytest.raises(dataset.DatasetError, match="--test-split is 0: nothing to validate on"):
        dataset.load_dataset(settings(root, tmp_path, test_split=0.0))


# ------------------------------------------------------------ synthetic ----

def test_synthetic_is_made_in_memory_says_so_once_and_can_be_learned(tmp_path, capsys):
    config = settings("synthetic", tmp_path)
    loaded = dataset.load_dataset(config)
    dataset.load_dataset(dataclasses.replace(config, image_size=16))
    assert capsys.readouterr().out.count("accuracies mean nothing") == 1
    assert loaded.info["nb_classes"] == 10 and loaded.info["nb_groups"] == 5
    (x, fine, coarse), (xt, fine_t, _) = loaded.train, loaded.test
    assert (coarse == fine // 2).all()
    assert not list(tmp_path.iterdir())  # nothing written anywhere
    flat = x.reshape(len(x), -1).astype(np.float32)
    means = np.stack([flat[fine == c].mean(axis=0) for c in range(10)])
    test = xt.reshape(len(xt), -1).astype(np.float32)
    nearest = ((test[:, None, :] - means[None]) ** 2).sum(axis=2).argmin(axis=1)
    assert (nearest == fine_t).mean() > 0.9


# --------------------------------------------- identity and settings ----

def test_identity_of_results_and_of_settings(tmp_path):
    root = folder_with(tmp_path, ["g/a", "g/b", "h/c"], per_class=3)
    loaded = dataset.load_dataset(settings(root, tmp_path))
    assert dataset.identity(loaded.info) == ("images", 32, 3, 2)
    assert dataset.expected_identity(settings(root, tmp_path)) == ("images", 32, 3, 2)
    assert dataset.identity({"model_name": "old"}) == ("cifar100", 32, 100, 20)
    assert dataset.expected_identity(settings("cifar10", tmp_path, image_size=40)) == \
        ("cifar10", 40, 10, None)
    elsewhere = settings(tmp_path / "nowhere" / "images", tmp_path)
    assert dataset.expected_identity(elsewhere) == ("images", 32, None, None)
    assert dataset.same_identity(("images", 32, None, None), ("images", 32, 3, 2))
    assert not dataset.same_identity(("images", 64, None, None), ("images", 32, 3, 2))
    assert not dataset.same_identity(("cifar10", 32, 10, None), ("cifar100", 32, 100, 20))


def test_dataset_flags_and_variables():
    config = flags.read_settings(flags.TrialSettings, environ={
        "HKS_DATASET": "CIFAR10", "HKS_IMAGE_SIZE": "48", "HKS_TEST_SPLIT": "0.3"})
    assert (config.dataset, config.image_size, config.test_split) == ("cifar10", 48, 0.3)
    assert flags.read_settings(flags.TrialSettings, environ={}).dataset == "cifar100"
    with pytest.raises(flags.UsageError, match="HKS_IMAGE_SIZE: '4' must be at least 8"):
        flags.read_settings(flags.TrialSettings, environ={"HKS_IMAGE_SIZE": "4"})
    with pytest.raises(flags.UsageError, match="--test-split: '1' must be at least 0 and below 1"):
        args = type("Args", (), {"test_split": "1"})()
        flags.read_settings(flags.TrialSettings, args=args, environ={})
    cache = flags.read_settings(flags.TrialSettings, environ={"XDG_CACHE_HOME": "/x"}).cache_dir
    assert cache == "/x/hyperopt-keras-sample"


# ----------------------------------------------- the one-headed model ----

@pytest.mark.parametrize("change", BRANCHES, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()))
def test_every_branch_takes_larger_images_with_one_head(change):
    """The stages halve any image size (the one-headed model trains in the
    trials below, at 48 px)."""
    model = neural_net.build_model(dict(TINY_HYPE_SPACE, **change), image_size=64,
                                   nb_classes=7, nb_groups=None)
    assert model.output_names == ["fine_outputs"]
    x = np.random.default_rng(0).integers(0, 256, size=(2, 64, 64, 3)).astype("uint8")
    probabilities = keras.ops.convert_to_numpy(model(x, training=False)["fine_outputs"])
    assert probabilities.shape == (2, 7)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-4)


@pytest.mark.parametrize("size", [8, 33])
def test_the_smallest_and_odd_image_sizes_build_with_three_stages(size):
    x = np.zeros((1, size, size, 3), "uint8")
    for pooling in ("max", "avg", "all_conv", "inception"):
        model = neural_net.build_model(dict(TINY_HYPE_SPACE, pooling_type=pooling,
                                            nb_conv_pool_layers=3), image_size=size)
        fine, coarse = model(x, training=False)
        assert fine.shape == (1, 100) and coarse.shape == (1, 20)
        keras.backend.clear_session()


def test_one_head_has_fewer_weights_than_two():
    one = neural_net.build_model(TINY_HYPE_SPACE, nb_classes=10, nb_groups=None)
    two = neural_net.build_model(TINY_HYPE_SPACE, nb_classes=10, nb_groups=5)
    dense_inputs = two.get_layer("coarse_outputs").input.shape[-1]
    assert two.count_params() - one.count_params() == dense_inputs * 5 + 5


# ------------------------------------------ one trial on each data set ----

def check_result(result, name, classes, groups, size=32):
    assert result["status"] == "ok"
    assert result["dataset"] == name and result["image_size"] == size
    assert result["nb_classes"] == classes and result["nb_groups"] == groups
    assert len(result["class_names"]) == classes
    saved = json.loads(storage.result_to_json(result))
    assert saved["class_names"] == result["class_names"]
    if groups is None:
        assert result["group_names"] is None
        for key in ("coarse_best_accuracy", "coarse_end_accuracy", "coarse_best_loss",
                    "coarse_end_loss"):
            assert key in saved and saved[key] is None
        assert "val_coarse_outputs_accuracy" not in result["history"]
        assert result["fine_best_loss"] == min(result["history"]["val_loss"])
    else:
        assert len(result["group_names"]) == groups
        assert 0.0 <= result["coarse_best_accuracy"] <= 1.0
    assert 0.0 <= result["fine_best_accuracy"] <= 1.0 and result["loss"] <= 0.0


def test_a_trial_trains_on_cifar10(tmp_path):
    write_cifar10_archive(tmp_path / "cifar-10-python.tar.gz", per_batch=20, n_test=20)
    config = settings("cifar10", tmp_path, data_dir=str(tmp_path), val_split=0.2)
    _, _, result = neural_net.build_and_train(TINY_HYPE_SPACE, config=config)
    check_result(result, "cifar10", 10, None)
    assert result["test_coarse_accuracy"] is None and result["test_fine_accuracy"] >= 0
    assert "(cifar10, 10 classes, 32 px): fine " in console.progress_line(result, 1, 1.0)
    assert "coarse" not in console.progress_line(result, 1, 1.0)


def test_a_trial_trains_on_a_one_level_folder_at_48_px(tmp_path):
    root = folder_with(tmp_path, ["a", "b", "c"], per_class=8)
    _, _, result = neural_net.build_and_train(TINY_HYPE_SPACE,
                                              config=settings(root, tmp_path, image_size=48))
    check_result(result, str(root), 3, None, size=48)


def test_a_trial_trains_on_a_two_level_folder(tmp_path):
    root = folder_with(tmp_path, ["x/a", "x/b", "y/c"], per_class=8)
    _, _, result = neural_net.build_and_train(TINY_HYPE_SPACE, config=settings(root, tmp_path))
    check_result(result, str(root), 3, 2)
    assert result["group_names"] == ["x", "y"]
    line = console.progress_line(result, 2, 1.0, of="/5")
    assert line.startswith("Trial 2/5 (images, 3 classes in 2 groups, 32 px): fine ")


def test_a_trial_trains_on_synthetic(tmp_path, monkeypatch):
    monkeypatch.setenv("HKS_DATASET", "synthetic")  # as a notebook would: no config given
    monkeypatch.setenv("HKS_EPOCHS", "1")
    monkeypatch.setenv("CODE_TESTING", "1")
    monkeypatch.setenv("DATASET_SIZE", "300")
    _, _, result = neural_net.build_and_train(TINY_HYPE_SPACE)
    check_result(result, "synthetic", 10, 5)
    assert result["train_images"] == 240


# ---------------------------------------------------- the search on them ----

def test_resuming_trials_of_another_data_set_is_refused(tmp_path):
    import hyperopt_optimize
    from hyperopt import Trials
    path = tmp_path / "results.pkl"
    trials = Trials()
    cifar10 = {"dataset": "cifar10", "image_size": 32, "nb_classes": 10, "nb_groups": None}
    hyperopt_optimize.check_data_set(trials, cifar10, path)  # recorded at the start
    assert hyperopt_optimize.load_trials(path).attachments["hks_data_set"] == \
        ["cifar10", 32, 10, None]
    hyperopt_optimize.check_data_set(trials, cifar10, path)  # the same: goes on
    for other, said in ((dict(cifar10, image_size=64), "cifar10 (10 classes, 64 px)"),
                        ({"dataset": "/x/my_images", "image_size": 32, "nb_classes": 10,
                          "nb_groups": 2}, "my_images (10 classes in 2 groups, 32 px)")):
        with pytest.raises(hyperopt_optimize.SearchError) as err:
            hyperopt_optimize.check_data_set(trials, other, path)
        assert str(err.value).startswith(f"{path} holds trials run on cifar10 (10 classes, "
                                          f"32 px), not on {said}: their accuracies would "
                                          "not compare")
    old = Trials()  # a trials file of an earlier version: its results are CIFAR-100's
    old.insert_trial_docs(old.new_trial_docs([0], [None], [{"status": "fail"}], [
        warm_start.misc_of(hyperopt_optimize.SPACE_DEMO, 0, hyperopt_optimize.space)]))
    old.refresh()
    with pytest.raises(hyperopt_optimize.SearchError, match="run on cifar100 .100 classes in "
                                                            "20 groups, 32 px."):
        hyperopt_optimize.check_data_set(old, cifar10, path)


def test_a_search_on_a_folder_resumes_and_refuses_another_data_set(tmp_path, monkeypatch,
                                                                    capsys):
    """The whole loop on a folder of images (one head; the search's main()
    in this process, over the tiny space), then the same trials file with
    --dataset synthetic: refused in one line, nothing changed; then resumed."""
    import hyperopt_optimize
    import tiny_search
    for name in [n for n in os.environ if n.startswith("HKS_")] + ["CODE_TESTING", "DATASET_SIZE"]:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setattr(hyperopt_optimize, "space", tiny_search.TINY_SPACE)
    monkeypatch.chdir(tmp_path)
    root = folder_with(tmp_path, ["a", "b", "c"], per_class=8, name="my_images")

    def search(*flags):
        code = hyperopt_optimize.main(["--epochs", "1", "--no-plots", "--in-process", *flags])
        return code, capsys.readouterr()
    code, said = search("--dataset", "my_images", "--max-evals", "1")
    assert code == 0, said.err[-3000:]
    assert "Trial 1/1 (my_images, 3 classes, 32 px): fine " in said.out
    [saved] = (tmp_path / "results").glob("model_*.txt.json")
    result = json.loads(saved.read_text())
    assert result["dataset"] == str(root) and result["class_names"] == ["a", "b", "c"]
    assert result["coarse_best_accuracy"] is None
    assert list((tmp_path / "xdg" / "hyperopt-keras-sample").glob("my_images-*-32px.npz"))
    pickled = (tmp_path / "results.pkl").read_bytes()

    code, said = search("--dataset", "synthetic", "--max-evals", "2")
    assert code == 1 and "Trial " not in said.out
    assert said.err.strip().splitlines()[-1].startswith(
        "error: results.pkl holds trials run on my_images (3 classes, 32 px), not on "
        "synthetic (10 classes in 5 groups, 32 px)")
    assert (tmp_path / "results.pkl").read_bytes() == pickled

    code, said = search("--dataset", str(root), "--max-evals", "2")
    assert code == 0, said.err[-3000:]
    assert "Resuming the search: 1 trials" in said.out and "Trial 2/2 (my_images" in said.out


# ------------------------------------- the tools on one-headed results ----

def test_retrain_and_filters_follow_the_data_set_of_the_result(tmp_path, monkeypatch, capsys):
    """A one-headed result of a folder at 40 px: retrained on that folder at
    that size without being told, its filters drawn from the weights alone."""
    import conv_filters_visualization
    import retrain_best_with_tensorboard
    for name in ("HKS_DATASET", "HKS_VAL_SPLIT", "CODE_TESTING", "DATASET_SIZE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    root = folder_with(tmp_path, ["a", "b"], per_class=6)
    result = {"status": "ok", "loss": -0.5, "fine_best_accuracy": 0.5, "space": TINY_HYPE_SPACE,
              "model_name": storage.model_name_for(0.5, "aaaaa"), "coarse_best_accuracy": None,
              **dataset.data_info(str(root), 40, ["a", "b"])}
    storage.save_json_result(result, tmp_path / "results")
    assert retrain_best_with_tensorboard.main(
        ["--results-dir", "results", "--epochs", "1", "--cache-dir", "cache"]) == 0
    out = capsys.readouterr().out
    assert f"Retraining the best result in results/ (model_0.500000_aaaaa) on {root}" in out
    [retrained] = [line for line in out.splitlines() if line.startswith("Retrained ")]
    assert "on images, 2 classes, 40 px for 1 epochs" in retrained
    assert "coarse" not in retrained
    [weights] = (tmp_path / "weights").glob("*.weights.h5")
    saved = json.loads(weights.with_name(weights.name.replace(".weights.h5", ".dataset.json"))
                       .read_text())
    assert (saved["image_size"], saved["nb_classes"], saved["nb_groups"]) == (40, 2, None)
    assert conv_filters_visualization.main(["--weights", str(weights), "--max-filters", "2",
                                            "--steps", "2"]) == 0
    assert list((tmp_path / "layers").glob("*.png"))


def test_analysis_reads_one_headed_results_and_warns_of_mixed_data_sets(tmp_path, capsys):
    import analyze_results
    for number, (name, coarse) in enumerate([("cifar10", None), ("cifar10", None),
                                             ("cifar100", 0.4)]):
        accuracy = 0.3 + number / 10
        history = {"val_fine_outputs_accuracy": [accuracy / 2, accuracy]}
        info = (dataset.data_info("cifar10", 32, CIFAR10_NAMES) if name == "cifar10" else {})
        storage.save_json_result({
            "status": "ok", "loss": -accuracy, "fine_best_accuracy": accuracy,
            "coarse_best_accuracy": coarse,
            "model_name": storage.model_name_for(accuracy, f"u{number}"), "space": TINY_HYPE_SPACE, "history": history, "epochs": 2, **info}, tmp_path / "r")
    assert analyze_results.main(["--results-dir", str(tmp_path / "r"),
                                 "--out-dir", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "warning: the folder mixes results of 2 data sets (cifar10, 10 classes, 32 px; " \
           "cifar100, 100 classes in 20 groups, 32 px)" in out
    frame = __import__("pandas").read_csv(tmp_path / "out" / "results.csv")
    assert frame["coarse_best_accuracy"].isna().sum() == 2
    assert set(frame["dataset"]) == {"cifar10, 10 classes, 32 px",
                                     "cifar100, 100 classes in 20 groups, 32 px"}


def test_a_trial_that_failed_before_its_data_still_says_its_data_set(tmp_path, monkeypatch):
    import hyperopt_optimize
    from hks.trials import trial_process
    root = folder_with(tmp_path, ["g/a", "h/b"], per_class=2)
    config = settings(root, tmp_path, results_dir=str(tmp_path / "results"), image_size=24)
    failed = {"status": "fail", "model_name": "failed_abcde", "error": "ChildProcessError: died",
              "space": TINY_HYPE_SPACE}
    monkeypatch.setattr(trial_process, "train_in_child", lambda *a, **k: dict(failed))
    result = hyperopt_optimize.optimize_cnn(TINY_HYPE_SPACE, config)
    assert (result["dataset"], result["image_size"], result["nb_classes"],
            result["nb_groups"]) == (str(root), 24, 2, 2)
    assert json.loads((tmp_path / "results" / "failed_abcde.txt.json").read_text())["nb_groups"] == 2
    line = console.progress_line(result, 1, 1.0)
    assert line.startswith("Trial 1 (images, 2 classes in 2 groups, 24 px): FAILED after 1.0 s")
