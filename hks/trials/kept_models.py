"""The best trials' trained models, kept (--keep-models K): a trial that ends
among the K best of its search so far saves the model of its best epoch as
<results-dir>/models/<model_name>.keras, and what a user needs to use it
(class names, image size, data set, accuracy, hyperspace, result file) in
<model_name>.json beside it; a kept model that falls out of the K best is
deleted. "The K best" is read from the search's finished trials (locally
the Trials, over MongoDB the experiment's jobs), so a resumed search goes
on with the same bookkeeping. Also what predict.py and the analysis read
back. Nothing here imports Keras until a model is saved or loaded."""

import json
import math
import os
import socket
import sys
import time
import zipfile
from pathlib import Path

import numpy as np

from hks.core import storage

MODELS_DIR = "models"  # under --results-dir
MODEL_SUFFIX = ".keras"
INFO_SUFFIX = ".json"
PREDICT_BATCH = 256  # images per batch when a kept model predicts
PARTIAL_MARK = ".partial-"  # .<name>.partial-<host>-<pid>.keras: a save under way
STALE_PARTIAL_SECONDS = 3600  # another host's partial save this old is a dead one
INFO_KEYS = ("model_name", "fine_best_accuracy", "coarse_best_accuracy", "test_fine_accuracy",
             "test_coarse_accuracy", "best_epoch", "epochs", "pruned", "dataset", "image_size",
             "nb_classes", "nb_groups", "class_names", "group_names", "space", "keras_version",
             "keras_backend")


def models_dir(results_dir):
    return Path(results_dir) / MODELS_DIR


def model_path(results_dir, model_name):
    return models_dir(results_dir) / f"{model_name}{MODEL_SUFFIX}"


def info_path(model_file):
    return Path(model_file).with_suffix(INFO_SUFFIX)


def kept_models(results_dir):
    """The complete kept models of a results folder (their .keras and .json
    both there), best first: [(path, info)]."""
    kept = []
    for path in models_dir(results_dir).glob(f"*{MODEL_SUFFIX}"):
        info = read_info(path)
        if not path.name.startswith(".") and info is not None:
            kept.append((path, info))
    return sorted(kept, key=lambda pair: (-accuracy_of(pair[1]), pair[1].get("kept_at", 0)))


def read_info(model_file):
    """The JSON beside a kept model, or None when missing or unreadable."""
    try:
        info = json.loads(info_path(model_file).read_text())
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def accuracy_of(info):
    value = info.get("fine_best_accuracy")
    return float(value) if storage.is_number(value) else -math.inf


def model_info(result, results_dir):
    """What travels with a kept model: INFO_KEYS of its result, the result
    file's name, and how to call it."""
    info = {key: result.get(key) for key in INFO_KEYS if key in result}
    info["result_file"] = storage.result_path(result, results_dir).name
    curve = storage.val_fine_curve(result)
    if curve and np.isfinite(curve).any():
        info["best_epoch"] = int(np.nanargmax(curve)) + 1  # the weights kept
    heads = ["fine_outputs"] + (["coarse_outputs"] if result.get("nb_groups") else [])
    info["inputs"] = (f"uint8 RGB images, shape (N, {result.get('image_size')}, "
                      f"{result.get('image_size')}, 3): the rescaling is inside the model")
    info["outputs"] = {head: "class probabilities, in the order of "
                       + ("class_names" if head == "fine_outputs" else "group_names")
                       for head in heads}
    return storage.to_plain(info)


def earlier_bests(earlier):
    """The best validation fine accuracy of each earlier successful trial
    (`earlier`: pruning.Earlier items or curves, or a function returning
    them, as the stopping rule gets them), or None when they cannot be read."""
    trials = earlier() if callable(earlier) else earlier
    if trials is None:
        return None
    bests = (storage.best_of(getattr(t, "curve", t)) for t in trials)
    return [b for b in bests if b > -math.inf]


def keep_if_among_best(model, result, settings, earlier):
    """Save `model` (its best epoch's weights) when `result` is among the
    settings.keep_models best of the search so far (`earlier`: the other
    finished trials, as earlier_bests reads them; unreadable: saved, to be
    judged later), then delete the kept models that fell out, whether this
    one was kept or not: other workers' trials may have pushed this folder's
    models out meanwhile. Returns the kept model's path, or None."""
    keep = settings.keep_models
    mine = result.get("fine_best_accuracy")
    if not keep:
        return None
    others = earlier_bests(earlier)
    path = None
    if result.get("status") == "ok" and storage.is_number(mine):
        mine_counts = [mine]
        # K trials as good or better came first: a tie does not enter
        if others is None or sum(other >= mine for other in others) < keep:
            info = dict(model_info(result, settings.results_dir), kept_at=time.time())
            path = save(model, info, model_path(settings.results_dir, result["model_name"]))
    else:
        mine_counts = []
    if path is not None or others is not None:
        drop_fallen(settings.results_dir, keep, (others or []) + mine_counts)
    return path


def save(model, info, path):
    """Write `info` beside, then the model, atomically: a kill at any moment
    leaves no partial .keras under its own name (a half-written one keeps
    its .partial- name and is removed by the next save)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(path.parent)
    storage.atomic_write(info_path(path), json.dumps(info, indent=2) + "\n")
    partial = path.with_name(f".{path.stem}{PARTIAL_MARK}{socket.gethostname()}-{os.getpid()}"
                             f"{MODEL_SUFFIX}")
    try:
        for_inference(model).save(partial)
        with open(partial, "rb") as f:
            os.fsync(f.fileno())
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return path


class NotAModel(ValueError):
    """A file that cannot be loaded as a Keras model; the message says why."""


def load_model(path):
    """A .keras file (kept, or retrained) as a Keras model, uncompiled, or
    NotAModel in one line. Callers import neural_net first: it quiets
    TensorFlow's start-up, and this module does not import it."""
    if not zipfile.is_zipfile(path):
        raise NotAModel(f"{path} cannot be loaded as a Keras model (a .keras file is a zip "
                        "archive; this one is not: truncated, or something else)")
    import keras
    try:
        return keras.saving.load_model(path, compile=False)
    except Exception as err:  # a zip of something else, a newer Keras, a truncated file
        first_line = (str(err).splitlines() or [""])[0][:200]
        raise NotAModel(f"{path} cannot be loaded as a Keras model "
                        f"({type(err).__name__}: {first_line})") from None


def for_inference(model):
    """The model without its optimizer and training setup (a third of the
    file with Adam's two slots per weight): a new Model over the very same
    layers, nothing copied, for predict(); a user who trains it further
    compiles it first. (keras.models.clone_model would clone the compiled
    optimizer too.)"""
    import keras
    return keras.Model(inputs=model.input, outputs=model.output, name=model.name)


def remove_stale_partials(folder):
    """Remove the partial saves of processes that died: on this host (the
    process is gone), or, written by another host or container sharing the
    folder, not touched for STALE_PARTIAL_SECONDS."""
    for partial in folder.glob(f".*{PARTIAL_MARK}*{MODEL_SUFFIX}"):
        host, _, pid = partial.name.rsplit(PARTIAL_MARK, 1)[1][:-len(MODEL_SUFFIX)].rpartition("-")
        try:
            age = time.time() - partial.stat().st_mtime
        except OSError:
            continue
        if (host == socket.gethostname() and not pid_alive(pid)) or age > STALE_PARTIAL_SECONDS:
            partial.unlink(missing_ok=True)


def pid_alive(text):
    try:
        os.kill(int(text), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


def forget(result_file):
    """Delete the kept model of a result file that is being taken back (a
    MongoDB worker whose result the database refused)."""
    result_file = Path(result_file)
    name = result_file.name.removesuffix(storage.RESULT_SUFFIX)
    path = model_path(result_file.parent, name)
    path.unlink(missing_ok=True)
    info_path(path).unlink(missing_ok=True)


def drop_fallen(results_dir, keep, accuracies):
    """Delete the kept models (and their JSON) out of the `keep` best: those
    with `keep` better trials among `accuracies` (the search's finished
    trials), and any past the first `keep` of the folder (ties: the older
    stays)."""
    for rank, (path, info) in enumerate(kept_models(results_dir)):
        better = sum(accuracy > accuracy_of(info) for accuracy in accuracies)
        if rank >= keep or better >= keep:
            path.unlink(missing_ok=True)
            info_path(path).unlink(missing_ok=True)


def kept_names(results_dir):
    """The model names of a folder's kept models, for the leaderboard."""
    return {path.stem for path, _ in kept_models(results_dir)}


def summary(results_dir, keep):
    """The search's closing line about its kept models."""
    if not keep:
        return "No model kept (--keep-models 0)."
    kept = kept_models(results_dir)
    where = models_dir(results_dir)
    if not kept:
        return f"No model kept in {where}/ (no successful trial yet)."
    path, info = kept[0]
    return (f"Kept the models of the {len(kept)} best trials in {where}/, the best "
            f"{path.name} (fine accuracy {accuracy_of(info):.4f}). Use it: python3 "
            f"predict.py --results-dir {results_dir} IMAGE_OR_FOLDER")


def predict(model, images, batch_size, names):
    """{output name: probabilities} of `images`, in batches, with progress on stderr."""
    outputs = {name: [] for name in names}
    started, done = time.perf_counter(), 0
    for start in range(0, len(images), batch_size):
        batch = images[start:start + batch_size]
        got = model.predict_on_batch(batch)
        if not isinstance(got, dict):
            got = dict(zip(model.output_names, got if isinstance(got, (list, tuple)) else [got]))
        for name in names:
            outputs[name].append(np.asarray(got[name], dtype=float))
        done += len(batch)
        if len(images) > batch_size:
            rate = done / max(time.perf_counter() - started, 1e-9)
            print(f"  {done}/{len(images)} images ({rate:.0f} images/s)", file=sys.stderr,
                  flush=True)
    return {name: np.concatenate(parts) for name, parts in outputs.items()}
