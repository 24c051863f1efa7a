"""Folders of your own images (--dataset DIR): their layouts (DIR/<class>/,
DIR/<group>/<class>/, optionally split into train/ and test/), decoding
PNG, JPEG, BMP and GIF files of any size and mode, the decoded copy kept in
the cache folder (--cache-dir), and the stratified --test-split. Every
mistake in a layout is one DatasetError line. Nothing here imports Keras."""

import dataclasses
import hashlib
import io
import os
import re
import warnings
from pathlib import Path

import numpy as np

from hks.core import console, flags, storage
from hks.data.data_types import DatasetError, Loaded, data_info

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
FOLDER_CACHE_VERSION = 1  # bump when the cached arrays change meaning
SPLIT_SEED = 0  # --test-split's draw: the same images are held out in every trial


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
                           f"{', '.join(flags.DATASETS)}")
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


def load_folder(name, size, config, notices=True, memo=None):
    """A folder of images at `size` px as Loaded(train, test, info), decoded
    once into the cache folder and redone when its files change; kept in
    `memo` (dataset.py's, for the life of the process) when given."""
    memo = {} if memo is None else memo
    root = Path(os.path.expanduser(name)).resolve()
    layout = scan_folder(root)
    signature = folder_signature(root, layout)
    key = (str(root), signature, size, getattr(config, "test_split", 0.2))
    if key in memo:
        return memo[key]
    cache = folder_cache_path(root, size, config.cache_dir)
    decoded = read_folder_cache(cache, signature)
    if decoded is not None:
        console.say_once(("cached", str(root)), f"Images in {root}: decoded copy {cache}", notices)
    else:
        decoded = decode_folder(root, layout, size, notices)
        write_folder_cache(cache, root, signature, decoded, notices)
    images, keep, skipped = decoded
    if skipped:
        console.say_once(("skipped", str(root)), f"Images in {root}: skipped {len(skipped)} that "
                 f"cannot be decoded: {', '.join(skipped[:10])}"
                 + (" ..." if len(skipped) > 10 else ""), notices)
    memo[key] = split_folder(layout, images, keep, root, size, config)
    return memo[key]


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
        console.say_once(("cache", str(root)), f"note: the cache folder {cache.parent} is inside "
                 f"{root}; the decoded copy is not kept (choose another --cache-dir)", notices)
        return
    images, keep, skipped = decoded
    buffer = io.BytesIO()
    np.savez(buffer, signature=np.array(signature), images=images, keep=keep,
             skipped=np.array(skipped, dtype=str))
    try:
        storage.atomic_write(cache, buffer.getvalue())
    except OSError as err:
        console.say_once(("cache", str(root)), f"note: could not keep the decoded copy of {root} "
                 f"({storage.os_error_text(err)}); it will be decoded again next time", notices)


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
