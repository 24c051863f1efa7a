"""Made-up images: the learnable set of --dataset synthetic (a pattern per
class under noise, made in memory, for a first run without a download), and
a cifar-100-python.tar.gz of such images written in the real format, for
the tests and the benchmark. Nothing here imports Keras."""

import io
import pickle
import tarfile

import numpy as np

from hks.data.cifar_archives import (CIFAR100_FOLDER, NB_CLASSES_COARSE, NB_CLASSES_FINE,
                                     PIXELS_PER_IMAGE)
from hks.data.data_types import IMAGE_SIZE, Loaded, data_info

# The synthetic set: 10 classes in 5 groups, big enough to learn something ---
SYNTHETIC_CLASSES = 10
SYNTHETIC_GROUPS = 5
SYNTHETIC_TRAIN = 1000
SYNTHETIC_TEST = 250
SYNTHETIC_SEED = 0
SYNTHETIC_NOTICE = ("*** --dataset synthetic: made-up images (a pattern per class under "
                    "noise) to show the whole loop without a download. Its accuracies "
                    "mean nothing. ***")



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
