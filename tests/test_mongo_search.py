"""The search over MongoDB, end to end: a driver process and worker processes
talking TCP to MongoDB (the test server, or HKS_TEST_MONGO_URL), as on
several machines. Most tests use the cheap stand-in objectives of
tests/support/mongo_objectives.py; one trains real (tiny) models."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from hyperopt import JOB_STATE_DONE, JOB_STATE_ERROR, JOB_STATE_NEW, JOB_STATE_RUNNING

from conftest import ROOT, SUPPORT
from mongo_processes import finish, freeze, start_driver, start_worker, stop, wait_until


@pytest.fixture
def env(clean_env):
    """Workers import the stand-in objectives from tests/; heartbeats are quick."""
    return dict(clean_env, PYTHONPATH=str(SUPPORT), HKS_HEARTBEAT="0.3",
                HKS_POLL_INTERVAL="0.5")


@pytest.fixture
def experiment(tmp_path, mongo_url, env, cifar_dir):
    """start(objective, n_workers, *driver_flags) starts n worker processes
    (in tmp_path/w1, w2, ...; `worker_flags=` theirs) and a driver whose
    output goes to tmp_path/driver.log (`log=` another name; `env_changes=`
    changes to the environment), and returns (driver, workers, log). Whatever
    is still running at the end of the test is stopped."""
    started = []

    def start(objective, n_workers, *flags, log="driver.log", env_changes=None,
              worker_flags=()):
        run_env = dict(env, **(env_changes or {}))
        workers = [start_worker(mongo_url, run_env, tmp_path / f"w{i}", cifar_dir, *worker_flags)
                   for i in range(1, n_workers + 1)]
        log = tmp_path / log
        driver = start_driver(objective, mongo_url, run_env, log, *flags)
        started.extend(workers + [driver])
        return driver, workers, log
    yield start
    stop(started)


def jobs_of(mongo_db, state=None):
    query = {"exp_key": "exp"} if state is None else {"exp_key": "exp", "state": state}
    return list(mongo_db.jobs.find(query))


def result_files(folder):
    return sorted((folder / "results").glob("model_*.txt.json"))


@pytest.mark.slow
def test_two_workers_train_the_requested_trials(tmp_path, mongo_db, experiment):
    """The real path: real training in each worker's trial processes; both
    workers take a trial (one trains while the other takes the next; each
    leaves after one, --max-jobs 1); results in MongoDB and JSON files on
    each worker's disk."""
    driver, workers, log = experiment("train", 2, "--max-evals", "2", "--queue-len", "2",
                                      env_changes={"CODE_TESTING": "1", "DATASET_SIZE": "150"},
                                      worker_flags=("--max-jobs", "1"))
    output = finish(driver, log, timeout=400)
    assert driver.returncode == 0, output
    assert [w.wait(timeout=60) for w in workers] == [0, 0]
    for w in ("w1", "w2"):
        worker_log = (tmp_path / w / "worker.log").read_text()
        assert "Ran --max-jobs 1 trials: exiting." in worker_log
        # Said by its trial process: the worker itself does not import TensorFlow.
        assert worker_log.count("No GPU found: trials train on the CPU.") == 1, worker_log
    done = jobs_of(mongo_db, JOB_STATE_DONE)
    assert len(done) == 2 and len(jobs_of(mongo_db)) == 2, output
    assert all(job["result"]["status"] == "ok" for job in done), output
    assert {job["result"]["epochs"] for job in done} == {1}  # the driver's --epochs
    files = {w: result_files(tmp_path / w) for w in ("w1", "w2")}
    assert all(files.values()), f"each worker should have run a trial: {files}\n{output}"
    names = {json.loads(p.read_text())["model_name"] for fs in files.values() for p in fs}
    assert names == {job["result"]["model_name"] for job in done}
    assert output.count("Trial ") == 2 and "Done: experiment 'exp' has 2 trials finished" in output


@pytest.mark.slow
@pytest.mark.parametrize("rule, settings", [
    ("median", ["--prune", "median", "--prune-startup", "1", "--prune-warmup", "0"]),
    ("asha", ["--prune", "asha", "--asha-grace", "1", "--asha-reduction", "2"])])
def test_a_worker_prunes_with_the_curves_another_worker_produced(tmp_path, mongo_url, mongo_db,
                                                                 env, cifar_dir, rule, settings):
    """Worker 1 finishes two trials of perfect accuracy (stand-ins); worker
    2, started after it, trains real trials under the rule (median, or asha,
    the default), reads those curves from MongoDB and stops each one at
    the first epoch."""
    log = tmp_path / "driver.log"
    driver = start_driver("perfect_on_first_worker", mongo_url, env, log, "--max-evals", "4",
                          "--queue-len", "1", "--epochs", "3", *settings)
    first = start_worker(mongo_url, dict(env, HKS_TEST_PERFECT="1"), tmp_path / "w1", cifar_dir,
                         "--max-jobs", "2")
    second = None
    try:
        assert first.wait(timeout=120) == 0, (tmp_path / "w1" / "worker.log").read_text()
        second = start_worker(mongo_url, env, tmp_path / "w2", cifar_dir, "--max-jobs", "2")
        output = finish(driver, log, timeout=400)
    finally:
        stop([p for p in (driver, first, second) if p is not None])
    assert driver.returncode == 0, output
    done = sorted(jobs_of(mongo_db, JOB_STATE_DONE), key=lambda job: job["tid"])
    assert len(done) == 4, output
    perfect, pruned = done[:2], done[2:]
    assert [job["result"]["fine_best_accuracy"] for job in perfect] == [1.0, 1.0]
    for job in pruned:
        assert job["owner"] != perfect[0]["owner"]
        assert job["result"]["pruned"] is True and job["result"]["pruned_at_epoch"] == 1
        assert (job["result"]["pruned_by"], job["result"]["pruned_below"]) == (rule, 1.0)
        assert len(job["result"]["history"]["val_fine_outputs_accuracy"]) == 1
    files = result_files(tmp_path / "w2")
    assert len(files) == 2 and all(json.loads(p.read_text())["pruned"] for p in files)
    assert output.count(f"pruned at epoch 1 ({rule}: below 1.0000)") == 2, output
    assert f"Pruned 2 of 4 trials, saving 4 epochs (33% of 12), by {rule}." in output


@pytest.mark.slow
def test_workers_sharing_a_results_folder_keep_the_best_models_of_the_experiment(
        tmp_path, mongo_url, mongo_db, env, cifar_dir):
    """Two workers writing into one results folder (as docker compose has
    them) train 4 real trials with --keep-models 2: each decides from the
    experiment's finished trials in MongoDB, and the folder ends with the
    models of the 2 best, whichever worker ran them, each loadable."""
    from hks.trials import kept_models
    shared = tmp_path / "shared"
    log = tmp_path / "driver.log"
    driver = start_driver("perfect_on_first_worker", mongo_url, env, log, "--max-evals", "4",
                          "--queue-len", "2", "--keep-models", "2", "--prune", "none")
    workers = [start_worker(mongo_url, env, tmp_path / name, cifar_dir, "--results-dir",
                            str(shared), "--max-jobs", "2") for name in ("w1", "w2")]
    try:
        output = finish(driver, log, timeout=400)
    finally:
        stop(workers + [driver])
    assert driver.returncode == 0, output
    done = jobs_of(mongo_db, JOB_STATE_DONE)
    assert len(done) == 4 and len({job["owner"] for job in done}) == 2, output
    kept = kept_models.kept_models(shared)
    best = sorted((job["result"]["fine_best_accuracy"] for job in done), reverse=True)[:2]
    assert [info["fine_best_accuracy"] for _, info in kept] == pytest.approx(best)
    names = {job["result"]["model_name"] for job in done}
    assert {path.stem for path, _ in kept} <= names
    assert "Kept the models of the 2 best trials in results/models/" in output


def test_the_driver_ends_the_search_after_n_trials_without_a_new_best(mongo_db, experiment):
    """One worker whose first trial is its best: after 2 more trials the
    driver cancels the queued ones, waits for the running one, and ends; run
    again, it ends at once."""
    driver, workers, log = experiment("first_best", 1, "--max-evals", "30", "--queue-len", "2",
                                      "--stop-after-no-improvement", "2")
    output = finish(driver, log)
    assert driver.returncode == 0, output
    assert output.count("No new best fine accuracy in the last 2 trials") == 1, output
    done = sorted(jobs_of(mongo_db, JOB_STATE_DONE), key=lambda job: job["refresh_time"])
    losses = [job["result"]["loss"] for job in done]
    assert losses[0] == -0.9 and set(losses[1:]) == {-0.1}
    # The driver looks every second: trials of 0.3 s that finished or ran
    # before it saw the third still count; the 30 are far off.
    assert 3 <= len(done) < 10
    assert not jobs_of(mongo_db, JOB_STATE_NEW), "queued trials are cancelled"
    assert "Traceback" not in output
    stop(workers)
    again = experiment("quick", 0, "--max-evals", "30", "--stop-after-no-improvement", "2",
                       log="again.log")[0]
    output = finish(again, log.with_name("again.log"))
    assert again.returncode == 0 and "the search ends here" in output, output
    assert len(jobs_of(mongo_db, JOB_STATE_DONE)) == len(done)
    assert not jobs_of(mongo_db, JOB_STATE_NEW)  # nothing queued


@pytest.mark.slow
def test_a_worker_killed_mid_trial_has_its_trial_requeued(tmp_path, mongo_db, experiment):
    driver, workers, log = experiment("slow", 2, "--max-evals", "3", "--stale-after", "2",
                                      "--queue-len", "1")
    started = lambda: [p for w in ("w1", "w2")  # noqa: E731
                       for p in (tmp_path / w / "results").glob("started-*")]
    wait_until(started, 120, "a worker to start a trial")
    victim_pid = int(started()[0].name.split("-")[1])
    victim = next(w for w in workers if w.pid == victim_pid)
    killed_at = time.monotonic()
    victim.kill()  # kill -9 in the middle of the trial
    wait_until(lambda: any(j.get("requeue_count") for j in jobs_of(mongo_db)), 60,
               "the dead worker's trial to be requeued")
    requeued_after = time.monotonic() - killed_at
    output = finish(driver, log, timeout=120)
    assert driver.returncode == 0, output
    done = jobs_of(mongo_db, JOB_STATE_DONE)
    assert len(done) == 3 and len(jobs_of(mongo_db)) == 3, output  # exactly, none twice
    assert [j.get("requeue_count", 0) for j in done].count(1) == 1
    assert "put back in the queue (1/2)" in output
    # The killed trial wrote no file; the three finished ones one each.
    assert len(result_files(tmp_path / "w1")) + len(result_files(tmp_path / "w2")) == 3
    print(f"requeued {requeued_after:.1f} s after the worker was killed (--stale-after 2)")


@pytest.mark.slow
def test_a_worker_that_hangs_after_its_first_heartbeat_has_its_trial_requeued(
        tmp_path, mongo_db, experiment):
    """A worker frozen (SIGSTOP) after it has sent heartbeats: the driver
    matches the trial on the refresh_time it read back (milliseconds, as
    MongoDB stores them) and puts it back in the queue for the other worker."""
    driver, workers, log = experiment("slow", 2, "--max-evals", "2", "--stale-after", "3",
                                      "--queue-len", "1")
    started = lambda: [p for w in ("w1", "w2")  # noqa: E731
                       for p in (tmp_path / w / "results").glob("started-*")]
    wait_until(started, 120, "a worker to start a trial")
    victim = next(w for w in workers if w.pid == int(started()[0].name.split("-")[1]))
    wait_until(lambda: any(j.get("refresh_time") and j["state"] == 1 for j in jobs_of(mongo_db)),
               30, "a heartbeat of the running trial")
    time.sleep(1.0)  # a few more heartbeats (every 0.3 s)
    victim.send_signal(signal.SIGSTOP)
    try:
        wait_until(lambda: any(j.get("requeue_count") for j in jobs_of(mongo_db)), 60,
                   "the frozen worker's trial to be requeued")
        output = finish(driver, log, timeout=120)
    finally:
        victim.kill()
    assert driver.returncode == 0, output
    done = jobs_of(mongo_db, JOB_STATE_DONE)
    assert len(done) == 2 and len(jobs_of(mongo_db)) == 2, output
    [requeued] = [j for j in done if j.get("requeue_count")]
    assert requeued["owner"].split(":")[1] != str(victim.pid)  # finished by the other worker
    assert "put back in the queue (1/2)" in output


def pause(process, signum):
    """Send signum to a worker and its trial processes (a paused machine)."""
    import psutil
    for p in [psutil.Process(process.pid)] + psutil.Process(process.pid).children(recursive=True):
        p.send_signal(signum)


@pytest.mark.slow
def test_a_paused_worker_whose_trial_was_taken_away_writes_nothing(
        tmp_path, mongo_url, mongo_db, env, cifar_dir):
    """Worker 1 is paused mid-trial for longer than --stale-after; the trial
    goes back to the queue and worker 2 runs it. When worker 1 wakes, its
    heartbeat finds the trial gone: it stops training at the end of the epoch
    and writes no result file (one trial, one file), with one line and no
    traceback."""
    env = dict(env, CODE_TESTING="1", DATASET_SIZE="200")
    log = tmp_path / "driver.log"
    driver = start_driver("train", mongo_url, env, log, "--max-evals", "1", "--epochs", "60",
                          "--stale-after", "3", "--prune", "none")
    first = start_worker(mongo_url, env, tmp_path / "w1", cifar_dir)
    second = None
    try:
        wait_until(lambda: any(j["state"] == 1 and j.get("refresh_time")
                               for j in jobs_of(mongo_db)), 120, "worker 1 to train")
        time.sleep(3.0)  # into the epochs
        pause(first, signal.SIGSTOP)
        wait_until(lambda: any(j.get("requeue_count") for j in jobs_of(mongo_db)), 60,
                   "the paused worker's trial to be requeued")
        second = start_worker(mongo_url, env, tmp_path / "w2", cifar_dir, "--max-jobs", "1")
        output = finish(driver, log, timeout=300)
        pause(first, signal.SIGCONT)
        wait_until(lambda: "Trial given up here" in (tmp_path / "w1" / "worker.log").read_text(),
                   60, "worker 1 to give its trial up")
    finally:
        pause(first, signal.SIGCONT)
        stop([p for p in (driver, first, second) if p is not None])
    assert driver.returncode == 0, output
    [job] = jobs_of(mongo_db, JOB_STATE_DONE)
    assert job["owner"].split(":")[1] == str(second.pid)
    assert result_files(tmp_path / "w1") == [] and len(result_files(tmp_path / "w2")) == 1
    worker_log = (tmp_path / "w1" / "worker.log").read_text()
    assert "went back to the queue while the worker was silent" in worker_log
    assert "Traceback" not in worker_log


def test_a_result_file_written_before_the_trial_was_taken_away_is_removed(tmp_path):
    """The heartbeat can find a trial requeued after its objective wrote the
    result file and before hyperopt stores the result. The worker refuses the
    result and removes that file too, and the file's kept model: no result
    file of a trial another worker runs (the soak run found one left behind)."""
    import types
    from pathlib import Path
    from hyperopt import pyll
    from hks.core import flags
    import hyperopt_mongo_worker
    from hks.trials import kept_models
    import mongo_objectives
    from hks.mongo import mongo_search
    from hks.trials import trial_process

    def objective(hype_space, config, earlier=None):
        result = mongo_objectives.finish(hype_space, config, 0.0)  # writes its file
        kept_models.model_path(config.results_dir, result["model_name"]).parent.mkdir()
        kept_models.model_path(config.results_dir, result["model_name"]).write_text("model")
        trial_process.abandon()  # the heartbeat, a moment later
        return result

    handle = types.SimpleNamespace(in_trial={"_id": None})
    ctrl = types.SimpleNamespace(trials=types.SimpleNamespace(handle=handle),
                                 current_trial={"_id": 7, "tid": 6})
    settings = flags.TrialSettings(results_dir=str(tmp_path))
    try:
        with pytest.raises(mongo_search.TrialTakenAway, match="trial 7 went back"):
            mongo_search.worker_objective(objective, settings,
                                          pyll.as_apply({"conv_dropout_drop_proba": 0.5}), {},
                                          ctrl)
    finally:
        trial_process.abandoned.clear()
    written = Path(handle.last_result_file)
    assert written.exists() and written.parent == tmp_path
    hyperopt_mongo_worker.forget_result_file(handle)
    assert list(tmp_path.rglob("*.json")) == [] and list(tmp_path.rglob("*.keras")) == []
    assert handle.in_trial["_id"] is None


@pytest.mark.slow
def test_a_paused_mongodb_is_ridden_out_without_requeue_or_traceback(tmp_path, own_mongo, env,
                                                                     cifar_dir):
    """MongoDB paused (SIGSTOP) for 25 s, longer than a call may hang (20 s)
    and than --stale-after, in the middle of a trial: the trial trains on,
    its result is written once MongoDB is back, nothing is requeued, and the
    driver and the worker each say when it went and when it came back."""
    import pymongo
    server, url = own_mongo
    log = tmp_path / "driver.log"
    driver = start_driver("slow", url, env, log, "--max-evals", "2", "--queue-len", "1",
                          "--stale-after", "4", "--outage-grace", "120")
    worker = start_worker(url, env, tmp_path / "w1", cifar_dir)
    try:
        wait_until(lambda: list((tmp_path / "w1" / "results").glob("started-*")), 120,
                   "the worker to start a trial")
        time.sleep(1.0)
        freeze(server, 25)
        output = finish(driver, log, timeout=240)
    finally:
        stop([driver, worker])
    worker_log = (tmp_path / "w1" / "worker.log").read_text()
    assert driver.returncode == 0, output + worker_log
    client = pymongo.MongoClient(url)
    jobs = list(client.get_default_database().jobs.find({"exp_key": "exp"}))
    client.close()
    assert len(jobs) == 2 and all(job["state"] == JOB_STATE_DONE for job in jobs), output
    assert not any(job.get("requeue_count") for job in jobs), output
    assert "went away" in output and "MongoDB is back after" in output, output
    assert worker_log.count("MongoDB went away while writing") == 1, worker_log
    assert "done." in worker_log and len(result_files(tmp_path / "w1")) == 2
    assert "Traceback" not in output + worker_log


@pytest.mark.slow
def test_mongodb_gone_for_good_ends_driver_and_worker_after_the_grace(tmp_path, own_mongo, env,
                                                                      cifar_dir):
    server, url = own_mongo
    log = tmp_path / "driver.log"
    driver = start_driver("slow", url, env, log, "--max-evals", "3", "--queue-len", "1",
                          "--outage-grace", "8")
    worker = start_worker(url, env, tmp_path / "w1", cifar_dir, "--outage-grace", "8")
    try:
        wait_until(lambda: list((tmp_path / "w1" / "results").glob("started-*")), 120,
                   "the worker to start a trial")
        server.kill()
        output = finish(driver, log, timeout=90)
        worker.wait(timeout=90)
    finally:
        stop([driver, worker])
    worker_log = (tmp_path / "w1" / "worker.log").read_text()
    assert driver.returncode == 1 and worker.returncode == 1, output + worker_log
    for text in (output, worker_log):
        assert "(--outage-grace 8): giving up" in text, text
        assert "Traceback" not in text


@pytest.mark.slow
def test_a_stopped_worker_puts_its_trial_back_at_once(tmp_path, mongo_db, experiment):
    """Ctrl-C or SIGTERM (docker stop): hyperopt would mark the trial as an error."""
    driver, [worker], _ = experiment("slow", 1, "--max-evals", "1")
    wait_until(lambda: list((tmp_path / "w1" / "results").glob("started-*")), 120,
               "the worker to start the trial")
    worker.send_signal(signal.SIGTERM)
    worker.wait(timeout=30)
    [job] = jobs_of(mongo_db)
    driver.kill()
    assert worker.returncode == 130
    assert job["state"] == JOB_STATE_NEW and job["owner"] is None and "error" not in job
    assert "its trial is back in the queue" in (tmp_path / "w1" / "worker.log").read_text()


@pytest.mark.slow
def test_a_trial_that_kills_every_worker_is_given_up(mongo_db, experiment):
    driver, workers, log = experiment("poison", 2, "--max-evals", "1", "--stale-after", "1.5",
                                      "--max-requeues", "1")
    output = finish(driver, log, timeout=120)
    stop(workers)  # reaps them; one still alive would be interrupted (exit code 130)
    assert driver.returncode == 0, output
    [job] = jobs_of(mongo_db)
    assert job["state"] == JOB_STATE_ERROR and job["requeue_count"] == 1
    assert job["error"][0] == "WorkerLost" and "2 times" in job["error"][1]
    assert all(w.returncode == -signal.SIGKILL for w in workers)
    assert "given up" in output and "1 given up" in output


@pytest.mark.slow
def test_restarting_the_driver_resumes_the_experiment(tmp_path, mongo_db, experiment):
    driver, _, log = experiment("quick", 1, "--max-evals", "6", "--seed", "1")
    wait_until(lambda: len(jobs_of(mongo_db, JOB_STATE_DONE)) >= 2, 120, "2 trials")
    driver.send_signal(signal.SIGTERM)
    first = finish(driver, log, timeout=30)
    assert driver.returncode == 130, first
    assert "Run the same command again to resume" in first
    driver, _, log2 = experiment("quick", 0, "--max-evals", "6", "--seed", "1", log="driver2.log")
    second = finish(driver, log2, timeout=120)
    assert driver.returncode == 0, second
    resumed = next(line for line in second.splitlines() if line.startswith("Experiment"))
    assert "trials finished" in resumed  # it found the experiment
    jobs = jobs_of(mongo_db)
    assert len(jobs) == 6 and len({j["tid"] for j in jobs}) == 6
    assert all(j["state"] == JOB_STATE_DONE for j in jobs)
    spaces = [json.dumps(j["misc"]["vals"], sort_keys=True) for j in jobs]
    assert len(set(spaces)) == 6  # the resumed search did not redraw earlier trials
    assert len(result_files(tmp_path / "w1")) == 6


@pytest.mark.slow
def test_unreachable_mongodb_fails_fast_with_a_clear_message(tmp_path, clean_env):
    from conftest import free_port
    address = f"127.0.0.1:{free_port()}/db"
    runs = [subprocess.Popen([sys.executable, str(ROOT / script), "--mongo", address],
                             cwd=tmp_path, env=clean_env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
            for script in ("hyperopt_optimize.py", "hyperopt_mongo_worker.py")]
    started = time.monotonic()
    for run in runs:
        output, _ = run.communicate(timeout=60)
        assert run.returncode == 1, output
        assert f"cannot reach MongoDB at {address} within 5 s" in output
        assert "Traceback" not in output
    assert time.monotonic() - started < 30


def test_a_bad_mongo_address_is_refused_in_one_line(tmp_path, clean_env):
    for script in ("hyperopt_optimize.py", "hyperopt_mongo_worker.py"):
        run = subprocess.run([sys.executable, str(ROOT / script), "--mongo", "h:99999/db"],
                             cwd=tmp_path, env=clean_env, capture_output=True, text=True,
                             timeout=60)
        assert run.returncode == 2, run.stderr
        assert run.stderr.strip().endswith(
            "--mongo: 'h:99999/db': the port is not a number from 1 to 65535 (see --help)")
        assert run.stderr.count("\n") == 1  # one line, no traceback


def test_worker_needs_to_be_told_where_mongodb_is(tmp_path, clean_env):
    run = subprocess.run([sys.executable, str(ROOT / "hyperopt_mongo_worker.py")],
                         cwd=tmp_path, env=clean_env, capture_output=True, text=True)
    assert run.returncode == 2 and "no MongoDB given" in run.stderr
    assert not os.listdir(tmp_path)


def test_a_slow_worker_cannot_write_over_its_requeued_trial(mongo_url):
    """The driver took the trial away (no heartbeat); the worker was only
    slow and comes back with a result: hyperopt's write must fail, not land."""
    import datetime

    from hks.mongo import mongo_compat
    from hks.mongo import mongo_search
    from hks.mongo import mongo_settings
    from hyperopt.mongoexp import MongoCtrl, MongoTrials, OperationFailure

    jobs = mongo_compat.open_jobs(mongo_settings.mongo_url(mongo_url))
    jobs.insert({"exp_key": "exp", "tid": 0, "state": 0, "owner": None, "version": 0,
                 "result": {"status": "new"}, "misc": {"tid": 0}})
    job = jobs.reserve("slow-worker", exp_key="exp")
    config = mongo_settings.DriverSettings(exp_key="exp", stale_after=1.0, max_requeues=2)
    later = job["refresh_time"] + datetime.timedelta(seconds=5)
    [message] = mongo_search.requeue_stale_jobs(jobs.jobs, config, now=later)
    assert "put back in the queue (1/2)" in message
    ctrl = MongoCtrl(MongoTrials(jobs, exp_key="exp", refresh=False), current_trial=job,
                     read_only=False)
    with pytest.raises(OperationFailure):
        ctrl.checkpoint({"status": "ok", "loss": -0.5})
    stored = jobs.jobs.find_one({"tid": 0})
    assert stored["state"] == JOB_STATE_NEW and stored["result"] == {"status": "new"}
    assert stored["requeue_count"] == 1 and stored["owner"] is None


@pytest.mark.slow
def test_workers_train_a_folder_data_set_and_refuse_another(tmp_path, mongo_url, mongo_db, env,
                                                            cifar_dir):
    """The driver names a folder; a worker holding its copy elsewhere trains
    on it (--dataset, its own path); a worker of another data set refuses its
    trial with the reason in the trial, and stops."""
    import shutil
    from image_sets import write_folder
    write_folder(tmp_path / "driver_side" / "shapes", ["round/ball", "round/coin", "flat/card"],
                 per_class=6)
    shutil.copytree(tmp_path / "driver_side" / "shapes", tmp_path / "worker_side" / "shapes")
    log = tmp_path / "driver.log"
    driver = start_driver("train", mongo_url, env, log, "--max-evals", "2", "--queue-len", "1",
                          "--dataset", str(tmp_path / "driver_side" / "shapes"))
    wrong = start_worker(mongo_url, env, tmp_path / "w1", cifar_dir, "--dataset", "synthetic")
    right = None
    try:
        assert wrong.wait(timeout=120) == 1
        right = start_worker(mongo_url, env, tmp_path / "w2", cifar_dir, "--max-jobs", "1",
                             "--dataset", str(tmp_path / "worker_side" / "shapes"))
        output = finish(driver, log, timeout=400)
    finally:
        stop([p for p in (driver, wrong, right) if p is not None])
    assert driver.returncode == 0, output
    assert "trials finished, 0 running, 0 queued, 1 given up." in output
    wrong_log = (tmp_path / "w1" / "worker.log").read_text()
    assert "trains on synthetic (its --dataset) but the trial is of shapes" in wrong_log
    assert "This worker stops" in wrong_log and "Traceback" not in wrong_log
    [refused] = jobs_of(mongo_db, JOB_STATE_ERROR)
    assert "trains on synthetic" in refused["error"][1]
    done = jobs_of(mongo_db, JOB_STATE_DONE)
    assert len(done) == 1 and done[0]["result"]["status"] == "ok", output  # --max-evals counts both
    for job in done:
        result = job["result"]
        assert result["dataset"] == str(tmp_path / "worker_side" / "shapes")
        assert result["class_names"] == ["card", "ball", "coin"]  # grouped: flat, then round
        assert result["group_names"] == ["flat", "round"] and result["nb_groups"] == 2
    assert "(shapes, 3 classes in 2 groups, 32 px)" in output


def test_a_driver_refuses_an_experiment_of_another_data_set(tmp_path, mongo_db):
    from hks.core import flags
    from hks.mongo import mongo_search
    from image_sets import write_folder
    write_folder(tmp_path / "flowers", ["rose", "tulip"], per_class=1)
    folder = flags.SearchSettings(dataset=str(tmp_path / "flowers"))
    mongo_search.check_data_set(mongo_db, "exp", folder)
    mongo_search.check_data_set(mongo_db, "exp", folder)  # the same again: goes on
    assert mongo_db.hks_data_sets.find_one({"_id": "exp"})["identity"] == ["flowers", 32, 2, None]
    with pytest.raises(mongo_search.DataSetMismatch, match="experiment 'exp' holds trials run "
                       r"on flowers \(2 classes, 32 px\), not on cifar10 \(10 classes, 32 px\)"):
        mongo_search.check_data_set(mongo_db, "exp", flags.SearchSettings(dataset="cifar10"))
    mongo_search.check_data_set(mongo_db, "other", flags.SearchSettings(dataset="cifar10"))


def test_the_driver_closes_its_mongodb_client_at_each_outage(mongo_url, monkeypatch, capsys):
    """Three outages ridden out: each try's MongoDB client is closed before
    the next one opens its own, so a driver that lives through a flaky
    network does not keep a client, and its monitor threads, per outage."""
    import pymongo.errors
    from hks.core import flags
    from hks.mongo import mongo_compat
    from hks.mongo import mongo_search
    from hks.mongo import mongo_settings
    opened, closed = [], []
    real_open = mongo_compat.open_jobs

    def open_jobs(url):
        jobs = real_open(url)
        close = jobs.conn.close
        jobs.conn.close = lambda: (closed.append(jobs), close())
        opened.append(jobs)
        return jobs

    calls = []

    def run_experiment(trials, *args):
        calls.append(trials)
        if len(calls) <= 3:
            raise pymongo.errors.AutoReconnect("connection reset")
        return trials

    monkeypatch.setattr(mongo_compat, "open_jobs", open_jobs)
    monkeypatch.setattr(mongo_search, "run_experiment", run_experiment)
    monkeypatch.setattr(mongo_search, "wait_for_mongo", lambda url, grace: 0.0)
    address = mongo_url.replace("mongodb://", "mongo://", 1).split("?")[0] + "/jobs"
    driver = mongo_settings.DriverSettings(mongo=address, exp_key="exp")
    assert mongo_search.run_driver(flags.SearchSettings(), driver, None, {}, None) == 0
    tried = [trials.handle for trials in calls]
    assert len(tried) == 4 and closed[:3] == tried[:3] and tried[3] not in closed
    assert capsys.readouterr().out.count("MongoDB is back after") == 3


def test_a_driver_starved_of_cpu_still_requeues_a_dead_workers_trial(mongo_url, monkeypatch):
    """Two looks further apart than the stuck threshold: when no heartbeat
    got through meanwhile (MongoDB was paused), silence restarts from now and
    nothing is requeued; when a live worker's heartbeats did (the driver was
    only starved of CPU on a busy machine), the dead worker's trial goes
    back to the queue at once instead of waiting for a steady look."""
    from hks.core import flags
    from hks.mongo import mongo_compat
    from hks.mongo import mongo_search
    from hks.mongo import mongo_settings
    from hyperopt.mongoexp import MongoTrials
    monkeypatch.setattr(mongo_search, "STUCK_S", 1.0)
    jobs = mongo_compat.open_jobs(mongo_settings.mongo_url(mongo_url))
    for tid in (0, 1):
        jobs.insert({"exp_key": "exp", "tid": tid, "state": 0, "owner": None, "version": 0,
                     "spec": None, "result": {"status": "new"},
                     "misc": {"tid": tid, "cmd": None, "idxs": {}, "vals": {}}})
    dead, live = (jobs.reserve(owner, exp_key="exp") for owner in ("dead-worker", "live-worker"))
    config = mongo_settings.DriverSettings(exp_key="exp", stale_after=1.0, max_requeues=2)
    trials = MongoTrials(jobs, exp_key="exp")
    follow = mongo_search.follow_workers(flags.SearchSettings(), config, trials)

    def state(job):
        return jobs.jobs.find_one({"_id": job["_id"]})["state"]

    time.sleep(1.5)  # MongoDB paused: no heartbeat at all
    follow(trials)
    assert (state(dead), state(live)) == (JOB_STATE_RUNNING, JOB_STATE_RUNNING)
    time.sleep(1.5)  # the driver starved, the live worker beating
    now = jobs.db.command("hello")["localTime"]
    jobs.jobs.update_one({"_id": live["_id"]}, {"$set": {"refresh_time": now}})
    follow(trials)
    assert (state(dead), state(live)) == (JOB_STATE_NEW, JOB_STATE_RUNNING)


def test_a_driver_whose_queue_never_fills_still_requeues_a_dead_workers_trial(
        mongo_url, mongo_db, monkeypatch):
    """hyperopt's fmin looks at the workers (its early_stop_fn) only once its
    queue is full. While idle workers take every trial the moment it is
    queued (here hyperopt is told that the queue is always empty), the driver
    must still requeue a dead worker's trial as it queues, not once --max-evals
    trials are queued (the soak run saw such trials wait for minutes). Before
    the fix the requeue came exactly when the 300th trial was queued; here it
    comes within about 2 s, some 30 trials in on an idle machine. The trials
    are then all marked done, and --stop-after-no-improvement ends the driver."""
    import threading
    from hyperopt.mongoexp import MongoTrials
    from hks.core import flags
    import mongo_objectives
    from hks.mongo import mongo_search
    from hks.mongo import mongo_settings
    import tiny_search
    real_count = MongoTrials.count_by_state_unsynced
    monkeypatch.setattr(MongoTrials, "count_by_state_unsynced", lambda self, states: (
        0 if states == JOB_STATE_NEW else real_count(self, states)))
    max_evals, jobs, mine = 300, mongo_db.jobs, {"exp_key": "never_full"}
    search = flags.SearchSettings(max_evals=max_evals, epochs=1, seed=1, stop_after=3)
    driver = mongo_settings.DriverSettings(mongo=mongo_settings.mongo_url(mongo_url),
                                           exp_key="never_full", stale_after=1.0, queue_len=1)
    ran = threading.Thread(target=mongo_search.queue_and_follow, daemon=True, args=(
        search, driver, mongo_objectives.quick, tiny_search.TINY_SPACE, None))
    ran.start()
    try:
        wait_until(lambda: jobs.find_one(mine), 60, "a queued trial")
        first = jobs.find_one(dict(mine, tid=0))
        jobs.update_one({"_id": first["_id"]}, {
            "$set": {"state": JOB_STATE_RUNNING, "owner": "dead-worker:1:x"},
            "$currentDate": {"refresh_time": True, "book_time": True}})
        wait_until(lambda: jobs.find_one({"_id": first["_id"]}).get("requeue_count"), 120,
                   "the dead worker's trial to be requeued")
        queued_by_then = jobs.count_documents(mine)
    finally:  # every trial done, so that the driver ends
        result = mongo_objectives.fake_result({"conv_dropout_drop_proba": 0.5}, 0.0)
        while ran.is_alive():
            jobs.update_many(dict(mine, state={"$in": [JOB_STATE_NEW, JOB_STATE_RUNNING]}),
                             {"$set": {"state": JOB_STATE_DONE, "result": result,
                                       "owner": "test:1:x"},
                              "$currentDate": {"refresh_time": True, "book_time": True}})
            ran.join(0.2)
    assert queued_by_then < max_evals
