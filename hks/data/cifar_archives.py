"""The official CIFAR-100 and CIFAR-10 archives: find them (in --data-dir,
then Keras' cache), download them into that cache when they are nowhere,
check them against the official SHA-256, decode their pickled batches into
images and labels, and keep a decoded copy beside the archive so that later
runs load it in a second. Nothing here imports Keras."""

import dataclasses
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

from hks.core import storage
from hks.data.data_types import IMAGE_SIZE, DatasetError

# The official archives (their SHA-256 is the one Keras checks) ---
CIFAR100_ARCHIVE = "cifar-100-python.tar.gz"
CIFAR100_FOLDER = "cifar-100-python"
CIFAR100_URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
CIFAR100_SHA256 = "85cd44d02ba6437773c5bbd22e183051d648de2e7d6b014e1ef29b855ba677a7"
CIFAR10_ARCHIVE = "cifar-10-python.tar.gz"
CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_SHA256 = "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce"
KERAS_CACHE_NAME = "cifar-100-python-target"  # where keras.datasets.cifar100 extracts it
DECODED_CACHE_SUFFIX = ".decoded.npz"
DOWNLOAD_TIMEOUT_S = 60  # per network read, not for the whole 161 MB
IMAGE_SHAPE = (IMAGE_SIZE, IMAGE_SIZE, 3)
PIXELS_PER_IMAGE = IMAGE_SIZE * IMAGE_SIZE * 3
NB_CLASSES_FINE = 100
NB_CLASSES_COARSE = 20


@dataclasses.dataclass(frozen=True)
class Archive:
    """Where one of the official CIFAR archives is found and what it holds."""
    title: str
    file: str  # the archive's name
    folder: str  # the folder it unpacks to
    url: str
    sha256: str
    keras_cache: str  # where keras.datasets extracts it, under KERAS_HOME/datasets
    train: tuple  # members holding the training images
    test: tuple
    meta: str  # the member with the label names
    fine_key: str  # labels in each batch
    coarse_key: str | None
    fine_names: str  # names in the meta member
    coarse_names: str | None
    nb_classes: int
    nb_groups: int | None


ARCHIVES = {
    "cifar100": Archive("CIFAR-100", CIFAR100_ARCHIVE, CIFAR100_FOLDER, CIFAR100_URL,
                        CIFAR100_SHA256, KERAS_CACHE_NAME, ("train",), ("test",), "meta",
                        "fine_labels", "coarse_labels", "fine_label_names",
                        "coarse_label_names", NB_CLASSES_FINE, NB_CLASSES_COARSE),
    "cifar10": Archive("CIFAR-10", CIFAR10_ARCHIVE, CIFAR10_FOLDER, CIFAR10_URL,
                       CIFAR10_SHA256, "cifar-10-batches-py-target",
                       tuple(f"data_batch_{i}" for i in range(1, 6)), ("test_batch",),
                       "batches.meta", "labels", None, "label_names", None, 10, None),
}



def find_archive(archive, config):
    """The archive or extracted folder to read; downloads it when there is none."""
    data_dir = Path(os.path.expanduser(config.data_dir))
    keras_home = Path(os.path.expanduser(config.keras_home))
    keras_datasets = keras_home / "datasets"
    candidates = [data_dir / archive.file, data_dir / archive.folder,
                  keras_datasets / archive.keras_cache / archive.folder,
                  keras_datasets / archive.folder, keras_datasets / archive.file]
    for path in candidates:
        if path.is_file() or (path.is_dir() and (path / archive.train[0]).is_file()):
            return path
    return download_archive(archive, data_dir, keras_home, config.offline)


def download_archive(archive, data_dir, keras_home, offline):
    """Download the archive into Keras' cache; one clear error when that fails."""
    where = (f"put {archive.file} in {data_dir}/ (download it from {archive.url}) "
             "or pass --data-dir")
    if offline:
        raise DatasetError(f"{archive.title} not found and downloading is off: {where}.")
    target = keras_home / "datasets" / archive.file
    print(f"{archive.title} not found in {data_dir}/ nor in Keras' cache: downloading "
          f"{archive.url} into {target.parent}/ ...", flush=True)
    try:
        download(archive.url, target, archive.sha256)
    except (OSError, http.client.HTTPException) as err:  # no network, a dropped
        # connection, a proxy, a full disk: all the same to the user
        raise DatasetError(f"{archive.title} not found and the download failed "
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
        os.chmod(partial, storage.FILE_MODE)
        os.replace(partial, target)
    finally:
        if os.path.exists(partial):
            os.unlink(partial)


def source_signature(source, archive=ARCHIVES["cifar100"]):
    """Size and modification time of the archive, or of the folder's files."""
    files = ([source] if source.is_file()
             else [source / n for n in archive.train + archive.test])
    return ";".join(f"{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in files if f.exists())


def decoded_cache_path(source):
    return source.with_name(source.name.removesuffix(".tar.gz") + DECODED_CACHE_SUFFIX)


def read_archive(archive, source, notices=True):
    """(train, test, (class names, group names)) of `source`, through the
    decoded copy beside it when that is fresh."""
    say = print if notices else (lambda *args, **kwargs: None)
    cache = decoded_cache_path(source)
    signature = source_signature(source, archive)
    cached = read_decoded_cache(cache, signature)
    if cached is not None:
        say(f"{archive.title}: {cached[3]} (decoded copy {cache.name})", flush=True)
        return cached[:3]
    if source.is_file():
        digest = storage.sha256_of(source)
        if digest == archive.sha256:
            verdict = f"{source} is the official archive (SHA-256 matches)"
        else:
            verdict = (f"notice: {source} is not the official archive "
                       f"(SHA-256 {digest[:12]}...); using it as it is")
        members = read_archive_members(source, archive)
    else:
        verdict = f"extracted folder {source} (no archive to check against the official SHA-256)"
        members = {name: read_member_file(source / name)
                   for name in archive.train + archive.test + (archive.meta,)
                   if name != archive.meta or (source / name).is_file()}
    say(f"{archive.title}: {verdict}", flush=True)
    train = join_batches([decode_split(members[m], f"{source}: {m}", archive)
                          for m in archive.train])
    test = join_batches([decode_split(members[m], f"{source}: {m}", archive)
                         for m in archive.test])
    names = label_names(members.get(archive.meta), archive)
    write_decoded_cache(cache, signature, verdict, train, test, names, archive.title)
    return train, test, names


def read_archive_members(source, archive=ARCHIVES["cifar100"]):
    """Unpickle the archive's batches (and its label names, when there)
    out of the tar.gz (Python 2 pickles)."""
    members = {}
    try:
        with tarfile.open(source, "r:gz") as tar:
            for name in archive.train + archive.test + (archive.meta,):
                member_name = f"{archive.folder}/{name}"
                try:
                    member = tar.extractfile(member_name)
                except KeyError:
                    if name == archive.meta:
                        continue  # label names are not needed for training
                    raise DatasetError(f"{source}: the archive has no member "
                                       f"{member_name}; is it {archive.file}?") from None
                if member is None:
                    raise DatasetError(f"{source}: {member_name} is not a file")
                members[name] = unpickle(member.read(), f"{source}: {member_name}", archive)
    except (tarfile.TarError, EOFError, zlib.error, OSError) as err:
        raise DatasetError(f"{source}: not a readable tar.gz archive, it may be "
                           f"truncated or corrupt ({err}). Download it again from "
                           f"{archive.url}.") from None
    return members


def read_member_file(path):
    try:
        return unpickle(path.read_bytes(), str(path))
    except OSError as err:
        raise DatasetError(f"{path}: cannot be read ({err})") from None


def unpickle(raw, where, archive=ARCHIVES["cifar100"]):
    try:
        return pickle.load(io.BytesIO(raw), encoding="bytes")
    except Exception as err:  # pickle raises many kinds on garbage
        raise DatasetError(f"{where}: not a valid {archive.title} pickle "
                           f"({type(err).__name__}: {err})") from None


def str_keys(batch):
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in batch.items()}


def decode_split(batch, where, archive=ARCHIVES["cifar100"]):
    """Check one pickled batch and turn its rows into N x 32 x 32 x 3 images:
    (images, fine labels, coarse labels or None)."""
    if not isinstance(batch, dict):
        raise DatasetError(f"{where}: expected a dict, found {type(batch).__name__}")
    batch = str_keys(batch)
    keys = ["data", archive.fine_key] + ([archive.coarse_key] if archive.coarse_key else [])
    missing = [k for k in keys if k not in batch]
    if missing:
        raise DatasetError(f"{where}: missing {', '.join(missing)}")
    data = batch["data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 \
            or data.shape[1] != PIXELS_PER_IMAGE:
        shape = getattr(data, "shape", None)
        dtype = getattr(data, "dtype", type(data).__name__)
        raise DatasetError(f"{where}: data must be N x {PIXELS_PER_IMAGE} uint8, "
                           f"found shape {shape} of {dtype}")
    fine = labels_array(batch[archive.fine_key], archive.nb_classes,
                        f"{where}: {archive.fine_key}")
    coarse = None
    if archive.coarse_key:
        coarse = labels_array(batch[archive.coarse_key], archive.nb_groups,
                              f"{where}: {archive.coarse_key}")
    if len(data) != len(fine) or (coarse is not None and len(coarse) != len(data)):
        counts = f"{len(fine)} fine" + ("" if coarse is None else f" and {len(coarse)} coarse")
        raise DatasetError(f"{where}: {len(data)} images but {counts} labels")
    # Each row is 1024 red, 1024 green then 1024 blue values, row-major.
    images = np.ascontiguousarray(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    return images, fine, coarse


def join_batches(batches):
    """CIFAR-10's five training batches as one split."""
    if len(batches) == 1:
        return batches[0]
    images, fine, coarse = zip(*batches)
    return (np.concatenate(images), np.concatenate(fine),
            None if coarse[0] is None else np.concatenate(coarse))


def label_names(meta, archive):
    """(class names, group names or None) from the meta member; numbers when
    it is missing or odd (the names only label results and plots)."""
    meta = str_keys(meta) if isinstance(meta, dict) else {}

    def names(key, count):
        values = meta.get(key) if key else None
        if isinstance(values, list) and len(values) == count:
            return [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)
                    for v in values]
        return [str(i) for i in range(count)]
    return (names(archive.fine_names, archive.nb_classes),
            None if archive.nb_groups is None else names(archive.coarse_names,
                                                         archive.nb_groups))


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
    """(train, test, names, what the archive was) from a fresh cache, else None."""
    try:
        with np.load(cache) as npz:
            if str(npz["signature"]) != signature:
                return None
            grouped = npz["group_names"].size > 0
            coarse = (lambda k: npz[k]) if grouped else (lambda k: None)
            return ((npz["x_train"], npz["y_fine_train"], coarse("y_coarse_train")),
                    (npz["x_test"], npz["y_fine_test"], coarse("y_coarse_test")),
                    ([str(n) for n in npz["class_names"]],
                     [str(n) for n in npz["group_names"]] if grouped else None),
                    str(npz["verdict"]))
    except Exception:  # missing, stale format or damaged: decode again
        return None


def write_decoded_cache(cache, signature, verdict, train, test, names, title):
    empty = np.zeros(0, np.int64)
    buffer = io.BytesIO()
    np.savez(buffer, signature=np.array(signature), verdict=np.array(verdict),
             x_train=train[0], y_fine_train=train[1],
             y_coarse_train=empty if train[2] is None else train[2],
             x_test=test[0], y_fine_test=test[1],
             y_coarse_test=empty if test[2] is None else test[2],
             class_names=np.array(names[0]), group_names=np.array(names[1] or []))
    try:
        storage.atomic_write(cache, buffer.getvalue())
    except OSError as err:
        print(f"{title}: note: could not write the decoded copy {cache} ({err}); "
              "the archive will be decoded again next time.", flush=True)


def resize_split(split, size):
    """A split's images at `size` x `size` (CIFAR's are 32 x 32)."""
    images, fine, coarse = split
    if images.shape[1:3] == (size, size):
        return split
    from PIL import Image
    resized = np.stack([np.asarray(Image.fromarray(image).resize(
        (size, size), Image.Resampling.BILINEAR)) for image in images])
    return resized, fine, coarse
