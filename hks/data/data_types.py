"""What every reader of images shares: the error it raises (DatasetError),
what it returns (Loaded, with data_info's record of the data set) and how a
data set is named in results. Nothing here imports Keras or reads a file."""

import collections
import os
from pathlib import Path

from hks.core import flags

IMAGE_SIZE = 32  # CIFAR's, and what the architecture was designed for


class DatasetError(Exception):
    """The data set cannot be found or is not in the expected format."""


Loaded = collections.namedtuple("Loaded", "train test info")


def is_folder(name):
    """Whether --dataset names a folder rather than one of flags.DATASETS."""
    return name not in flags.DATASETS


def dataset_name(name):
    """What a data set is called in results and messages: the name, or the
    folder's own name (the same on every machine that holds a copy)."""
    return Path(os.path.expanduser(name)).resolve().name if is_folder(name) else name


def recorded_name(name):
    """What a result records as its `dataset`: the name, or the folder's absolute path."""
    return str(Path(os.path.expanduser(name)).resolve()) if is_folder(name) else name



def data_info(name, image_size, class_names, group_names=None):
    """What every result records about its data set: `dataset` (the name, or
    the folder's path), `image_size`, `nb_classes`, `nb_groups` (None with
    one label level) and the names."""
    return {"dataset": recorded_name(name),
            "image_size": int(image_size), "nb_classes": len(class_names),
            "nb_groups": None if group_names is None else len(group_names),
            "class_names": list(class_names),
            "group_names": None if group_names is None else list(group_names)}
