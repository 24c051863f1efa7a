"""--keep-models: which trials' models are kept (the K best, ties to the
older), a real local search that keeps exactly the 2 best of 4 and goes on
with the same bookkeeping when resumed, each kept model loading in a fresh
interpreter and scoring its result's own accuracy, and a save killed half
way leaving no partial .keras."""

import json
import os
import pickle
import socket
import subprocess
import sys
import time
import types

import pytest

from conftest import SUPPORT
from hks.trials import kept_models

TINY_SEARCH = str(SUPPORT / "tiny_search.py")


class FakeModel:
    """Stands in for a Keras model in the bookkeeping tests: save() writes bytes."""

    def __init__(self, fail=False):
        self.fail = fail

    def save(self, path):
        with open(path, "wb") as f:
            f.write(b"PK half a zip")
        if self.fail:
            raise KeyboardInterrupt  # a kill in the middle of the save


@pytest.fixture(autouse=True)
def no_cloning(monkeypatch):
    monkeypatch.setattr(kept_models, "for_inference", lambda model: model)


def finish(folder, accuracy, uid, earlier, keep=2):
    result = {"status": "ok", "model_name": f"model_{accuracy:.6f}_{uid}",
              "fine_best_accuracy": accuracy, "image_size": 32,
              "history": {"val_fine_outputs_accuracy": [accuracy / 2, accuracy]}}
    settings = types.SimpleNamespace(keep_models=keep, results_dir=str(folder))
    kept = kept_models.keep_if_among_best(FakeModel(), result, settings, list(earlier))
    earlier.append([accuracy / 2, accuracy])
    return kept


def names(folder):
    return sorted(path.stem for path, _ in kept_models.kept_models(folder))


def test_the_k_best_are_kept_ties_to_the_older_and_the_fallen_deleted(tmp_path):
    earlier = []
    assert finish(tmp_path, 0.5, "aaaaa", earlier) is not None  # fewer than K: kept
    finish(tmp_path, 0.3, "bbbbb", earlier)
    assert names(tmp_path) == ["model_0.300000_bbbbb", "model_0.500000_aaaaa"]
    assert finish(tmp_path, 0.3, "ccccc", earlier) is None  # a tie with the 2nd: the older stays
    assert finish(tmp_path, 0.2, "ddddd", earlier) is None
    finish(tmp_path, 0.9, "eeeee", earlier)  # pushes 0.3 out: its .keras and .json go
    assert names(tmp_path) == ["model_0.500000_aaaaa", "model_0.900000_eeeee"]
    assert sorted(p.name for p in kept_models.models_dir(tmp_path).iterdir()) == [
        "model_0.500000_aaaaa.json", "model_0.500000_aaaaa.keras",
        "model_0.900000_eeeee.json", "model_0.900000_eeeee.keras"]
    info = json.loads((kept_models.models_dir(tmp_path) / "model_0.900000_eeeee.json").read_text())
    assert info["result_file"] == "model_0.900000_eeeee.txt.json" and info["best_epoch"] == 2


def test_no_model_is_kept_for_a_failed_trial_or_with_keep_0(tmp_path):
    settings = types.SimpleNamespace(keep_models=2, results_dir=str(tmp_path))
    failed = {"status": "fail", "model_name": "failed_aaaaa"}
    assert kept_models.keep_if_among_best(FakeModel(), failed, settings, []) is None
    assert finish(tmp_path, 0.5, "aaaaa", [], keep=0) is None
    assert not kept_models.models_dir(tmp_path).exists()


def test_unreadable_earlier_trials_keep_the_model_to_judge_later(tmp_path):
    settings = types.SimpleNamespace(keep_models=1, results_dir=str(tmp_path))
    result = {"status": "ok", "model_name": "model_0.100000_aaaaa", "fine_best_accuracy": 0.1}
    assert kept_models.keep_if_among_best(FakeModel(), result, settings, lambda: None)
    assert names(tmp_path) == ["model_0.100000_aaaaa"]


def test_a_save_killed_half_way_leaves_no_partial_model(tmp_path):
    settings = types.SimpleNamespace(keep_models=2, results_dir=str(tmp_path))
    result = {"status": "ok", "model_name": "model_0.500000_aaaaa", "fine_best_accuracy": 0.5}
    with pytest.raises(KeyboardInterrupt):
        kept_models.keep_if_among_best(FakeModel(fail=True), result, settings, [])
    folder = kept_models.models_dir(tmp_path)
    assert not list(folder.glob("*.keras")) and kept_models.kept_models(tmp_path) == []
    # A kill -9 leaves the partial file under its hidden name; the next save
    # removes it: this host's when its process is gone, another host's (a
    # container sharing the folder) only once it is an hour old.
    host = socket.gethostname()
    dead = folder / f".model_0.4_bbbbb{kept_models.PARTIAL_MARK}{host}-999999999.keras"
    alive = folder / f".model_0.4_ddddd{kept_models.PARTIAL_MARK}{host}-{os.getpid()}.keras"
    elsewhere = folder / f".model_0.4_eeeee{kept_models.PARTIAL_MARK}other-host-1.keras"
    old = folder / f".model_0.4_fffff{kept_models.PARTIAL_MARK}other-host-2.keras"
    for path in (dead, alive, elsewhere, old):
        path.write_bytes(b"PK")
    os.utime(old, (time.time() - 2 * kept_models.STALE_PARTIAL_SECONDS,) * 2)
    finish(tmp_path, 0.6, "ccccc", [])
    assert names(tmp_path) == ["model_0.600000_ccccc"]
    assert [p.exists() for p in (dead, alive, elsewhere, old)] == [False, True, True, False]


def test_a_result_taken_back_takes_its_model_with_it(tmp_path):
    finish(tmp_path, 0.6, "ccccc", [])
    kept_models.forget(tmp_path / "model_0.600000_ccccc.txt.json")
    assert names(tmp_path) == [] and not list(kept_models.models_dir(tmp_path).iterdir())


# ------------------------------------------------ a real local search ----

def run_search(args, env, cwd):
    return subprocess.run([sys.executable, TINY_SEARCH, *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=600)


LOAD_AND_SCORE = """
import pickle, sys, tarfile
import keras, numpy as np
with tarfile.open(sys.argv[1]) as tar:
    test = pickle.loads(tar.extractfile("cifar-100-python/test").read(), encoding="bytes")
x = np.asarray(test[b"data"], np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
for path in sys.argv[2:]:
    fine = keras.saving.load_model(path).predict(x, verbose=0)[0]
    print("ACCURACY", path, float(np.mean(fine.argmax(1) == np.asarray(test[b"fine_labels"]))))
print("OURS", sorted(n for n in sys.modules
                    if n in ("utils", "neural_net", "kept_models", "flags") or n.startswith("hks")))
"""


def test_a_local_search_keeps_the_two_best_models_and_resumes(clean_env, tmp_path, cifar_dir):
    flags = ["--data-dir", str(cifar_dir), "--epochs", "2", "--no-plots", "--seed", "5",
             "--keep-models", "2", "--prune", "none"]

    def the_two_best():
        with open(tmp_path / "results.pkl", "rb") as f:
            trials = pickle.load(f).trials
        ranked = sorted(trials, key=lambda t: (t["result"]["loss"], t["tid"]))
        return sorted(t["result"]["model_name"] for t in ranked[:2]), trials

    done = run_search([*flags, "--max-evals", "4"], clean_env, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    best, trials = the_two_best()
    assert names(tmp_path / "results") == best
    assert "Kept the models of the 2 best trials in" in done.stdout

    # Each loads where nothing of the project is imported and scores its
    # result's accuracy (validated on the test split: the best epoch's).
    paths = [str(kept_models.model_path(tmp_path / "results", name)) for name in best]
    scored = subprocess.run([sys.executable, "-c", LOAD_AND_SCORE,
                             str(cifar_dir / "cifar-100-python.tar.gz"), *paths],
                            env=clean_env, cwd=tmp_path, capture_output=True, text=True,
                            timeout=300)
    assert scored.returncode == 0, scored.stderr[-3000:]
    accuracy = {t["result"]["model_name"]: t["result"]["fine_best_accuracy"] for t in trials}
    for line in scored.stdout.splitlines():
        if line.startswith("ACCURACY"):
            _, path, value = line.split()
            assert float(value) == pytest.approx(accuracy[os.path.basename(path)[:-6]], abs=1e-4)
    assert "OURS []" in scored.stdout

    # Resumed: the same bookkeeping, over all 6 trials.
    again = run_search([*flags, "--max-evals", "6"], clean_env, tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert names(tmp_path / "results") == the_two_best()[0]
