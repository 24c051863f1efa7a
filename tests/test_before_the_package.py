"""Searches made by the code before its machinery moved into hks/ go on
with the code after it: a results.pkl, and a MongoDB experiment whose
objective hyperopt pickled under the old module names (flags.TrialSettings,
mongo_search.worker_objective). Both were made by commit 67c17fb and are
kept in tests/fixtures/before-the-package/ (its README says how)."""

import pickle
import shutil
import subprocess
import sys

import pytest
from bson import json_util
from hyperopt import JOB_STATE_DONE, JOB_STATE_NEW

from conftest import ROOT, SUPPORT, hear_ctrl_c

BEFORE = ROOT / "tests" / "fixtures" / "before-the-package"


def test_the_old_names_load_the_moved_modules_only_when_asked(tmp_path):
    """In a fresh interpreter: `import flags` fails until allow_old_pickles(),
    then gives the very module of its new home."""
    code = ("import sys; sys.path.insert(0, sys.argv[1])\n"
            "try:\n    import flags\nexcept ImportError:\n    print('NOT YET')\n"
            "from hks import moved; moved.allow_old_pickles()\n"
            "import flags, mongo_search, hks.core.flags, hks.mongo.mongo_search\n"
            "print(flags is hks.core.flags, mongo_search is hks.mongo.mongo_search)\n")
    done = subprocess.run([sys.executable, "-c", code, str(ROOT)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert done.stdout.split("\n")[:2] == ["NOT YET", "True True"], done.stderr


@pytest.mark.slow
def test_a_results_pkl_of_before_the_package_resumes(tmp_path, clean_env, cifar_dir):
    shutil.copy(BEFORE / "results.pkl", tmp_path / "results.pkl")
    shutil.copytree(BEFORE / "results", tmp_path / "results")
    done = subprocess.run(
        [sys.executable, str(SUPPORT / "tiny_search.py"), "--data-dir", str(cifar_dir),
         "--max-evals", "3", "--epochs", "1", "--no-plots", "--keep-models", "0"],
        cwd=tmp_path, env=clean_env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "Resuming the search: 2 trials in results.pkl" in done.stdout
    with open(tmp_path / "results.pkl", "rb") as f:
        trials = pickle.load(f)
    assert len(trials.trials) == 3 and len(list((tmp_path / "results").glob("*.txt.json"))) == 3


def restore(db, dump):
    """The experiment's collections as the old code left them."""
    for name, docs in json_util.loads(dump.read_text()).items():
        if docs:
            db[name].insert_many(docs)


@pytest.mark.slow
def test_an_experiment_of_before_the_package_runs_on_new_workers_and_resumes(
        tmp_path, mongo_url, mongo_db, clean_env, cifar_dir):
    """Its 2 queued trials run on a new worker under the objective the old
    driver pickled; then the new driver resumes it to 5 trials."""
    restore(mongo_db, BEFORE / "experiment.json")
    assert mongo_db.jobs.count_documents({"state": JOB_STATE_NEW}) == 2
    env = dict(clean_env, HKS_HEARTBEAT="0.3", HKS_POLL_INTERVAL="0.5")

    def worker(name, jobs):
        (tmp_path / name).mkdir()
        return subprocess.run(
            [sys.executable, str(ROOT / "hyperopt_mongo_worker.py"), "--mongo", mongo_url,
             "--exp-key", "exp", "--data-dir", str(cifar_dir), "--max-jobs", str(jobs),
             "--reserve-timeout", "60"],
            cwd=tmp_path / name, env=env, capture_output=True, text=True, timeout=400)

    first = worker("w1", 2)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    done = list(mongo_db.jobs.find({"state": JOB_STATE_DONE}))
    assert len(done) == 4 and all(job["result"]["status"] == "ok" for job in done)
    assert len(list((tmp_path / "w1" / "results").glob("model_*.txt.json"))) == 2

    driver = subprocess.Popen(
        [sys.executable, str(SUPPORT / "mongo_driver.py"), "train", "--mongo", mongo_url,
         "--exp-key", "exp", "--epochs", "1", "--no-plots", "--max-evals", "5",
         "--queue-len", "1"],
        cwd=tmp_path, env=dict(env, CODE_TESTING="1", DATASET_SIZE="150"),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, preexec_fn=hear_ctrl_c)
    try:
        second = worker("w2", 1)
        output, _ = driver.communicate(timeout=120)
    finally:
        if driver.poll() is None:
            driver.kill()
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert driver.returncode == 0, output
    assert "4 trials finished" in output and "Done: experiment 'exp' has 5 trials finished" in output
    assert mongo_db.jobs.count_documents({"state": JOB_STATE_DONE}) == 5
