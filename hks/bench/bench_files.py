"""The file side of a trial, for benchmark.py: decoding a folder of photo-sized
images and loading it again from the cache (--dataset DIR), and keeping a
trained model (--keep-models: the seconds a save adds to a trial, the .keras
size on disk) with predict.py's speed on it, and the same model stored in
MongoDB's GridFS and copied back (--mongo)."""

import statistics
import time
import uuid

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


def run_model(model, work, mongo=None):
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
    report = {"params": int(model.count_params()), "save_seconds": statistics.median(seconds),
              "save_seconds_each": seconds, "file_mb": path.stat().st_size / 2**20,
              "predict_images": PREDICT_IMAGES,
              "predict_images_per_second": PREDICT_IMAGES / (time.perf_counter() - started)}
    if mongo:
        report["gridfs"] = run_gridfs(path, mongo, work / "driver")
    return report


def run_gridfs(path, url, folder):
    """Seconds to store the kept model at `path` in GridFS as a worker does
    (mongo_files.store_model, for a trial of an experiment of its own) and
    to copy it into `folder` as the driver does, and the megabytes GridFS
    held for it; the experiment is removed afterwards."""
    from hyperopt import JOB_STATE_DONE

    from hks.mongo import mongo_compat, mongo_files
    exp_key = f"hks_benchmark_{uuid.uuid4().hex[:8]}"
    handle = mongo_compat.open_jobs(url)
    try:
        handle.insert({"exp_key": exp_key, "tid": 0, "state": 0, "owner": None, "version": 0,
                       "result": {"status": "new"}, "misc": {"tid": 0}})
        job = handle.reserve("benchmark", exp_key=exp_key)
        started = time.perf_counter()
        mongo_files.store_model(handle, job, "benchmark", path)
        stored = time.perf_counter() - started
        handle.update(job, {"result": {"status": "ok", "fine_best_accuracy": 0.5,
                                       "model_name": path.stem}, "state": JOB_STATE_DONE})
        started = time.perf_counter()
        mongo_files.bring_models(handle, exp_key, folder, keep=1, prune=False)
        copied = time.perf_counter() - started
        _, size = mongo_files.stored_bytes(handle, exp_key)
        if (kept_models.model_path(folder, path.stem).read_bytes() != path.read_bytes()):
            raise SystemExit("benchmark error: the model copied from GridFS differs")
        mongo_files.unstore(handle, handle.jobs.find_one({"_id": job["_id"]}))
        handle.jobs.delete_one({"_id": job["_id"]})
    finally:
        handle.conn.close()
    return {"store_seconds": stored, "copy_seconds": copied, "stored_mb": size / 2**20}
