"""The CIFAR-100 data set: finding, checking, downloading, decoding and caching
it, and the arrays a trial trains on.

`load_cifar100()` reads the real `cifar-100-python.tar.gz` (fine and coarse
labels at once), from `--data-dir`, then Keras' cache, else downloads it into
that cache; it says whether the archive is the official one and keeps a
decoded copy beside it. `training_data(settings)` splits it as a trial needs.
`write_synthetic_archive()` writes a small archive in exactly the real format,
for the tests and the benchmark (the real one cannot be downloaded
everywhere). Nothing here imports Keras.
"""

import hashlib
import http.client
import io
import os
import pickle
import tarfile
import tempfile
import urllib.request
import zlib
from pathlib import Path

import numpy as np

import utils

CIFAR100_ARCHIVE = "cifar-100-python.tar.gz"
CIFAR100_FOLDER = "cifar-100-python"
CIFAR100_URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
CIFAR100_SHA256 = "85cd44d02ba6437773c5bbd22e183051d648de2e7d6b014e1ef29b855ba677a7"
KERAS_CACHE_NAME = "cifar-100-python-target"  # where keras.datasets.cifar100 extracts it
DECODED_CACHE_SUFFIX = ".decoded.npz"
DOWNLOAD_TIMEOUT_S = 60  # per network read, not for the whole 161 MB
IMAGE_SHAPE = (32, 32, 3)
PIXELS_PER_IMAGE = 32 * 32 * 3
NB_CLASSES_FINE = 100
NB_CLASSES_COARSE = 20
TRAIN_FRACTION_WHEN_TRIMMED = 0.8  # DATASET_SIZE=N keeps 80% train, 20% test


class DatasetError(Exception):
    """The CIFAR-100 data cannot be found or is not in the expected format."""


_loaded = {}  # decoded data set per source, kept for the life of the process


def load_cifar100(data_dir=None, config=None, notices=True):
    """CIFAR-100 as `((x_train, y_fine_train, y_coarse_train), (x_test,
    y_fine_test, y_coarse_test))`: uint8 images N x 32 x 32 x 3 and int64
    labels. Looks in `data_dir` (default: the configured `ml_req/`), then in
    Keras' cache, then downloads into that cache. `notices=False` keeps quiet
    about the archive (a trial process: the search has said it once).
    Raises DatasetError."""
    config = config or utils.read_settings(utils.TrialSettings)
    data_dir = Path(os.path.expanduser(data_dir or config.data_dir))
    keras_home = Path(os.path.expanduser(config.keras_home))
    source = find_cifar100(data_dir, keras_home)
    if source is None:
        source = download_cifar100(data_dir, keras_home, config.offline)
    key = (str(source.resolve()), source_signature(source))
    if key not in _loaded:
        _loaded[key] = read_cifar100(source, notices)
    return _loaded[key]


def unload_cifar100():
    """Forget the decoded data kept by load_cifar100 (the on-disk copy stays)."""
    _loaded.clear()


def find_cifar100(data_dir, keras_home):
    """The first archive or extracted folder found, or None."""
    keras_datasets = keras_home / "datasets"
    candidates = [data_dir / CIFAR100_ARCHIVE, data_dir / CIFAR100_FOLDER,
                  keras_datasets / KERAS_CACHE_NAME / CIFAR100_FOLDER,
                  keras_datasets / CIFAR100_FOLDER, keras_datasets / CIFAR100_ARCHIVE]
    for path in candidates:
        if path.is_file() or (path.is_dir() and (path / "train").is_file()):
            return path
    return None


def download_cifar100(data_dir, keras_home, offline):
    """Download the archive into Keras' cache; one clear error when that fails."""
    where = (f"put {CIFAR100_ARCHIVE} in {data_dir}/ (download it from "
             f"{CIFAR100_URL}) or pass --data-dir")
    if offline:
        raise DatasetError(f"CIFAR-100 not found and downloading is off: {where}.")
    target = keras_home / "datasets" / CIFAR100_ARCHIVE
    print(f"CIFAR-100 not found in {data_dir}/ nor in Keras' cache: downloading "
          f"{CIFAR100_URL} into {target.parent}/ ...", flush=True)
    try:
        download(CIFAR100_URL, target, CIFAR100_SHA256)
    except (OSError, http.client.HTTPException) as err:  # no network, a dropped
        # connection, a proxy, a full disk: all the same to the user
        raise DatasetError(f"CIFAR-100 not found and the download failed "
                           f"({type(err).__name__}: {err}). To fix: {where}.") from None
    return target


def download(url, target, sha256):
    """Fetch `url` into `target` (a partial file until it is whole and its
    SHA-256 is `sha256`, so an interrupted download leaves nothing behind),
    saying how far it got every tenth of the way."""
    target.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    fd, partial = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(
                url, timeout=DOWNLOAD_TIMEOUT_S) as response:
            total, done, said = int(response.headers.get("Content-Length") or 0), 0, 0
            for block in iter(lambda: response.read(1 << 20), b""):
                digest.update(block)
                out.write(block)
                done += len(block)
                if total and done * 10 // total > said:
                    said = done * 10 // total
                    print(f"  {done / 2**20:.0f} of {total / 2**20:.0f} MiB", flush=True)
        if digest.hexdigest() != sha256:
            raise OSError(f"the downloaded file's SHA-256 is {digest.hexdigest()[:12]}..., "
                          "not the official archive's")
        os.chmod(partial, utils.FILE_MODE)
        os.replace(partial, target)
    finally:
        if os.path.exists(partial):
            os.unlink(partial)


def source_signature(source):
    """Size and modification time of the archive, or of the folder's files."""
    files = [source] if source.is_file() else [source / n for n in ("train", "test")]
    return ";".join(f"{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in files if f.exists())


def sha256_of(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def decoded_cache_path(source):
    return source.with_name(source.name.removesuffix(".tar.gz") + DECODED_CACHE_SUFFIX)


def read_cifar100(source, notices=True):
    """Decode `source`, through the on-disk cache beside it when it is fresh."""
    say = print if notices else (lambda *args, **kwargs: None)
    cache = decoded_cache_path(source)
    signature = source_signature(source)
    data, verdict = read_decoded_cache(cache, signature)
    if data is not None:
        say(f"CIFAR-100: {verdict} (decoded copy {cache.name})", flush=True)
        return data
    if source.is_file():
        digest = sha256_of(source)
        if digest == CIFAR100_SHA256:
            verdict = f"{source} is the official archive (SHA-256 matches)"
        else:
            verdict = (f"notice: {source} is not the official archive "
                       f"(SHA-256 {digest[:12]}...); using it as it is")
        members = read_archive_members(source)
    else:
        verdict = f"extracted folder {source} (no archive to check against the official SHA-256)"
        members = {name: read_member_file(source / name) for name in ("train", "test")}
    say(f"CIFAR-100: {verdict}", flush=True)
    train = decode_split(members["train"], f"{source}: train")
    test = decode_split(members["test"], f"{source}: test")
    write_decoded_cache(cache, signature, verdict, train, test)
    return train, test


def read_archive_members(archive):
    """Unpickle `train` and `test` out of the tar.gz (Python 2 pickles)."""
    members = {}
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for name in ("train", "test", "meta"):
                member_name = f"{CIFAR100_FOLDER}/{name}"
                try:
                    member = tar.extractfile(member_name)
                except KeyError:
                    if name == "meta":
                        continue  # label names are not needed for training
                    raise DatasetError(f"{archive}: the archive has no member "
                                       f"{member_name}; is it cifar-100-python.tar.gz?") from None
                if member is None:
                    raise DatasetError(f"{archive}: {member_name} is not a file")
                members[name] = unpickle(member.read(), f"{archive}: {member_name}")
    except (tarfile.TarError, EOFError, zlib.error, OSError) as err:
        raise DatasetError(f"{archive}: not a readable tar.gz archive, it may be "
                           f"truncated or corrupt ({err}). Download it again from "
                           f"{CIFAR100_URL}.") from None
    return members


def read_member_file(path):
    try:
        return unpickle(path.read_bytes(), str(path))
    except OSError as err:
        raise DatasetError(f"{path}: cannot be read ({err})") from None


def unpickle(raw, where):
    try:
        return pickle.load(io.BytesIO(raw), encoding="bytes")
    except Exception as err:  # pickle raises many kinds on garbage
        raise DatasetError(f"{where}: not a valid CIFAR-100 pickle "
                           f"({type(err).__name__}: {err})") from None


def decode_split(batch, where):
    """Check one pickled split and turn its rows into N x 32 x 32 x 3 images."""
    if not isinstance(batch, dict):
        raise DatasetError(f"{where}: expected a dict, found {type(batch).__name__}")
    batch = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in batch.items()}
    missing = [k for k in ("data", "fine_labels", "coarse_labels") if k not in batch]
    if missing:
        raise DatasetError(f"{where}: missing {', '.join(missing)}")
    data = batch["data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 \
            or data.shape[1] != PIXELS_PER_IMAGE:
        shape = getattr(data, "shape", None)
        dtype = getattr(data, "dtype", type(data).__name__)
        raise DatasetError(f"{where}: data must be N x {PIXELS_PER_IMAGE} uint8, "
                           f"found shape {shape} of {dtype}")
    fine = labels_array(batch["fine_labels"], NB_CLASSES_FINE, f"{where}: fine_labels")
    coarse = labels_array(batch["coarse_labels"], NB_CLASSES_COARSE, f"{where}: coarse_labels")
    if not len(data) == len(fine) == len(coarse):
        raise DatasetError(f"{where}: {len(data)} images but {len(fine)} fine and "
                           f"{len(coarse)} coarse labels")
    # Each row is 1024 red, 1024 green then 1024 blue values, row-major.
    images = np.ascontiguousarray(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    return images, fine, coarse


def labels_array(values, nb_classes, where):
    try:
        labels = np.asarray(values)
    except Exception as err:
        raise DatasetError(f"{where}: not a list of labels ({err})") from None
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise DatasetError(f"{where}: expected a flat list of integers, found "
                           f"shape {labels.shape} of {labels.dtype}")
    if labels.size and (labels.min() < 0 or labels.max() >= nb_classes):
        raise DatasetError(f"{where}: labels must lie in 0..{nb_classes - 1}, "
                           f"found {labels.min()}..{labels.max()}")
    return labels.astype(np.int64)


def read_decoded_cache(cache, signature):
    """(data, what the archive was) from a fresh cache, else (None, None)."""
    try:
        with np.load(cache) as npz:
            if str(npz["signature"]) != signature:
                return None, None
            return (((npz["x_train"], npz["y_fine_train"], npz["y_coarse_train"]),
                     (npz["x_test"], npz["y_fine_test"], npz["y_coarse_test"])),
                    str(npz["verdict"]))
    except Exception:  # missing, stale format or damaged: decode again
        return None, None


def write_decoded_cache(cache, signature, verdict, train, test):
    buffer = io.BytesIO()
    np.savez(buffer, signature=np.array(signature), verdict=np.array(verdict),
             x_train=train[0], y_fine_train=train[1], y_coarse_train=train[2],
             x_test=test[0], y_fine_test=test[1], y_coarse_test=test[2])
    try:
        utils.atomic_write(cache, buffer.getvalue())
    except OSError as err:
        print(f"CIFAR-100: note: could not write the decoded copy {cache} ({err}); "
              "the archive will be decoded again next time.", flush=True)


# ------------------------------------------------ what a trial trains on ----

def trim_dataset(data, dataset_size):
    """Keep the first 80% x N training and 20% x N test images (DATASET_SIZE)."""
    if not dataset_size:
        return data
    n_train = max(1, int(dataset_size * TRAIN_FRACTION_WHEN_TRIMMED))
    n_test = max(1, dataset_size - n_train)
    (x, yf, yc), (xt, ytf, ytc) = data
    return (x[:n_train], yf[:n_train], yc[:n_train]), (xt[:n_test], ytf[:n_test], ytc[:n_test])


def training_data(config, notices=True):
    """(train, validation, test) for `fit`, each (images, fine, coarse):
    validation is the test split and test None, unless --val-split holds out
    part of the training images for validation."""
    train, test = trim_dataset(load_cifar100(config=config, notices=notices),
                               config.dataset_size)
    if config.val_split:
        n_val = max(1, int(round(len(train[0]) * config.val_split)))
        if n_val >= len(train[0]):
            raise DatasetError(f"--val-split {config.val_split} leaves no training images")
        val = tuple(a[-n_val:] for a in train)
        train = tuple(a[:-n_val] for a in train)
        return train, val, test
    return train, test, None


# ------------------------------------ a synthetic archive in the real format ----

def synthetic_split(n_images, rng, name, templates=None):
    """One split as the real files pickle it: a dict with bytes keys, labels
    as lists, images as N x 3072 uint8 rows (1024 red, 1024 green, 1024 blue
    values, row-major). Random pixels, or with `templates` (one image per
    fine label) each label's template showing through the noise, so that a
    model can learn something; coarse label = fine label // 5."""
    fine = rng.integers(0, NB_CLASSES_FINE, size=n_images)
    pixels = rng.integers(0, 256, size=(n_images, PIXELS_PER_IMAGE), dtype=np.uint8)
    if templates is not None:
        pixels = ((templates[fine].astype(np.uint16) * 3 + pixels) // 4).astype(np.uint8)
    return {
        b"filenames": [f"synthetic_{name}_{i}.png".encode() for i in range(n_images)],
        b"batch_label": f"{name} batch 1 of 1".encode(),
        b"fine_labels": [int(v) for v in fine],
        b"coarse_labels": [int(v) // 5 for v in fine],
        b"data": pixels,
    }


def synthetic_meta():
    return {b"fine_label_names": [f"fine_{i}".encode() for i in range(NB_CLASSES_FINE)],
            b"coarse_label_names": [f"coarse_{i}".encode() for i in range(NB_CLASSES_COARSE)]}


def write_synthetic_archive(path, n_train=400, n_test=100, seed=0, members=None,
                            learnable=False):
    """Write a cifar-100-python.tar.gz of random images to `path`, with the
    real members (`cifar-100-python/train`, `test`, `meta`) pickled as Python
    2 wrote them (protocol 2). `members` may replace or add raw member bytes
    (name -> bytes, or None to leave a member out) to make broken ones.
    `learnable`: each label's images share a template under the noise, so
    accuracy rises with training (for learning curves worth comparing)."""
    rng = np.random.default_rng(seed)
    templates = None
    if learnable:
        templates = np.random.default_rng([seed, 1]).integers(
            0, 256, size=(NB_CLASSES_FINE, PIXELS_PER_IMAGE), dtype=np.uint8)
    payloads = {"train": pickle.dumps(synthetic_split(n_train, rng, "training", templates),
                                      protocol=2),
                "test": pickle.dumps(synthetic_split(n_test, rng, "testing", templates),
                                     protocol=2),
                "meta": pickle.dumps(synthetic_meta(), protocol=2)}
    payloads.update(members or {})
    with tarfile.open(path, "w:gz") as tar:
        for name, payload in payloads.items():
            if payload is None:
                continue
            info = tarfile.TarInfo(f"{CIFAR100_FOLDER}/{name}")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return path
