"""Write a small archive in exactly the format of the real cifar-100-python.tar.gz.

Same members (`cifar-100-python/train`, `test`, `meta`), pickled the way
Python 2 wrote them (protocol 2, bytes keys, labels as lists), and images as
N x 3072 uint8 rows: 1024 red, 1024 green, 1024 blue values, row-major. The
tests and the benchmark use it because the real data set cannot be
downloaded here.
"""

import io
import pickle
import tarfile

import numpy as np

FOLDER = "cifar-100-python"


def fake_split(n_images, rng, name):
    """One pickled split as a dict with bytes keys, like the real files."""
    fine = rng.integers(0, 100, size=n_images)
    data = rng.integers(0, 256, size=(n_images, 3072), dtype=np.uint8)
    return {
        b"filenames": [f"fake_{name}_{i}.png".encode() for i in range(n_images)],
        b"batch_label": f"{name} batch 1 of 1".encode(),
        b"fine_labels": [int(v) for v in fine],
        b"coarse_labels": [int(v) // 5 for v in fine],
        b"data": data,
    }


def fake_meta():
    return {b"fine_label_names": [f"fine_{i}".encode() for i in range(100)],
            b"coarse_label_names": [f"coarse_{i}".encode() for i in range(20)]}


def write_archive(path, n_train=400, n_test=100, seed=0, members=None):
    """Write the archive to `path`; `members` may replace or add raw member
    bytes (name -> bytes, or None to leave a member out) to make broken ones."""
    rng = np.random.default_rng(seed)
    payloads = {"train": pickle.dumps(fake_split(n_train, rng, "training"), protocol=2),
                "test": pickle.dumps(fake_split(n_test, rng, "testing"), protocol=2),
                "meta": pickle.dumps(fake_meta(), protocol=2)}
    payloads.update(members or {})
    with tarfile.open(path, "w:gz") as tar:
        for name, payload in payloads.items():
            if payload is None:
                continue
            info = tarfile.TarInfo(f"{FOLDER}/{name}")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return path
