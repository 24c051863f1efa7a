"""The images a trial trains on: finding, checking, downloading, decoding and
caching them, and the arrays `fit` takes.

`--dataset` (HKS_DATASET) names them:
- `cifar100` (default): the real `cifar-100-python.tar.gz`, 100 fine and 20
  coarse labels;
- `cifar10`: the real `cifar-10-python.tar.gz`, 10 classes (one head);
- a folder: `DIR/<class>/<image>` (one head) or `DIR/<group>/<class>/<image>`
  (two heads: the classes are the fine labels, the groups the coarse ones),
  split into `DIR/train/` and `DIR/test/` or by `--test-split`; decoded once
  into a cache outside the folder (`--cache-dir`);
- `synthetic`: a small learnable set made in memory, for a first run without
  any download (its accuracies mean nothing).

The CIFAR archives are looked for in `--data-dir`, then Keras' cache, and
else downloaded into that cache; the loader says whether the archive is the
official one and keeps a decoded copy beside it. `load_dataset(config)` gives
`Loaded(train, test, info)`: train and test are `(images, fine, coarse)`
(uint8 N x S x S x 3, int64 labels, coarse None with one head), `info` what
every result records about the data set. `training_data(config)` splits it as
a trial needs. Nothing here imports Keras.
"""

import collections
import dataclasses
import hashlib
import http.client
import io
import os
import pickle
import re
import tarfile
import tempfile
import urllib.request
import warnings
import zlib
from pathlib import Path

import numpy as np

import utils

# --- the official archives (their SHA-256 is the one Keras checks) ---
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
IMAGE_SIZE = 32  # CIFAR's, and what the architecture was designed for
IMAGE_SHAPE = (IMAGE_SIZE, IMAGE_SIZE, 3)
PIXELS_PER_IMAGE = IMAGE_SIZE * IMAGE_SIZE * 3
NB_CLASSES_FINE = 100
NB_CLASSES_COARSE = 20
TRAIN_FRACTION_WHEN_TRIMMED = 0.8  # DATASET_SIZE=N keeps 80% train, 20% test

# --- folders of images ---
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
FOLDER_CACHE_VERSION = 1  # bump when the cached arrays change meaning
SPLIT_SEED = 0  # --test-split's draw: the same images are held out in every trial

# --- the synthetic set: 10 classes in 5 groups, big enough to learn something ---
SYNTHETIC_CLASSES = 10
SYNTHETIC_GROUPS = 5
SYNTHETIC_TRAIN = 1000
SYNTHETIC_TEST = 250
SYNTHETIC_SEED = 0
SYNTHETIC_NOTICE = ("*** --dataset synthetic: made-up images (a pattern per class under "
                    "noise) to show the whole loop without a download. Its accuracies "
                    "mean nothing. ***")


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


class DatasetError(Exception):
    """The data set cannot be found or is not in the expected format."""


Loaded = collections.namedtuple("Loaded", "train test info")

_loaded = {}  # decoded data set per source, kept for the life of the process
# Notices said once per process: the synthetic warning, skipped files, and
# where trials train (trial_process).
_said = set()


def say_once(key, text, notices=True):
    if notices and key not in _said:
        _said.add(key)
        print(text, flush=True)


# ------------------------------------------------ which data set ----

def is_folder(name):
    """Whether --dataset names a folder rather than one of utils.DATASETS."""
    return name not in utils.DATASETS


def dataset_name(name):
    """What a data set is called in results and messages: the name, or the
    folder's own name (the same on every machine that holds a copy)."""
    return Path(os.path.expanduser(name)).resolve().name if is_folder(name) else name


def recorded_name(name):
    """What a result records as its `dataset`: the name, or the folder's absolute path."""
    return str(Path(os.path.expanduser(name)).resolve()) if is_folder(name) else name


def load_dataset(config, notices=True):
    """The data set that `config.dataset` names (default cifar100), as
    Loaded(train, test, info), decoded once per process. `notices=False`
    keeps quiet (a trial process: the search has said it once). Raises
    DatasetError."""
    name = getattr(config, "dataset", "cifar100")
    size = getattr(config, "image_size", IMAGE_SIZE)
    if name == "synthetic":
        say_once("synthetic", SYNTHETIC_NOTICE, notices)
        key = ("synthetic", size)
        if key not in _loaded:
            _loaded[key] = synthetic_dataset(size)
        return _loaded[key]
    if is_folder(name):
        return load_folder(name, size, config, notices)
    archive = ARCHIVES[name]
    source = find_archive(archive, config)
    key = (str(source.resolve()), source_signature(source, archive), size)
    if key not in _loaded:
        train, test, names = read_archive(archive, source, notices)
        info = data_info(name, size, *names)
        _loaded[key] = Loaded(resize_split(train, size), resize_split(test, size), info)
    return _loaded[key]


def load_cifar100(data_dir=None, config=None, notices=True):
    """CIFAR-100 as `((x_train, y_fine_train, y_coarse_train), (x_test,
    y_fine_test, y_coarse_test))`, whatever --dataset says (for scripts
    written for earlier versions). Raises DatasetError."""
    config = config or utils.read_settings(utils.TrialSettings)
    if data_dir is not None:
        config = dataclasses.replace(config, data_dir=data_dir)
    if getattr(config, "dataset", "cifar100") != "cifar100" or \
            getattr(config, "image_size", IMAGE_SIZE) != IMAGE_SIZE:
        config = utils.subset(utils.MachineSettings, config)
    loaded = load_dataset(config, notices)
    return loaded.train, loaded.test


def unload():
    """Forget the decoded data kept by load_dataset (the on-disk copy stays)."""
    _loaded.clear()


unload_cifar100 = unload  # the name scripts written for earlier versions use


def data_info(name, image_size, class_names, group_names=None):
    """What every result records about its data set: `dataset` (the name, or
    the folder's path), `image_size`, `nb_classes`, `nb_groups` (None with
    one label level) and the names."""
    return {"dataset": recorded_name(name),
            "image_size": int(image_size), "nb_classes": len(class_names),
            "nb_groups": None if group_names is None else len(group_names),
            "class_names": list(class_names),
            "group_names": None if group_names is None else list(group_names)}


def identity(record):
    """(name, image size, classes, groups) of a data set info or of a
    result: two searches compare when these are equal. Results written
    before --dataset existed are CIFAR-100 at 32 px."""
    name = record.get("dataset") or "cifar100"
    return (dataset_name(name) if is_folder(name) else name,
            record.get("image_size") or IMAGE_SIZE,
            record.get("nb_classes") or NB_CLASSES_FINE,
            record.get("nb_groups") if "nb_classes" in record else NB_CLASSES_COARSE)


def expected_identity(config):
    """identity() of the data set `config` names, without decoding it: a
    folder's classes are counted from its layout, and are None when the
    folder is not on this machine (a MongoDB driver's)."""
    name, size = config.dataset, config.image_size
    if name == "synthetic":
        return name, size, SYNTHETIC_CLASSES, SYNTHETIC_GROUPS
    if name in ARCHIVES:
        return name, size, ARCHIVES[name].nb_classes, ARCHIVES[name].nb_groups
    root = Path(os.path.expanduser(name)).resolve()
    if not root.is_dir():
        return root.name, size, None, None
    layout = scan_folder(root)
    return (root.name, size, len(layout.class_names),
            None if layout.group_names is None else len(layout.group_names))


def identity_keys(config):
    """The data set keys of a result (data_info's, without the names) for a
    trial that failed before it loaded its data; {} if the folder is gone."""
    try:
        _, size, classes, groups = expected_identity(config)
    except DatasetError:
        return {}
    return {"dataset": recorded_name(config.dataset), "image_size": size,
            "nb_classes": classes, "nb_groups": groups}


def model_shape(config):
    """neural_net.build_model's image size and heads for the data set
    `config` names, without decoding it."""
    _, size, classes, groups = expected_identity(config)
    return {"image_size": size, "nb_classes": classes, "nb_groups": groups}


def same_identity(a, b):
    """Whether two identities compare (classes unknown on one side: by name and size)."""
    a, b = tuple(a), tuple(b)
    if a[2] is None or b[2] is None:
        return a[:2] == b[:2]
    return a == b


def describe_identity(ident):
    """`my_images (12 classes in 3 groups, 64 px)` for messages."""
    name, size, classes, groups = ident
    if classes is None:
        return f"{name} ({size} px)"
    return (f"{name} ({classes} classes" + (f" in {groups} groups" if groups else "")
            + f", {size} px)")


# ------------------------------------------------ the CIFAR archives ----

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
        os.chmod(partial, utils.FILE_MODE)
        os.replace(partial, target)
    finally:
        if os.path.exists(partial):
            os.unlink(partial)


def source_signature(source, archive=ARCHIVES["cifar100"]):
    """Size and modification time of the archive, or of the folder's files."""
    files = ([source] if source.is_file()
             else [source / n for n in archive.train + archive.test])
    return ";".join(f"{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in files if f.exists())


def sha256_of(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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
        digest = sha256_of(source)
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
        utils.atomic_write(cache, buffer.getvalue())
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


# ---------------------------------------------------- folders of images ----

@dataclasses.dataclass
class Layout:
    """The images a folder holds: relative paths, labels, names, and which
    are test images (None: no train/ and test/ folders, --test-split decides)."""
    files: list
    fine: list
    coarse: list | None
    class_names: list
    group_names: list | None
    is_test: list | None = None


def visible(path):
    return not path.name.startswith(".")


def is_image(path):
    return path.suffix.lower() in IMAGE_SUFFIXES


def scan_folder(root):
    """The Layout of an image folder, or one DatasetError line saying what
    is wrong with it."""
    if not root.is_dir():
        raise DatasetError(f"--dataset {root}: no such folder, and not one of "
                           f"{', '.join(utils.DATASETS)}")
    if (root / "train").is_dir() and (root / "test").is_dir():
        train, test = scan_tree(root / "train", root), scan_tree(root / "test", root)
        if (train.class_names, train.group_names) != (test.class_names, test.group_names):
            only = sorted(set(train.class_names) ^ set(test.class_names)) or ["(the groups)"]
            raise DatasetError(f"{root}: train/ and test/ must hold the same class folders; "
                               f"they differ in {', '.join(only[:5])}")
        return Layout(train.files + test.files, train.fine + test.fine,
                      None if train.coarse is None else train.coarse + test.coarse,
                      train.class_names, train.group_names,
                      [False] * len(train.files) + [True] * len(test.files))
    return scan_tree(root, root)


def scan_tree(top, root):
    """One split's class folders: DIR/<class>/<image> or DIR/<group>/<class>/<image>."""
    folders = sorted(p for p in top.iterdir() if p.is_dir() and visible(p))
    if not folders:
        raise DatasetError(f"{top} holds no class folders: put each class's images in "
                           f"{top}/<class>/ (or {top}/<group>/<class>/ for two label levels)")
    kinds = {folder: folder_kind(folder) for folder in folders}
    with_images = [f.name for f, kind in kinds.items() if kind == "images"]
    with_folders = [f.name for f, kind in kinds.items() if kind == "folders"]
    if with_images and with_folders:
        raise DatasetError(f"{top} mixes the two layouts: {with_images[0]}/ holds images but "
                           f"{with_folders[0]}/ holds folders. Use <class>/<image> or "
                           "<group>/<class>/<image> throughout")
    for folder, kind in kinds.items():
        if kind in ("empty", "both"):
            raise DatasetError(no_image_line(folder, root) if kind == "empty" else
                               f"{folder} holds both images and folders; a class folder "
                               "holds only images")
    if with_folders:
        return scan_groups(top, root, folders)
    if len(folders) < 2:
        raise DatasetError(f"{top} has one class folder ({folders[0].name}/); a classifier "
                           "needs at least 2")
    layout = Layout([], [], None, [f.name for f in folders], None)
    for label, folder in enumerate(folders):
        add_class(layout, folder, root, label)
    return layout


def scan_groups(top, root, groups):
    if len(groups) < 2:
        raise DatasetError(f"{top} has one group folder ({groups[0].name}/); use at least "
                           f"2 groups, or put the class folders directly in {top}/")
    layout = Layout([], [], [], [], [f.name for f in groups])
    classes = []
    for group_label, group in enumerate(groups):
        for folder in sorted(p for p in group.iterdir() if p.is_dir() and visible(p)):
            kind = folder_kind(folder)
            if kind != "images":
                raise DatasetError(no_image_line(folder, root) if kind == "empty" else
                                   f"{folder} holds folders: the layout has at most two "
                                   "levels, <group>/<class>/<image>")
            classes.append((group_label, folder))
    if len(classes) < 2:
        raise DatasetError(f"{top} holds one class folder in all; a classifier needs at least 2")
    names = [f.name for _, f in classes]
    qualify = len(set(names)) < len(names)  # the same class name in two groups
    for label, (group_label, folder) in enumerate(classes):
        layout.class_names.append(f"{folder.parent.name}/{folder.name}" if qualify else folder.name)
        add_class(layout, folder, root, label, group_label)
    return layout


def folder_kind(folder):
    """"images", "folders", "both" or "empty" (no image, no folder)."""
    entries = [p for p in folder.iterdir() if visible(p)]
    images = any(p.is_file() and is_image(p) for p in entries)
    folders = any(p.is_dir() for p in entries)
    return {(True, False): "images", (False, True): "folders",
            (True, True): "both"}.get((images, folders), "empty")


def no_image_line(folder, root):
    return (f"class folder {folder.relative_to(root)}/ in {root} has no image "
            f"({', '.join(IMAGE_SUFFIXES)}); add images or remove the folder")


def add_class(layout, folder, root, label, group_label=None):
    for path in sorted(p for p in folder.iterdir() if p.is_file() and visible(p)):
        if not is_image(path):
            continue  # notes, thumbnails' databases: not images
        layout.files.append(str(path.relative_to(root)))
        layout.fine.append(label)
        if group_label is not None:
            layout.coarse.append(group_label)


def folder_signature(root, layout):
    """Changes when a file is added, removed, renamed, resized or touched."""
    digest = hashlib.sha256(f"v{FOLDER_CACHE_VERSION}".encode())
    for name in layout.files:
        stat = (root / name).stat()
        digest.update(f"{name}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def folder_cache_path(root, size, cache_dir):
    """<cache dir>/<folder name>-<hash of its path>-<size>px.npz."""
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", root.name)[:40] or "images"
    where = hashlib.sha256(str(root).encode()).hexdigest()[:12]
    return Path(os.path.expanduser(cache_dir)) / f"{slug}-{where}-{size}px.npz"


def decode_image(path, size):
    """One image file as size x size x 3 uint8 (RGB, first frame, resized as
    keras.utils.image_dataset_from_directory does: no crop), or None when it
    cannot be decoded."""
    from PIL import Image
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # palette transparency, EXIF oddities
            with Image.open(path) as image:
                image.draft("RGB", (size, size))  # JPEG: decode at a smaller scale
                if image.mode == "P" and "transparency" in image.info:
                    image = image.convert("RGBA")
                rgb = image.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
                return np.asarray(rgb, dtype=np.uint8)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        return None


def load_folder(name, size, config, notices=True):
    """A folder of images at `size` px, decoded once into the cache folder
    and redone when its files change."""
    root = Path(os.path.expanduser(name)).resolve()
    layout = scan_folder(root)
    signature = folder_signature(root, layout)
    key = (str(root), signature, size, getattr(config, "test_split", 0.2))
    if key in _loaded:
        return _loaded[key]
    cache = folder_cache_path(root, size, config.cache_dir)
    decoded = read_folder_cache(cache, signature)
    if decoded is not None:
        say_once(("cached", str(root)), f"Images in {root}: decoded copy {cache}", notices)
    else:
        decoded = decode_folder(root, layout, size, notices)
        write_folder_cache(cache, root, signature, decoded, notices)
    images, keep, skipped = decoded
    if skipped:
        say_once(("skipped", str(root)), f"Images in {root}: skipped {len(skipped)} that "
                 f"cannot be decoded: {', '.join(skipped[:10])}"
                 + (" ..." if len(skipped) > 10 else ""), notices)
    _loaded[key] = split_folder(layout, images, keep, root, size, config)
    return _loaded[key]


def decode_folder(root, layout, size, notices=True):
    """(images, kept: which files decoded, names of those that did not)."""
    if notices:
        print(f"Images in {root}: decoding {len(layout.files)} files at {size} px "
              f"(once; the decoded copy is kept in the cache folder) ...", flush=True)
    images, keep, skipped = [], [], []
    for name in layout.files:
        image = decode_image(root / name, size)
        keep.append(image is not None)
        if image is None:
            skipped.append(name)
        else:
            images.append(image)
    if not images:
        raise DatasetError(f"{root}: none of its {len(layout.files)} images can be decoded")
    return np.stack(images), np.array(keep), skipped


def read_folder_cache(cache, signature):
    try:
        with np.load(cache) as npz:
            if str(npz["signature"]) != signature:
                return None
            return npz["images"], npz["keep"], [str(s) for s in npz["skipped"]]
    except Exception:  # missing, stale or damaged: decode again
        return None


def write_folder_cache(cache, root, signature, decoded, notices=True):
    if cache.resolve().is_relative_to(root):
        say_once(("cache", str(root)), f"note: the cache folder {cache.parent} is inside "
                 f"{root}; the decoded copy is not kept (choose another --cache-dir)", notices)
        return
    images, keep, skipped = decoded
    buffer = io.BytesIO()
    np.savez(buffer, signature=np.array(signature), images=images, keep=keep,
             skipped=np.array(skipped, dtype=str))
    try:
        utils.atomic_write(cache, buffer.getvalue())
    except OSError as err:
        say_once(("cache", str(root)), f"note: could not keep the decoded copy of {root} "
                 f"({utils.os_error_text(err)}); it will be decoded again next time", notices)


def split_folder(layout, images, keep, root, size, config):
    """Loaded(train, test, info) from the decoded images: train/ and test/,
    or a stratified, seeded --test-split; each split shuffled once (seeded),
    so DATASET_SIZE keeps images of every class."""
    fine = np.array(layout.fine, np.int64)[keep]
    coarse = None if layout.coarse is None else np.array(layout.coarse, np.int64)[keep]
    for label in np.setdiff1d(np.arange(len(layout.class_names)), fine):
        raise DatasetError(f"{root}: class {layout.class_names[label]} has no image that "
                           "can be decoded")
    if layout.is_test is not None:
        is_test = np.array(layout.is_test)[keep]
    else:
        fraction = getattr(config, "test_split", 0.2)
        if not fraction:
            raise DatasetError(f"{root} has no train/ and test/ folders and --test-split "
                               "is 0: nothing to validate on (give a fraction such as 0.2)")
        is_test = stratified_test_mask(fine, fraction)
    rng = np.random.default_rng(SPLIT_SEED)

    def split(mask):
        order = rng.permutation(np.flatnonzero(mask))
        return images[order], fine[order], None if coarse is None else coarse[order]
    train, test = split(~is_test), split(is_test)
    if not len(test[0]) or not len(train[0]):
        raise DatasetError(f"{root}: no {'test' if len(train[0]) else 'training'} image; "
                           "add images (or change --test-split)")
    return Loaded(train, test, data_info(str(root), size, layout.class_names,
                                         layout.group_names))


def stratified_test_mask(labels, fraction, seed=SPLIT_SEED):
    """The test images: `fraction` of each class (at least one image of a
    class of two or more, at most all but one), drawn with `seed`."""
    rng = np.random.default_rng(seed)
    mask = np.zeros(len(labels), bool)
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        n_test = int(round(len(members) * fraction))
        if len(members) > 1:
            n_test = min(max(n_test, 1), len(members) - 1)
        mask[rng.permutation(members)[:n_test]] = True
    return mask


# ------------------------------------------------ what a trial trains on ----

def trim_dataset(data, dataset_size):
    """Keep the first 80% x N training and 20% x N test images (DATASET_SIZE)."""
    if not dataset_size:
        return data
    n_train = max(1, int(dataset_size * TRAIN_FRACTION_WHEN_TRIMMED))
    n_test = max(1, dataset_size - n_train)
    train, test = data
    return trim_split(train, n_train), trim_split(test, n_test)


def trim_split(split, n):
    return tuple(None if a is None else a[:n] for a in split)


def training_data(config, notices=True):
    """(train, validation, test) for `fit`, each (images, fine, coarse):
    validation is the test split and test None, unless --val-split holds out
    part of the training images for validation."""
    loaded = load_dataset(config, notices)
    train, test = trim_dataset((loaded.train, loaded.test), config.dataset_size)
    if config.val_split:
        n_val = max(1, int(round(len(train[0]) * config.val_split)))
        if n_val >= len(train[0]):
            raise DatasetError(f"--val-split {config.val_split} leaves no training images")
        val = tuple(None if a is None else a[-n_val:] for a in train)
        train = tuple(None if a is None else a[:-n_val] for a in train)
        return train, val, test
    return train, test, None


# ------------------------------------------------ synthetic images ----

def synthetic_templates(nb_classes, size, rng):
    """One blocky colour pattern per class (4 x 4 random colours, scaled up)."""
    coarse = rng.integers(0, 256, size=(nb_classes, 4, 4, 3), dtype=np.uint8)
    scale = -(-size // 4)
    return np.repeat(np.repeat(coarse, scale, axis=1), scale, axis=2)[:, :size, :size]


def synthetic_images(n_images, nb_classes, size, rng, templates=None):
    """(images, fine labels): random pixels, or with `templates` each
    class's pattern showing through the noise (3 parts pattern, 1 noise)."""
    fine = rng.integers(0, nb_classes, size=n_images)
    images = rng.integers(0, 256, size=(n_images, size, size, 3), dtype=np.uint8)
    if templates is not None:
        images = ((templates[fine].astype(np.uint16) * 3 + images) // 4).astype(np.uint8)
    return images, fine.astype(np.int64)


def synthetic_dataset(size=IMAGE_SIZE, n_train=SYNTHETIC_TRAIN, n_test=SYNTHETIC_TEST,
                      seed=SYNTHETIC_SEED):
    """--dataset synthetic: SYNTHETIC_CLASSES classes in SYNTHETIC_GROUPS
    groups (fine label // 2), learnable, made in memory."""
    rng = np.random.default_rng(seed)
    templates = synthetic_templates(SYNTHETIC_CLASSES, size, rng)
    per_group = SYNTHETIC_CLASSES // SYNTHETIC_GROUPS

    def split(n):
        images, fine = synthetic_images(n, SYNTHETIC_CLASSES, size, rng, templates)
        return images, fine, fine // per_group
    info = data_info("synthetic", size, [f"pattern_{i}" for i in range(SYNTHETIC_CLASSES)],
                     [f"group_{i}" for i in range(SYNTHETIC_GROUPS)])
    return Loaded(split(n_train), split(n_test), info)


def synthetic_split(n_images, rng, name, templates=None):
    """One CIFAR-100 split as the real files pickle it: a dict with bytes
    keys, labels as lists, images as N x 3072 uint8 rows (1024 red, 1024
    green, 1024 blue values, row-major); coarse label = fine label // 5."""
    images, fine = synthetic_images(n_images, NB_CLASSES_FINE, IMAGE_SIZE, rng, templates)
    return {
        b"filenames": [f"synthetic_{name}_{i}.png".encode() for i in range(n_images)],
        b"batch_label": f"{name} batch 1 of 1".encode(),
        b"fine_labels": [int(v) for v in fine],
        b"coarse_labels": [int(v) // 5 for v in fine],
        b"data": images.transpose(0, 3, 1, 2).reshape(n_images, PIXELS_PER_IMAGE),
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
    `learnable`: each label's images share a pattern under the noise, so
    accuracy rises with training (for learning curves worth comparing)."""
    rng = np.random.default_rng(seed)
    templates = None
    if learnable:
        templates = synthetic_templates(NB_CLASSES_FINE, IMAGE_SIZE,
                                        np.random.default_rng([seed, 1]))
    payloads = {"train": pickle.dumps(synthetic_split(n_train, rng, "training", templates),
                                      protocol=2),
                "test": pickle.dumps(synthetic_split(n_test, rng, "testing", templates),
                                     protocol=2),
                "meta": pickle.dumps(synthetic_meta(), protocol=2)}
    payloads.update(members or {})
    write_tar_gz(path, CIFAR100_FOLDER, payloads)
    return path


def write_tar_gz(path, folder, payloads):
    """A tar.gz holding `folder/<name>` for each name -> bytes (None: left out)."""
    with tarfile.open(path, "w:gz") as tar:
        for name, payload in payloads.items():
            if payload is None:
                continue
            info = tarfile.TarInfo(f"{folder}/{name}")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
