"""The images a trial trains on: which data set --dataset names, loading it
once per process, what every result records about it, and the arrays `fit`
takes.

`--dataset` (HKS_DATASET) names them:
- `cifar100` (default): the real `cifar-100-python.tar.gz`, 100 fine and 20
  coarse labels; `cifar10`: the real `cifar-10-python.tar.gz`, 10 classes
  (one head). Read by cifar_archives.py: --data-dir, then Keras' cache, else
  downloaded; a decoded copy is kept beside the archive.
- a folder: `DIR/<class>/<image>` (one head) or `DIR/<group>/<class>/<image>`
  (two heads: the classes are the fine labels, the groups the coarse ones),
  split into `DIR/train/` and `DIR/test/` or by `--test-split`. Read by
  image_folders.py, decoded once into a cache outside the folder.
- `synthetic`: a small learnable set made in memory (synthetic_data.py), for
  a first run without any download (its accuracies mean nothing).

`load_dataset(config)` gives `Loaded(train, test, info)`: train and test are
`(images, fine, coarse)` (uint8 N x S x S x 3, int64 labels, coarse None
with one head), `info` what every result records about the data set.
`training_data(config)` splits it as a trial needs. Nothing here imports Keras.
"""


import dataclasses
import os
from pathlib import Path

from hks.core import console, flags
from hks.data import cifar_archives, image_folders, synthetic_data
from hks.data.cifar_archives import ARCHIVES, NB_CLASSES_COARSE, NB_CLASSES_FINE
# The readers' shared names, also reachable from here as before the split:
from hks.data.data_types import (IMAGE_SIZE, DatasetError, Loaded, data_info, dataset_name,  # noqa: F401
                        is_folder, recorded_name)

TRAIN_FRACTION_WHEN_TRIMMED = 0.8  # DATASET_SIZE=N keeps 80% train, 20% test

_loaded = {}  # decoded data set per source, kept for the life of the process


def load_dataset(config, notices=True):
    """The data set that `config.dataset` names (default cifar100), as
    Loaded(train, test, info), decoded once per process. `notices=False`
    keeps quiet (a trial process: the search has said it once). Raises
    DatasetError."""
    name = getattr(config, "dataset", "cifar100")
    size = getattr(config, "image_size", IMAGE_SIZE)
    if name == "synthetic":
        console.say_once("synthetic", synthetic_data.SYNTHETIC_NOTICE, notices)
        key = ("synthetic", size)
        if key not in _loaded:
            _loaded[key] = synthetic_data.synthetic_dataset(size)
        return _loaded[key]
    if is_folder(name):
        return image_folders.load_folder(name, size, config, notices, _loaded)
    archive = ARCHIVES[name]
    source = cifar_archives.find_archive(archive, config)
    key = (str(source.resolve()), cifar_archives.source_signature(source, archive), size)
    if key not in _loaded:
        train, test, names = cifar_archives.read_archive(archive, source, notices)
        info = data_info(name, size, *names)
        _loaded[key] = Loaded(cifar_archives.resize_split(train, size),
                              cifar_archives.resize_split(test, size), info)
    return _loaded[key]


def load_cifar100(data_dir=None, config=None, notices=True):
    """CIFAR-100 as `((x_train, y_fine_train, y_coarse_train), (x_test,
    y_fine_test, y_coarse_test))`, whatever --dataset says (for scripts
    written for earlier versions). Raises DatasetError."""
    config = config or flags.read_settings(flags.TrialSettings)
    if data_dir is not None:
        config = dataclasses.replace(config, data_dir=data_dir)
    if getattr(config, "dataset", "cifar100") != "cifar100" or \
            getattr(config, "image_size", IMAGE_SIZE) != IMAGE_SIZE:
        config = flags.subset(flags.MachineSettings, config)
    loaded = load_dataset(config, notices)
    return loaded.train, loaded.test


def unload():
    """Forget the decoded data kept by load_dataset (the on-disk copy stays)."""
    _loaded.clear()


unload_cifar100 = unload  # the name scripts written for earlier versions use


# ------------------------------------------------ what a result records ----

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
        return (name, size, synthetic_data.SYNTHETIC_CLASSES,
                synthetic_data.SYNTHETIC_GROUPS)
    if name in ARCHIVES:
        return name, size, ARCHIVES[name].nb_classes, ARCHIVES[name].nb_groups
    root = Path(os.path.expanduser(name)).resolve()
    if not root.is_dir():
        return root.name, size, None, None
    layout = image_folders.scan_folder(root)
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


def model_shape(record):
    """neural_net.build_model's image size and heads (keyword arguments) for
    a data set's info, a result, or a retrained model's data set file:
    CIFAR-100's for those written before --dataset existed. For the data set
    a config names, without decoding it: model_shape(identity_keys(config))."""
    _, size, classes, groups = identity(record)
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
