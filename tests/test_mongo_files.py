"""A search over many machines, seen and used from one: every result and the
K best models reach the driver's folder through MongoDB and its GridFS
(hks/mongo/mongo_files.py), and analyze_results.py --mongo shows an
experiment from anywhere. The first tests drive the pieces against the
tests' MongoDB server; the slow ones run drivers and workers in folders
that share nothing but MongoDB, and kill, freeze and restart them."""

import datetime
import json
import os
import signal
import subprocess
import sys

import gridfs
import pytest
from hyperopt import JOB_STATE_DONE

import analyze_results
from conftest import ROOT
from hks.core import storage
from hks.mongo import mongo_compat, mongo_files, mongo_search, mongo_settings
from hks.trials import kept_models
from mongo_processes import finish, freeze, start_driver, start_worker, stop, wait_until


@pytest.fixture
def handle(mongo_url):
    """hyperopt's MongoJobs on a database of this test's own."""
    jobs = mongo_compat.open_jobs(mongo_settings.mongo_url(mongo_url))
    yield jobs
    jobs.conn.close()


def running_job(handle, tid, owner="w1:1:aaaa", exp_key="exp"):
    """A trial reserved by `owner`, as hyperopt's worker holds it."""
    handle.insert({"exp_key": exp_key, "tid": tid, "state": 0, "owner": None, "version": 0,
                   "result": {"status": "new"}, "misc": {"tid": tid}})
    return handle.reserve(owner, exp_key=exp_key)


def fake_model(folder, name, size=300_000):
    path = kept_models.model_path(folder, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(os.urandom(size))
    kept_models.info_path(path).write_text(json.dumps({"model_name": name}))
    return path


def result_of(accuracy, uid):
    return {"status": "ok", "loss": -accuracy, "fine_best_accuracy": accuracy,
            "model_name": storage.model_name_for(accuracy, uid), "space": {"a": 1.5},
            "history": {"val_fine_outputs_accuracy": [accuracy / 2, accuracy]}}


def finish_job(handle, job, result):
    handle.update(job, {"result": result})
    handle.update(job, {"state": JOB_STATE_DONE})


def gridfs_contents(handle):
    """(files, lone chunks): our stored files, and chunks without a file."""
    files = set(handle.db.fs.files.distinct("_id"))
    return files, set(handle.db.fs.chunks.distinct("files_id")) - files


# ------------------------------------------------------- the pieces ----

def test_a_stored_model_is_an_attachment_of_its_trial_as_hyperopt_keeps_them(handle, tmp_path):
    from hyperopt.mongoexp import MongoTrials
    job = running_job(handle, 0)
    path = fake_model(tmp_path, "model_0.500000_aaaaa")
    size = mongo_files.store_model(handle, job, job["owner"], path)
    assert size == path.stat().st_size + kept_models.info_path(path).stat().st_size
    stored = handle.jobs.find_one({"_id": job["_id"]})
    attachments = MongoTrials(handle, exp_key="exp", refresh=False).trial_attachments(stored)
    assert sorted(attachments) == ["kept_model.json", "kept_model.keras"]
    assert attachments["kept_model.keras"] == path.read_bytes()
    assert stored["version"] == job["version"]  # hyperopt's own writes still match
    # Stored again after an outage cut a try short: the trial lists the new
    # copy, and the old one is garbage.
    mongo_files.store_model(handle, job, job["owner"], path)
    finish_job(handle, job, result_of(0.5, "aaaaa"))
    assert mongo_files.collect_garbage(handle, "exp") == 2
    assert len(gridfs_contents(handle)[0]) == 2 and not gridfs_contents(handle)[1]


def test_a_trial_taken_away_stores_no_model(handle, tmp_path, monkeypatch):
    path = fake_model(tmp_path, "model_0.500000_aaaaa")
    job = running_job(handle, 0)
    handle.jobs.update_one({"_id": job["_id"]}, mongo_search.requeue_update())
    with pytest.raises(mongo_files.TakenAway):
        mongo_files.store_model(handle, job, job["owner"], path)
    assert gridfs_contents(handle) == (set(), set())
    # Taken away while its files were being written: they go again.
    job = running_job(handle, 1)
    put = handle.gfs.put

    def put_then_requeue(*args, **kwargs):
        handle.jobs.update_one({"_id": job["_id"]}, mongo_search.requeue_update())
        return put(*args, **kwargs)
    monkeypatch.setattr(handle.gfs, "put", put_then_requeue)
    with pytest.raises(mongo_files.TakenAway):
        mongo_files.store_model(handle, job, job["owner"], path)
    assert gridfs_contents(handle) == (set(), set())


def test_garbage_is_what_no_finished_trial_lists_and_no_live_worker_writes(handle, tmp_path):
    chunk = {"n": 0, "data": b"cut short"}
    dead = running_job(handle, 0, owner="dead:1:aaaa")
    alive = running_job(handle, 1, owner="alive:2:bbbb")
    other = running_job(handle, 0, owner="dead:1:aaaa", exp_key="other")
    for job in (dead, alive, other):
        fid = mongo_files.file_id(job["_id"], mongo_files.MODEL, job["owner"])
        handle.db.fs.chunks.insert_one(dict(chunk, files_id=fid))
    handle.jobs.update_one({"_id": dead["_id"]}, mongo_search.requeue_update())
    assert mongo_files.collect_garbage(handle, "exp") == 1
    left = {mongo_files.parse_file_id(fid)[0] for fid in gridfs_contents(handle)[1]}
    assert left == {alive["_id"], other["_id"]}  # being written; another experiment's


def test_the_driver_writes_each_result_file_as_the_worker_did(handle, tmp_path):
    job = running_job(handle, 0)
    result = result_of(0.5, "aaaaa")
    worker_file = storage.save_json_result(result, tmp_path / "worker")
    finish_job(handle, job, result)
    written = set()
    [path] = mongo_files.bring_results(handle.jobs, "exp", tmp_path / "driver", written)
    assert path.read_bytes() == worker_file.read_bytes() and written == {0}
    finished = handle.jobs.find_one({"_id": job["_id"]})["refresh_time"]
    assert abs(path.stat().st_mtime
               - finished.replace(tzinfo=datetime.timezone.utc).timestamp()) < 0.01
    os.utime(path, (1, 1))
    assert mongo_files.bring_results(handle.jobs, "exp", tmp_path / "driver", set()) == []
    assert path.stat().st_mtime == 1  # the same content: left alone
    path.write_text("{}")
    assert mongo_files.bring_results(handle.jobs, "exp", tmp_path / "driver", set()) == [path]
    assert path.read_bytes() == worker_file.read_bytes()


def test_the_driver_keeps_the_k_best_models_and_deletes_the_fallen(handle, tmp_path):
    for tid, accuracy in enumerate((0.3, 0.5, 0.4)):
        job = running_job(handle, tid)
        result = result_of(accuracy, f"u{tid}")
        model = fake_model(tmp_path / "worker", result["model_name"])
        mongo_files.store_model(handle, job, job["owner"], model)
        finish_job(handle, job, result)
    view = tmp_path / "laptop"
    copied, _ = mongo_files.bring_models(handle, "exp", view, keep=3, prune=False)
    assert len(copied) == 3 and len(gridfs_contents(handle)[0]) == 6  # nothing deleted
    driver = tmp_path / "driver"
    copied, _ = mongo_files.bring_models(handle, "exp", driver, keep=2)
    assert sorted(copied) == ["model_0.400000_u2", "model_0.500000_u1"]
    for path, info in kept_models.kept_models(driver):
        assert path.read_bytes() == (tmp_path / "worker" / "models" / path.name).read_bytes()
    assert len(gridfs_contents(handle)[0]) == 4
    assert not mongo_files.models_of(handle.jobs.find_one({"tid": 0}))
    # Copied once: a second look copies nothing; a local copy that differs is replaced.
    assert mongo_files.bring_models(handle, "exp", driver, keep=2) == ([], [])
    kept_models.model_path(driver, "model_0.500000_u1").write_bytes(b"changed")
    assert mongo_files.bring_models(handle, "exp", driver, keep=2)[0] == ["model_0.500000_u1"]
    assert mongo_files.bring_models(handle, "exp", driver, keep=1)[1] == ["model_0.400000_u2"]
    assert [p.stem for p, _ in kept_models.kept_models(driver)] == ["model_0.500000_u1"]


def test_the_live_view_shows_the_queue_and_the_running_trials(handle, mongo_url, tmp_path,
                                                              capsys):
    done = running_job(handle, 0)
    finish_job(handle, done, result_of(0.5, "aaaaa"))
    running = running_job(handle, 1, owner="box2:77:cccc")
    handle.jobs.update_one({"_id": running["_id"]}, {"$set": {"hks_progress": {
        "epoch": 3, "epochs": 100, "accuracy": 0.25, "best": 0.3}}})
    running_job(handle, 2)
    handle.jobs.update_one({"tid": 2}, mongo_search.requeue_update())
    assert analyze_results.main(["--mongo", mongo_url, "--exp-key", "exp",
                                 "--out-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert ("Experiment 'exp': 1 queued, 1 running, 1 finished (0 failed), 0 given up, "
            "0 cancelled.") in out
    row = next(line for line in out.splitlines() if "box2:77:cccc" in line).split()
    assert row[:4] == ["2", "box2:77:cccc", "3/100", "0.3000"] and row[-2:] == ["s", "ago"]
    assert "model_0.500000_aaaaa" in out and (tmp_path / analyze_results.CSV_NAME).is_file()


def test_an_unknown_experiment_or_an_unreachable_mongodb_is_one_line_and_exit_2(
        handle, mongo_url, tmp_path):
    from conftest import free_port
    running_job(handle, 0)
    for address, expected in ((mongo_url, "no experiment 'nope' in MongoDB at"),
                              (f"127.0.0.1:{free_port()}/db", "cannot reach MongoDB at")):
        done = subprocess.run([sys.executable, str(ROOT / "analyze_results.py"), "--mongo",
                               address, "--exp-key", "nope"], cwd=tmp_path,
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 2, done.stderr
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and expected in lines[0], done.stderr
        assert address != mongo_url or "(it holds 'exp'): check --exp-key" in lines[0]


# ------------------------------------------- drivers and workers ----

@pytest.fixture
def env(clean_env):
    from conftest import SUPPORT
    return dict(clean_env, PYTHONPATH=str(SUPPORT), HKS_HEARTBEAT="0.3",
                HKS_POLL_INTERVAL="0.5")


def files_of(folder):
    """{name: bytes} of a results folder's result files and kept models."""
    found = {}
    for path in list(folder.glob("*.txt.json")) + list((folder / "models").glob("*")):
        found[str(path.relative_to(folder))] = path.read_bytes()
    return found


LOAD = """
import sys, keras, numpy as np
for path in sys.argv[1:]:
    model = keras.saving.load_model(path)
    print("LOADED", path, model.count_params())
print("OURS", sorted(n for n in sys.modules if n.startswith("hks") or n in ("neural_net", "utils")))
"""


@pytest.mark.slow
def test_three_folders_that_share_only_mongodb_end_with_every_result_and_the_two_best_models(
        tmp_path, mongo_url, mongo_db, env, cifar_dir):
    """A driver and two workers, each in its own folder with its own results
    folder, real (tiny) training, --keep-models 2: the driver's folder ends
    with every trial's JSON and the 2 best models, byte for byte what the
    workers wrote, each loading without the project; GridFS holds the models
    of 2 trials; each worker keeps at most 2; a fourth folder copies it all
    with analyze_results.py --mongo --results-dir."""
    log = tmp_path / "driver" / "driver.log"
    log.parent.mkdir()
    driver = start_driver("train", mongo_url, dict(env, CODE_TESTING="1", DATASET_SIZE="150"),
                          log, "--max-evals", "4", "--queue-len", "2", "--keep-models", "2",
                          "--prune", "none", "--epochs", "2", "--results-dir", "results")
    workers = [start_worker(mongo_url, env, tmp_path / name, cifar_dir, "--max-jobs", "3")
               for name in ("w1", "w2")]
    try:
        output = finish(driver, log, timeout=500)
    finally:
        stop(workers + [driver])
    assert driver.returncode == 0, output
    done = list(mongo_db.jobs.find({"exp_key": "exp", "state": JOB_STATE_DONE}))
    assert len(done) == 4, output
    mine = tmp_path / "driver" / "results"
    theirs = {**files_of(tmp_path / "w1" / "results"), **files_of(tmp_path / "w2" / "results")}
    results = sorted(p.name for p in mine.glob("*.txt.json"))
    assert results == sorted(f"{job['result']['model_name']}.txt.json" for job in done)
    for name in results:
        assert (mine / name).read_bytes() == theirs[name]
    best = sorted(done, key=lambda job: -job["result"]["fine_best_accuracy"])[:2]
    models = sorted(p.name for p in (mine / "models").iterdir())
    assert models == sorted(f"{job['result']['model_name']}{suffix}" for job in best
                            for suffix in (".json", ".keras")), output
    for name in models:
        assert (mine / "models" / name).read_bytes() == theirs[f"models/{name}"]
    for worker in ("w1", "w2"):
        assert len(list((tmp_path / worker / "results" / "models").glob("*.keras"))) <= 2
    assert len({fid for fid in mongo_db.fs.files.distinct("_id") if str(fid).startswith(
        mongo_files.ID_PREFIX)}) == 4  # 2 trials: a model and its JSON each
    assert not set(mongo_db.fs.chunks.distinct("files_id")) - set(mongo_db.fs.files.distinct("_id"))
    loaded = subprocess.run([sys.executable, "-c", LOAD,
                             *map(str, (mine / "models").glob("*.keras"))],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert loaded.stdout.count("LOADED") == 2 and "OURS []" in loaded.stdout, loaded.stderr
    assert "Every finished trial's JSON is in results/." in output
    assert "Kept the models of the 2 best trials in results/models/" in output
    laptop = tmp_path / "laptop"
    laptop.mkdir()
    view = subprocess.run([sys.executable, str(ROOT / "analyze_results.py"), "--mongo", mongo_url,
                           "--exp-key", "exp", "--results-dir", "copy"], cwd=laptop, env=env,
                          capture_output=True, text=True, timeout=300)
    assert view.returncode == 0, view.stderr
    assert "Copied 4 result files and 2 models into copy/." in view.stdout
    assert files_of(laptop / "copy") == files_of(mine)
    assert "0 queued, 0 running, 4 finished (0 failed)" in view.stdout


@pytest.mark.slow
def test_the_live_view_shows_a_trial_training_with_its_epoch(tmp_path, mongo_url, env,
                                                             cifar_dir):
    log = tmp_path / "driver.log"
    driver = start_driver("train", mongo_url, dict(env, CODE_TESTING="1", DATASET_SIZE="150"),
                          log, "--max-evals", "1", "--epochs", "400", "--prune", "none",
                          "--keep-models", "0")
    worker = start_worker(mongo_url, env, tmp_path / "w1", cifar_dir)
    seen = []

    def a_row_with_its_epoch():
        view = subprocess.run([sys.executable, str(ROOT / "analyze_results.py"), "--mongo",
                               mongo_url, "--exp-key", "exp", "--out-dir", str(tmp_path)],
                              env=env, capture_output=True, text=True, timeout=120)
        seen.append(view.stdout)
        return "1 running" in view.stdout and "/400 " in view.stdout
    try:
        wait_until(a_row_with_its_epoch, 300, "a running trial with its epoch")
    finally:
        stop([driver, worker])
    row = next(line for line in seen[-1].splitlines() if "/400 " in line).split()
    assert row[0] == "1" and 1 <= int(row[2].split("/")[0]) < 400
    assert 0 <= float(row[3]) <= 1 and float(row[4]) < 10, seen[-1]


def big_model_env(env):
    """Stand-in models of BIG_MODEL_MB: a store that lasts long enough (a few
    tenths of a second) for a test polling every STORING_POLL_S to act in it."""
    return dict(env, HKS_TEST_MODEL_MB=str(BIG_MODEL_MB))


BIG_MODEL_MB = 40
STORING_POLL_S = 0.005


def storing(mongo_db):
    """Whether a chunk of a kept model is in GridFS (one read, no count: it
    is polled while the chunks are written)."""
    ours = {"$regex": f"^{mongo_files.ID_PREFIX}:"}
    return mongo_db.fs.chunks.find_one({"files_id": ours}, projection=["_id"]) is not None


@pytest.mark.slow
def test_a_worker_killed_while_it_stores_a_model_leaves_no_chunks(tmp_path, mongo_url, mongo_db,
                                                                  env, cifar_dir):
    """Killed (kill -9) with part of its model's chunks in GridFS: once the
    driver has looked again (its trial requeued), the chunks are gone; the
    trial is run again by the other worker, whose model is stored whole."""
    big = big_model_env(env)
    log = tmp_path / "driver.log"
    driver = start_driver("fake_model", mongo_url, big, log, "--max-evals", "1",
                          "--stale-after", "3", "--keep-models", "2")
    victim = start_worker(mongo_url, big, tmp_path / "w1", cifar_dir)
    other = None
    try:
        wait_until(lambda: storing(mongo_db), 120, "a model being stored",
                   every=STORING_POLL_S)
        victim.send_signal(signal.SIGKILL)
        victim.wait(timeout=10)
        model_files = {"_id": {"$regex": f"^{mongo_files.ID_PREFIX}:.*:{mongo_files.MODEL}:"}}
        assert storing(mongo_db), "killed before it stored anything"
        assert mongo_db.fs.files.count_documents(model_files) == 0, "killed after its store"
        other = start_worker(mongo_url, big, tmp_path / "w2", cifar_dir)
        output = finish(driver, log, timeout=300)
    finally:
        stop([p for p in (driver, victim, other) if p is not None])
    assert driver.returncode == 0, output
    [job] = mongo_db.jobs.find({"exp_key": "exp"})
    assert job["state"] == JOB_STATE_DONE and job["requeue_count"] == 1, output
    assert "model files in GridFS that no trial holds" in output, output
    files = set(mongo_db.fs.files.distinct("_id"))
    assert {a[1] for a in job["_attachments"]} <= files
    assert set(mongo_db.fs.chunks.distinct("files_id")) <= files  # no lone chunk left
    assert len(list((tmp_path / "results" / "models").glob("*.keras"))) == 1


@pytest.mark.slow
def test_mongodb_frozen_while_a_model_is_stored_loses_neither_result_nor_model(
        tmp_path, own_mongo, env, cifar_dir):
    """MongoDB paused (SIGSTOP) for 25 s while a worker writes a model's
    chunks, longer than a call may hang (20 s): the worker stores the model
    again once MongoDB is back, then the result; the driver copies it."""
    import pymongo
    server, url = own_mongo
    client = pymongo.MongoClient(url)
    db = client.get_default_database()
    big = big_model_env(env)
    log = tmp_path / "driver.log"
    driver = start_driver("fake_model", url, big, log, "--max-evals", "1", "--stale-after", "4",
                          "--outage-grace", "120", "--keep-models", "2")
    worker = start_worker(url, big, tmp_path / "w1", cifar_dir, "--outage-grace", "120")
    try:
        wait_until(lambda: storing(db), 120, "a model being stored",
                   every=STORING_POLL_S)
        freeze(server, 25)
        output = finish(driver, log, timeout=300)
    finally:
        stop([driver, worker])
    worker_log = (tmp_path / "w1" / "worker.log").read_text()
    assert driver.returncode == 0, output + worker_log
    [job] = db.jobs.find({"exp_key": "exp"})
    assert job["state"] == JOB_STATE_DONE and not job.get("requeue_count"), output
    assert "MongoDB went away while storing a kept model" in worker_log, worker_log
    assert "Stored the model of" in worker_log
    files = set(db.fs.files.distinct("_id"))
    assert {a[1] for a in job["_attachments"]} == files - {f for f in files if not str(
        f).startswith(mongo_files.ID_PREFIX)}
    assert set(db.fs.chunks.distinct("files_id")) <= files
    [model] = (tmp_path / "results" / "models").glob("*.keras")
    assert model.read_bytes() == (tmp_path / "w1" / "results" / "models" / model.name).read_bytes()
    client.close()


@pytest.mark.slow
def test_a_driver_killed_and_started_again_ends_with_the_folder_of_one_that_never_stopped(
        tmp_path, mongo_url, mongo_db, env, cifar_dir):
    """kill -9 of the driver after two of six trials: started again, it
    writes the files of the trials that finished meanwhile, and its folder
    ends holding exactly every result and the 2 best models."""
    log = tmp_path / "driver.log"
    flags = ("--max-evals", "6", "--queue-len", "2", "--keep-models", "2")
    slow = dict(env, HKS_TEST_MODEL_PAUSE="1.5")
    driver = start_driver("fake_model", mongo_url, slow, log, *flags)
    workers = [start_worker(mongo_url, slow, tmp_path / name, cifar_dir) for name in ("w1", "w2")]
    try:
        wait_until(lambda: len(list((tmp_path / "results").glob("*.txt.json"))) >= 2, 120,
                   "two results in the driver's folder")
        driver.send_signal(signal.SIGKILL)
        driver.wait(timeout=10)
        wait_until(lambda: mongo_db.jobs.count_documents({"state": JOB_STATE_DONE}) >= 4, 120,
                   "two more trials while no driver runs")
        again = start_driver("fake_model", mongo_url, slow, tmp_path / "again.log", *flags)
        output = finish(again, tmp_path / "again.log", timeout=300)
    finally:
        stop(workers + [driver])
    assert again.returncode == 0, output
    done = list(mongo_db.jobs.find({"exp_key": "exp", "state": JOB_STATE_DONE}))
    assert len(done) == 6
    expected = {f"{job['result']['model_name']}.txt.json":
                (storage.result_to_json(job["result"]) + "\n").encode() for job in done}
    best = sorted(done, key=lambda job: -job["result"]["fine_best_accuracy"])[:2]
    for job in best:
        for name, fid in job["_attachments"]:
            suffix = ".keras" if name == mongo_files.MODEL else ".json"
            expected[f"models/{job['result']['model_name']}{suffix}"] = \
                gridfs.GridFS(mongo_db).get(fid).read()
    assert files_of(tmp_path / "results") == expected
    stored = [job for job in mongo_db.jobs.find({"exp_key": "exp"}) if mongo_files.models_of(job)]
    assert sorted(job["tid"] for job in stored) == sorted(job["tid"] for job in best)
