"""The CIFAR-100 loader on archives in the real format, and every way an
archive can be broken."""

import dataclasses
import hashlib
import http.client
import io
import pickle
import shutil
import tarfile

import numpy as np
import pytest

import neural_net
from conftest import N_TEST, N_TRAIN
from hks.core import flags, storage
from hks.data import cifar_archives, dataset, synthetic_data


def load(folder, tmp_path, **config):
    dataset.unload_cifar100()
    cfg = flags.SearchSettings(data_dir=str(folder), offline=True,
                       keras_home=str(tmp_path / "keras_home"), **config)
    return neural_net.load_cifar100(config=cfg)


def make_official(monkeypatch, digest):
    """Take an archive with this SHA-256 for the official CIFAR-100 one."""
    monkeypatch.setitem(cifar_archives.ARCHIVES, "cifar100", dataclasses.replace(
        cifar_archives.ARCHIVES["cifar100"], sha256=digest))


def known_split(n_images):
    """A split whose image 1 has a different, known value in every pixel."""
    rng = np.random.default_rng(1)
    split = synthetic_data.synthetic_split(n_images, rng, "known")
    split[b"data"][1] = (np.arange(3072) * 7 % 256).astype(np.uint8)
    return split


def test_loads_real_format_with_both_label_sets(cifar_dir, tmp_path):
    (x, yf, yc), (xt, ytf, ytc) = load(cifar_dir, tmp_path)
    assert x.shape == (N_TRAIN, 32, 32, 3) and x.dtype == np.uint8
    assert xt.shape == (N_TEST, 32, 32, 3) and xt.dtype == np.uint8
    assert yf.shape == (N_TRAIN,) and yc.shape == (N_TRAIN,)
    assert ytf.shape == (N_TEST,) and ytc.shape == (N_TEST,)
    assert np.issubdtype(yf.dtype, np.integer)
    assert yf.max() < 100 and yc.max() < 20
    np.testing.assert_array_equal(yc, yf // 5)  # the fixture's fine -> coarse mapping


def test_channel_first_rows_become_channel_last_images_pixel_by_pixel(tmp_path):
    split = known_split(10)
    archive = synthetic_data.write_synthetic_archive(
        tmp_path / "cifar-100-python.tar.gz",
        members={"train": pickle.dumps(split, protocol=2)})
    (x, _, _), _ = load(tmp_path, tmp_path)
    row = split[b"data"][1]
    for r in range(32):
        for c in range(32):
            for channel in range(3):  # red block, then green, then blue
                assert x[1, r, c, channel] == row[channel * 1024 + r * 32 + c]
    assert archive.exists()


def test_str_keys_are_accepted(tmp_path):
    split = {k.decode(): v for k, v in known_split(10).items()}
    synthetic_data.write_synthetic_archive(tmp_path / "cifar-100-python.tar.gz",
                                members={"train": pickle.dumps(split, protocol=2)})
    (x, yf, _), _ = load(tmp_path, tmp_path)
    assert x.shape == (10, 32, 32, 3) and len(yf) == 10


def test_extracted_folder_is_used(cifar_dir, tmp_path):
    with tarfile.open(cifar_dir / "cifar-100-python.tar.gz") as tar:
        tar.extractall(tmp_path / "data", filter="data")
    (x, _, _), _ = load(tmp_path / "data", tmp_path)
    assert x.shape == (N_TRAIN, 32, 32, 3)


def test_keras_cache_is_searched_after_the_data_dir(cifar_dir, tmp_path):
    cache = tmp_path / "keras_home" / "datasets" / "cifar-100-python-target"
    with tarfile.open(cifar_dir / "cifar-100-python.tar.gz") as tar:
        tar.extractall(cache, filter="data")
    empty = tmp_path / "empty"
    empty.mkdir()
    (x, _, _), _ = load(empty, tmp_path)
    assert x.shape == (N_TRAIN, 32, 32, 3)


def test_missing_archive_offline_says_where_to_put_it(tmp_path):
    with pytest.raises(neural_net.DatasetError) as err:
        load(tmp_path, tmp_path)
    message = str(err.value)
    assert "cifar-100-python.tar.gz" in message and str(tmp_path) in message
    assert cifar_archives.CIFAR100_URL in message


def test_failed_download_gives_one_clear_error(tmp_path, monkeypatch):
    def no_network(*args, **kwargs):
        raise OSError("Name or service not known")
    monkeypatch.setattr(cifar_archives.urllib.request, "urlopen", no_network)
    with pytest.raises(neural_net.DatasetError) as err:
        dataset.unload_cifar100()
        neural_net.load_cifar100(config=flags.SearchSettings(
            data_dir=str(tmp_path), keras_home=str(tmp_path / "kh")))
    assert "download failed" in str(err.value) and "Name or service" in str(err.value)
    assert cifar_archives.CIFAR100_URL in str(err.value)


def test_unofficial_archive_gets_a_one_line_notice(cifar_dir, tmp_path, capsys):
    shutil.copy(cifar_dir / "cifar-100-python.tar.gz", tmp_path)
    load(tmp_path, tmp_path)
    out = capsys.readouterr().out
    assert "not the official archive" in out


def test_official_archive_is_recognised(cifar_dir, tmp_path, capsys, monkeypatch):
    shutil.copy(cifar_dir / "cifar-100-python.tar.gz", tmp_path)
    digest = storage.sha256_of(tmp_path / "cifar-100-python.tar.gz")
    make_official(monkeypatch, digest)
    load(tmp_path, tmp_path)
    assert "is the official archive" in capsys.readouterr().out


def test_decoded_cache_still_says_whether_the_archive_is_official(cifar_dir, tmp_path, capsys):
    shutil.copy(cifar_dir / "cifar-100-python.tar.gz", tmp_path)
    load(tmp_path, tmp_path)
    capsys.readouterr()
    load(tmp_path, tmp_path)
    out = capsys.readouterr().out
    assert "decoded copy" in out and "not the official archive" in out


def test_decoded_cache_is_written_reused_and_invalidated(tmp_path, monkeypatch):
    archive = synthetic_data.write_synthetic_archive(tmp_path / "cifar-100-python.tar.gz", 20, 5, seed=3)
    first = load(tmp_path, tmp_path)
    cache = tmp_path / "cifar-100-python.decoded.npz"
    assert cache.exists()

    def must_not_decode(*args):
        raise AssertionError("decoded the archive although the cache is fresh")
    with monkeypatch.context() as m:
        m.setattr(cifar_archives, "read_archive_members", must_not_decode)
        again = load(tmp_path, tmp_path)
    np.testing.assert_array_equal(first[0][0], again[0][0])

    synthetic_data.write_synthetic_archive(archive, 30, 5, seed=4)  # the archive changes
    changed = load(tmp_path, tmp_path)
    assert len(changed[0][0]) == 30


def test_decoded_once_per_process(cifar_dir, tmp_path):
    cfg = flags.SearchSettings(data_dir=str(cifar_dir), offline=True)
    dataset.unload_cifar100()
    first, again = neural_net.load_cifar100(config=cfg), neural_net.load_cifar100(config=cfg)
    assert first[0][0] is again[0][0] and first[1][0] is again[1][0]


def test_dataset_size_keeps_80_percent_train_20_percent_test(cifar_dir, tmp_path):
    data = load(cifar_dir, tmp_path)
    (x, yf, yc), (xt, ytf, ytc) = dataset.trim_dataset(data, 100)
    assert len(x) == len(yf) == len(yc) == 80
    assert len(xt) == len(ytf) == len(ytc) == 20


def test_val_split_holds_out_part_of_train(config):
    config.val_split = 0.25
    config.dataset_size = 200
    train, val, test = dataset.training_data(config)
    assert len(train[0]) == 120 and len(val[0]) == 40 and len(test[0]) == 40


def broken(tmp_path, **members):
    return synthetic_data.write_synthetic_archive(tmp_path / "cifar-100-python.tar.gz", 10, 5,
                                       members=members)


def split_with(**changes):
    split = known_split(10)
    split.update({k.encode(): v for k, v in changes.items()})
    return pickle.dumps(split, protocol=2)


@pytest.mark.parametrize("members, expected", [
    ({"train": None}, "has no member cifar-100-python/train"),
    ({"test": b"this is not a pickle"}, "cifar-100-python/test: not a valid CIFAR-100 pickle"),
    ({"train": pickle.dumps([1, 2, 3], protocol=2)}, "expected a dict"),
    ({"train": split_with(fine_labels=[101] * 10)}, "fine_labels: labels must lie in 0..99"),
    ({"train": split_with(coarse_labels=[-1] * 10)}, "coarse_labels: labels must lie in 0..19"),
    ({"train": split_with(fine_labels=[1] * 9)}, "10 images but 9 fine"),
    ({"train": split_with(data=np.zeros((10, 3072), np.float32))}, "uint8"),
    ({"train": split_with(data=np.zeros((10, 1024), np.uint8))}, "N x 3072"),
    ({"train": split_with(fine_labels=["a"] * 10)}, "expected a flat list of integers"),
])
def test_bad_members_name_the_file_and_the_problem(tmp_path, members, expected):
    broken(tmp_path, **members)
    with pytest.raises(neural_net.DatasetError) as err:
        load(tmp_path, tmp_path)
    assert expected in str(err.value)
    assert "cifar-100-python.tar.gz" in str(err.value)


def test_missing_key_is_named(tmp_path):
    split = known_split(10)
    del split[b"coarse_labels"]
    broken(tmp_path, train=pickle.dumps(split, protocol=2))
    with pytest.raises(neural_net.DatasetError, match="missing coarse_labels"):
        load(tmp_path, tmp_path)


@pytest.mark.parametrize("cut", [0.5, 0.95])
def test_truncated_archive(cifar_dir, tmp_path, cut):
    whole = (cifar_dir / "cifar-100-python.tar.gz").read_bytes()
    (tmp_path / "cifar-100-python.tar.gz").write_bytes(whole[: int(len(whole) * cut)])
    with pytest.raises(neural_net.DatasetError, match="truncated or corrupt"):
        load(tmp_path, tmp_path)


def test_not_an_archive_at_all(tmp_path):
    (tmp_path / "cifar-100-python.tar.gz").write_text("<html>404 Not Found</html>")
    with pytest.raises(neural_net.DatasetError, match="not a readable tar.gz"):
        load(tmp_path, tmp_path)


class FakeResponse(io.BytesIO):
    """What urllib.request.urlopen returns, serving `payload`."""

    def __init__(self, payload):
        super().__init__(payload)
        self.headers = {"Content-Length": str(len(payload))}


def test_download_lands_in_keras_cache_checked_against_the_official_sha256(
        cifar_dir, tmp_path, monkeypatch, capsys):
    payload = (cifar_dir / "cifar-100-python.tar.gz").read_bytes()
    make_official(monkeypatch, hashlib.sha256(payload).hexdigest())
    monkeypatch.setattr(cifar_archives.urllib.request, "urlopen",
                        lambda url, timeout: FakeResponse(payload))
    dataset.unload_cifar100()
    (x, _, _), _ = dataset.load_cifar100(config=flags.SearchSettings(
        data_dir=str(tmp_path), keras_home=str(tmp_path / "kh")))
    assert x.shape == (N_TRAIN, 32, 32, 3)
    archive = tmp_path / "kh" / "datasets" / "cifar-100-python.tar.gz"
    assert archive.read_bytes() == payload
    out = capsys.readouterr().out
    assert "downloading" in out and "is the official archive" in out


def test_a_download_that_is_not_the_official_archive_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(cifar_archives.urllib.request, "urlopen",
                        lambda url, timeout: FakeResponse(b"<html>captive portal</html>"))
    dataset.unload_cifar100()
    with pytest.raises(dataset.DatasetError, match="not the official archive's"):
        dataset.load_cifar100(config=flags.SearchSettings(
            data_dir=str(tmp_path), keras_home=str(tmp_path / "kh")))
    assert list((tmp_path / "kh" / "datasets").iterdir()) == []


def test_a_connection_dropped_mid_download_is_one_clear_error(tmp_path, monkeypatch):
    def dropped(url, timeout):
        raise http.client.IncompleteRead(b"partial")
    monkeypatch.setattr(cifar_archives.urllib.request, "urlopen", dropped)
    dataset.unload_cifar100()
    with pytest.raises(dataset.DatasetError, match="download failed .*IncompleteRead"):
        dataset.load_cifar100(config=flags.SearchSettings(
            data_dir=str(tmp_path), keras_home=str(tmp_path / "kh")))


def test_the_learnable_synthetic_archive_can_be_learned_and_the_plain_one_cannot(tmp_path):
    """learnable=True (for measuring pruning on curves that rise): each
    label's images share a template, so the nearest class mean of the
    training images names most test labels; random pixels name about 1%."""
    def nearest_mean_accuracy(folder, learnable):
        synthetic_data.write_synthetic_archive(folder / "cifar-100-python.tar.gz", 2000, 200,
                                        learnable=learnable)
        (x, fine, _), (x_test, fine_test, _) = dataset.load_cifar100(
            config=flags.MachineSettings(data_dir=str(folder), offline=True), notices=False)
        flat = x.reshape(len(x), -1).astype(np.float32)
        means = np.stack([flat[fine == label].mean(axis=0) for label in range(100)])
        test = x_test.reshape(len(x_test), -1).astype(np.float32)
        distances = (means ** 2).sum(axis=1)[None, :] - 2 * test @ means.T
        return (distances.argmin(axis=1) == fine_test).mean()

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    assert nearest_mean_accuracy(tmp_path / "a", learnable=True) > 0.9
    assert nearest_mean_accuracy(tmp_path / "b", learnable=False) < 0.1
