"""How the search's files are written and read back: atomic writes (a
crash leaves the old file or the new one, never a mix), the JSON result of
each trial, its name, and the best of them. Imports nothing else of the
project and no Keras."""

import glob
import hashlib
import json
import math
import os
import pickle
import tempfile
from pathlib import Path

import numpy as np

from hks.core.flags import RESULTS_DIR

RESULT_SUFFIX = ".txt.json"
FAILED_PREFIX = "failed_"  # sorts before "model_", so the best result stays last
ACCURACY_DECIMALS = 6
FILE_MODE = 0o644  # results and results.pkl: readable by others, like any file
TENSORBOARD_DIR = "TensorBoard"  # per-epoch logs and HParams runs, in the trial's folder
WEIGHTS_DIR = "weights"  # best weights of a retrained model: <id>.weights.h5 and <id>.space.json
WEIGHTS_SUFFIX = ".weights.h5"
SPACE_SUFFIX = ".space.json"
DATASET_SUFFIX = ".dataset.json"  # beside the weights: the data set's image size and heads


# --- files that must never be half-written ---

def os_error_text(err):
    """An OSError as one line that says what is in the way and what to do."""
    if not isinstance(err, OSError):
        return str(err)
    name = err.filename if err.filename is not None else "a file"
    if isinstance(err, (FileExistsError, NotADirectoryError)):
        return (f"{name}: a file is in the way where a folder is needed (move it, or "
                "choose another path)")
    if isinstance(err, IsADirectoryError):
        return f"{name} is a folder where a file is needed (choose a file name)"
    if isinstance(err, PermissionError):
        return f"{name}: permission denied (choose a place you can write to)"
    return f"{name}: {err.strerror or err}"


def atomic_write(path, data):
    """Write bytes or text to `path` so that a crash at any moment leaves either
    the old file or the new one, never a mix: temporary file in the same
    folder, flush, fsync, rename over the old one, fsync the folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        data = data.encode("utf-8")
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, FILE_MODE)  # mkstemp's files are private (0600)
        with os.fdopen(fd, "wb") as tmp:
            tmp.write(data)
            tmp.flush()
            os.fsync(tmp.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def sha256_of(path):
    """A file's SHA-256, read a megabyte at a time (archives, kept models)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def atomic_pickle(obj, path):
    atomic_write(path, pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL))


# --- results as plain JSON ---

def to_plain(value):
    """Turn numpy scalars/arrays and tuples into plain Python, recursively, so
    the result encodes as JSON and as BSON. Non-finite floats become None."""
    if isinstance(value, dict):
        return {str(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [to_plain(v) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return value if math.isfinite(value) else None
    return value


def model_name_for(fine_accuracy, uid):
    """`model_<accuracy>_<id>`: fixed decimals, so sorting names sorts accuracies."""
    return f"model_{fine_accuracy:.{ACCURACY_DECIMALS}f}_{uid}"


def model_id(model_name):
    """The random id that ends a model's name (`model_<accuracy>_<id>`,
    `failed_<id>`); its weights and TensorBoard logs are named after it."""
    return str(model_name).removesuffix(RESULT_SUFFIX).rsplit("_", 1)[-1]


def result_path(result, results_dir=RESULTS_DIR):
    return Path(results_dir) / f"{result['model_name']}{RESULT_SUFFIX}"


def result_to_json(result):
    return json.dumps(to_plain(result), indent=4, sort_keys=True)


def print_json(result):
    print(result_to_json(result))


def save_json_result(result, results_dir=RESULTS_DIR):
    """Write one trial's result to `<results_dir>/<model_name>.txt.json`."""
    path = result_path(result, results_dir)
    atomic_write(path, result_to_json(result) + "\n")
    return path


def load_json_result(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def result_files(results_dir=RESULTS_DIR):
    return sorted(glob.glob(os.path.join(results_dir, "*" + RESULT_SUFFIX)))


def load_results(results_dir=RESULTS_DIR):
    """Every readable result dict in `results_dir` (unreadable files skipped)."""
    results = []
    for path in result_files(results_dir):
        try:
            result = load_json_result(path)
        except (OSError, ValueError):
            continue
        if isinstance(result, dict):
            results.append(result)
    return results


def load_best_result(results_dir=RESULTS_DIR):
    """The successful result with the lowest loss (highest fine accuracy), or
    None when the folder holds none. Unreadable files are skipped."""
    best = None
    for result in load_results(results_dir):
        loss = result.get("loss")
        if result.get("status") == "ok" and isinstance(loss, (int, float)) and (
                best is None or loss < best["loss"]):
            best = result
    return best


def load_best_hyperspace(results_dir=RESULTS_DIR):
    """The `space` of the best trial in `results_dir`, or None if there is none."""
    best = load_best_result(results_dir)
    return None if best is None else best["space"]


def best_trial(trials):
    """(trial id, result) of the best successful trial of hyperopt Trials, or None."""
    ok = [(t["tid"], t["result"]) for t in trials.trials if t["result"].get("status") == "ok"]
    return min(ok, key=lambda pair: pair[1]["loss"], default=None)


# Validation fine accuracy per epoch: Keras 3 name (this project), Keras 2 (the original's).
VAL_FINE_KEYS = ["val_fine_outputs_accuracy", "val_fine_outputs_acc"]


def is_number(value):
    """A finite int or float, and not a bool."""
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value))


def val_fine_curve(result):
    """A result's validation fine accuracy per epoch (NaN where not a number),
    under its Keras 3 or Keras 2 name, or []."""
    history = result.get("history") or {}
    for key in VAL_FINE_KEYS:
        if isinstance(history.get(key), list):
            return [v if is_number(v) else float("nan") for v in history[key]]
    return []


def best_of(curve):
    """The best value of a learning curve (NaN left out), or -inf when it
    holds none: what the stopping rules' replay and the kept models compare."""
    values = np.asarray(curve, dtype=float)
    return float(np.nanmax(values)) if np.isfinite(values).any() else -math.inf
