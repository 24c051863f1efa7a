"""Tiny data sets written by the tests, as users have them: a CIFAR-10 archive
in the real format, and folders of image files (PNG, JPEG, BMP, GIF) in mixed
sizes and colour modes, with one or two label levels."""

import pickle

import numpy as np
from PIL import Image

from hks.data import cifar_archives, synthetic_data

CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                 "ship", "truck"]
# (suffix, PIL mode) in turn for the images of a folder: every format and mode.
KINDS = [(".png", "RGB"), (".jpg", "RGB"), (".png", "L"), (".png", "RGBA"), (".gif", "P"),
         (".bmp", "RGB"), (".jpeg", "L"), (".png", "P")]


def cifar10_batch(n_images, rng, name):
    """One batch as the real files pickle it: bytes keys, `labels` a list,
    N x 3072 uint8 rows (1024 red, 1024 green, 1024 blue values)."""
    images, labels = synthetic_data.synthetic_images(n_images, 10, 32, rng)
    return {b"batch_label": name.encode(), b"labels": [int(v) for v in labels],
            b"data": images.transpose(0, 3, 1, 2).reshape(n_images, 3072),
            b"filenames": [f"{name}_{i}.png".encode() for i in range(n_images)]}


def write_cifar10_archive(path, per_batch=40, n_test=50, seed=0, members=None):
    """cifar-10-python.tar.gz with the real members (cifar-10-batches-py/
    data_batch_1..5, test_batch, batches.meta), Python 2 pickles."""
    rng = np.random.default_rng(seed)
    payloads = {f"data_batch_{i}": pickle.dumps(cifar10_batch(per_batch, rng, f"batch {i}"),
                                                protocol=2) for i in range(1, 6)}
    payloads["test_batch"] = pickle.dumps(cifar10_batch(n_test, rng, "test"), protocol=2)
    payloads["batches.meta"] = pickle.dumps(
        {b"label_names": [n.encode() for n in CIFAR10_NAMES], b"num_cases_per_batch": per_batch,
         b"num_vis": 3072}, protocol=2)
    payloads.update(members or {})
    synthetic_data.write_tar_gz(path, cifar_archives.CIFAR10_FOLDER, payloads)
    return path


def write_image(path, rng, index, colour=None):
    """An image file of a random size (12..60 px a side) in the index-th
    format and mode of KINDS; `colour` (RGB) tints it so classes differ.
    Returns the path written (its suffix chosen here)."""
    suffix, mode = KINDS[index % len(KINDS)]
    height, width = (int(v) for v in rng.integers(12, 61, size=2))
    pixels = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    if colour is not None:
        pixels = ((np.array(colour, np.uint16) * 3 + pixels) // 4).astype(np.uint8)
    image = Image.fromarray(pixels).convert(mode)
    if mode == "P" and index % 2:
        image.info["transparency"] = 0
    path = path.with_suffix(suffix)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


def write_folder(root, classes, per_class=10, seed=0):
    """root/<class>/<image> for each name in `classes` (a name with a "/",
    group/class, gives the two-level layout). Returns {class: [paths]}."""
    rng = np.random.default_rng(seed)
    written = {}
    for number, name in enumerate(classes):
        colour = np.random.default_rng([seed, number]).integers(0, 256, size=3)
        written[name] = [write_image(root / name / f"img_{i:03d}", rng, number + i, colour)
                         for i in range(per_class)]
    return written
