"""The file side of a trial, for benchmark.py: decoding a folder of photo-sized
images and loading it again from the cache (--dataset DIR), and keeping a
trained model (--keep-models: the seconds a save adds to a trial, the .keras
size on disk) with predict.py's speed on it."""

import statistics
import time

import numpy as np

from hks.core import flags
from hks.data import dataset
from hks.trials import kept_models

FOLDER_CLASSES = 10
FOLDER_SIDES = (160, 480)  # pixels a side of the folder's images, drawn in this range
SAVES = 3  # timed saves of each model: the median
PREDICT_IMAGES = 2048  # images predict.py is timed on


def write_image_folder(root, n_images, seed=0):
    """`n_images` files of FOLDER_SIDES pixels a side in FOLDER_CLASSES class
    folders, three JPEG for one PNG, smooth like photos (noise would not
    compress like one)."""
    from PIL import Image
    rng = np.random.default_rng(seed)
    for i in range(n_images):
        height, width = (int(v) for v in rng.integers(*FOLDER_SIDES, size=2, endpoint=True))
        colours = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
        image = Image.fromarray(colours).resize((width, height), Image.Resampling.BICUBIC)
        folder = root / f"class_{i % FOLDER_CLASSES}"
        folder.mkdir(parents=True, exist_ok=True)
        image.save(folder / f"{i:05d}.{'png' if i % 4 == 0 else 'jpg'}")


def run_folder(n_images, work):
    """Seconds to decode a folder of images and cache it (the first trial of
    a search on it), and to load it from that cache (every later one)."""
    root = work / "images"
    print(f"  writing {n_images} image files ...", flush=True)
    write_image_folder(root, n_images)
    config = flags.TrialSettings(dataset=str(root), cache_dir=str(work / "cache"))
    seconds = {}
    for key in ("decode_and_cache", "from_cache"):
        dataset.unload()
        started = time.perf_counter()
        dataset.load_dataset(config, notices=False)
        seconds[key] = time.perf_counter() - started
    dataset.unload()
    megabytes = sum(p.stat().st_size for p in root.rglob("*") if p.is_file()) / 2**20
    cache_mb = sum(p.stat().st_size for p in (work / "cache").iterdir()) / 2**20
    return {"images": n_images, "sides_px": list(FOLDER_SIDES), "files_mb": megabytes,
            "cache_mb": cache_mb, "seconds": seconds,
            "decoded_images_per_second": n_images / seconds["decode_and_cache"]}


def run_model(model, work):
    """Seconds to keep `model` (neural_net.build_model's; the median of SAVES saves,
    as a trial does: wrapped for inference, written, fsynced, renamed), its
    file's size, and predict.py's images/s on it (after one warm-up batch)."""
    info = {"model_name": "model_bench", "image_size": dataset.IMAGE_SIZE}
    path = kept_models.model_path(work, "model_bench")
    seconds = []
    for _ in range(SAVES):
        started = time.perf_counter()
        kept_models.save(model, info, path)
        seconds.append(time.perf_counter() - started)
    images = np.random.default_rng(0).integers(
        0, 256, size=(PREDICT_IMAGES, dataset.IMAGE_SIZE, dataset.IMAGE_SIZE, 3), dtype=np.uint8)
    names = ["fine_outputs", "coarse_outputs"]
    kept_models.predict(model, images[:kept_models.PREDICT_BATCH], kept_models.PREDICT_BATCH,
                        names)  # warm-up
    started = time.perf_counter()
    kept_models.predict(model, images, kept_models.PREDICT_BATCH, names)
    return {"params": int(model.count_params()), "save_seconds": statistics.median(seconds),
            "save_seconds_each": seconds, "file_mb": path.stat().st_size / 2**20,
            "predict_images": PREDICT_IMAGES,
            "predict_images_per_second": PREDICT_IMAGES / (time.perf_counter() - started)}
