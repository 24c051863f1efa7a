"""A worker of the search over MongoDB: takes the queued trials of an
experiment, trains each one, writes its result back to MongoDB and its JSON
file to this machine's results folder.

Start any number, on any machines that reach the database, against a driver
started with `python3 hyperopt_optimize.py --mongo HOST:PORT/DB`:

    python3 hyperopt_mongo_worker.py --mongo HOST:PORT/DB --exp-key NAME

It is hyperopt's `hyperopt-mongo-worker` (same options, hyperopt's own
MongoWorker runs each job) with pymongo 4 support (mongo_compat), a heartbeat
that lets the driver requeue the trial of a worker that died, and this
machine's data and results folders, which it hands to each trial (see
mongo_search.worker_objective). How a trial is trained (epochs, data set
size, ...) comes from the driver, inside the experiment.
"""

import argparse
import dataclasses
import functools
import os
import signal
import socket
import sys
import threading
import time
import uuid
from pathlib import Path

# Workers unpickle the driver's objective, hyperopt_optimize.optimize_cnn: this
# folder must be importable from wherever the worker is started.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from hyperopt import JOB_STATE_ERROR, JOB_STATE_RUNNING  # noqa: E402
from hyperopt.mongoexp import MongoWorker, ReserveTimeout  # noqa: E402

from hks import moved  # noqa: E402
from hks.core import console, flags  # noqa: E402
from hks.data import dataset, image_folders  # noqa: E402
from hks.mongo import (mongo_compat, mongo_curves, mongo_files, mongo_search,  # noqa: E402
                       mongo_settings)
from hks.trials import kept_models, trial_process  # noqa: E402


def build_parser():
    parser = flags.OneLineErrorParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="A flag wins over its environment variable.")
    flags.add_options(parser, mongo_settings.WorkerSettings)
    return parser


def machine_settings(config):
    """This machine's folders, made absolute: hyperopt runs each trial in its
    work folder, and the trial's own process must find them from there."""
    def absolute(path):
        return str(Path(os.path.expanduser(path)).resolve())
    return flags.MachineSettings(
        data_dir=absolute(config.data_dir), results_dir=absolute(config.results_dir),
        keras_home=absolute(config.keras_home), offline=config.offline,
        cache_dir=absolute(config.cache_dir))


def own_data_set(config, machine):
    """This worker's --dataset (a folder made absolute), checked once so that
    the worker refuses to start without it; None: each trial loads the data
    set its driver names."""
    if config.dataset is None:
        return None
    own = dataset.recorded_name(config.dataset)
    if dataset.is_folder(own):
        image_folders.scan_folder(Path(own))  # its layout; the trials decode it at their size
        return own
    settings = dataclasses.replace(flags.TrialSettings(**dataclasses.asdict(machine)),
                                   dataset=own)
    dataset.load_dataset(settings)
    dataset.unload()  # each trial's process loads its own copy
    return own


def keep_alive(jobs, host_id, every, stop, in_trial):
    """Refresh `refresh_time` of the trial this worker is running, every
    `every` seconds, so that the driver can tell a live worker from a dead one
    (hyperopt alone leaves a dead worker's trial 'running' forever). When
    the trial being trained (`in_trial["_id"]`) is no longer this worker's,
    it went back to the queue (this worker was paused for longer than
    --stale-after) and another worker may run it: stop it at the end of its
    epoch and write nothing for it (trial_process.abandon). The epoch it has
    reached goes into its job as `hks_progress` (analyze_results.py --mongo)."""
    import pymongo.errors
    failing_since, shown = None, None
    while not stop.wait(every):
        training = in_trial["_id"]  # read before the beat: see below
        progress = dict(trial_process.progress)
        try:  # the server's clock, which the driver compares with
            jobs.update_many({"owner": host_id, "state": JOB_STATE_RUNNING},
                             {"$currentDate": {"refresh_time": True}})
            mine = {"_id": training, "owner": host_id, "state": JOB_STATE_RUNNING}
            ours = training is not None and jobs.count_documents(mine)
            if ours and progress and (training, progress) != shown:
                jobs.update_one(mine, {"$set": {"hks_progress": progress}})
                shown = (training, progress)
        except pymongo.errors.PyMongoError as err:  # said once; tried again every beat
            if failing_since is None:
                failing_since = time.monotonic()
                print(f"warning: heartbeat cannot reach MongoDB "
                      f"({mongo_compat.short_reason(err)}); the trial trains on, and the "
                      "heartbeat goes on trying.", file=sys.stderr, flush=True)
            continue
        if failing_since is not None:
            print(f"Heartbeat reaches MongoDB again after "
                  f"{time.monotonic() - failing_since:.0f} s.", file=sys.stderr, flush=True)
            failing_since = None
        # in_trial is cleared before hyperopt marks the trial done, and a new
        # trial has a new _id: only the same trial, still training and no
        # longer this worker's, is a lost one.
        if (training is not None and not ours and in_trial["_id"] == training
                and not trial_process.abandoned.is_set()):
            print("warning: this worker's trial went back to the queue while the worker "
                  "was silent (paused) for longer than the driver's --stale-after; "
                  "stopping it at the end of its epoch and writing nothing for it: another "
                  "worker runs it.", file=sys.stderr, flush=True)
            trial_process.abandon()


def patiently(call, grace, what):
    """`call`, retried with growing pauses while MongoDB cannot be reached,
    for up to `grace` seconds (then mongo_search.MongoLost). For hyperopt's
    result writes: a retried write is harmless (it matches the job's old
    version, which the first try may have changed, and checks the new one)."""
    import pymongo.errors

    def call_patiently(*args, **kwargs):
        started = pauses = None
        while True:
            try:
                result = call(*args, **kwargs)
            except pymongo.errors.ConnectionFailure as err:
                if started is None:
                    started = time.monotonic()
                    pauses = mongo_search.retry_pauses(grace, started)
                    print(f"MongoDB went away while {what} ({mongo_compat.short_reason(err)}); "
                          f"retrying for up to {grace:g} s.", file=sys.stderr, flush=True)
                pause = next(pauses, None)
                if pause is None:
                    raise mongo_search.MongoLost(
                        f"MongoDB has been away for {time.monotonic() - started:.0f} s while "
                        f"{what} (--outage-grace {grace:g}): giving up. The trial goes back to "
                        "the queue once the driver sees it is silent.") from None
                time.sleep(pause)
                continue
            if started is not None:
                print(f"MongoDB is back after {time.monotonic() - started:.0f} s; {what}: "
                      "done.", file=sys.stderr, flush=True)
            return result
    return call_patiently


def forget_result_file(jobs):
    """Remove the result file of a trial whose result MongoDB refused."""
    path = getattr(jobs, "last_result_file", None)
    if path:
        Path(path).unlink(missing_ok=True)
        kept_models.forget(path)  # --keep-models: its model goes with it
        jobs.last_result_file = None


def give_back_interrupted(jobs, host_id):
    """hyperopt marks the job of an interrupted worker as an error; put it back
    in the queue instead (also one interrupted before hyperopt took it in
    hand), so stopping a worker loses nothing."""
    return jobs.update_many(
        {"owner": host_id, "$or": [
            {"state": JOB_STATE_RUNNING},
            {"state": JOB_STATE_ERROR, "error.0": str(KeyboardInterrupt)}]},
        mongo_search.requeue_update(count_requeue=False)).modified_count


def give_up_orphans(jobs, host_id, err):
    """A trial left 'running' by an error outside hyperopt's own handling (a
    MongoDB blip while saving the result, say) would get this worker's
    heartbeat forever and the driver would wait for it: mark it as an error
    with the reason instead, as hyperopt does for a trial that raised."""
    return jobs.update_many(
        {"owner": host_id, "state": JOB_STATE_RUNNING},
        {"$set": {"state": JOB_STATE_ERROR, "error": ["WorkerError", f"{type(err).__name__}: {err}"]},
         "$inc": {"version": mongo_search.VERSION_BUMP}}).modified_count


def report_last_trial(jobs, host_id, seconds):
    """One line about the trial this worker just finished."""
    job = jobs.find_one({"owner": host_id}, sort=[("refresh_time", -1)])
    if job is None:
        return
    result = dict(job.get("result", {}))
    if result.get("status") != "ok":
        result.setdefault("error", job.get("error"))
    print(console.progress_line(result, job["tid"] + 1, seconds,
                                where=f" ({result.get('model_name')} of {job['exp_key']!r})"),
          flush=True)


def run_worker(config, jobs, host_id):
    """hyperopt's worker loop with this project's limits; returns the exit code."""
    import pymongo.errors
    worker = MongoWorker(jobs, poll_interval=config.poll_interval, workdir=config.workdir,
                         exp_key=config.exp_key, logfilename=None)
    started, finished, failures = time.monotonic(), 0, 0
    while config.max_jobs is None or finished < config.max_jobs:
        left = (None if config.last_job_timeout is None
                else config.last_job_timeout - (time.monotonic() - started))
        if left is not None and left <= 0:
            print(f"--last-job-timeout {config.last_job_timeout:g} s passed: exiting.")
            return 0
        timeouts = [t for t in (config.reserve_timeout, left) if t is not None]
        trial_started = time.monotonic()
        trial_process.expect_more(config.max_jobs is None or finished + 1 < config.max_jobs)
        try:
            worker.run_one(host_id, reserve_timeout=min(timeouts) if timeouts else None)
        except pymongo.errors.ConnectionFailure as err:  # taking or reading a trial
            print(f"MongoDB went away ({mongo_compat.short_reason(err)}); waiting up to "
                  f"{config.outage_grace:g} s for it.", file=sys.stderr, flush=True)
            away = mongo_search.wait_for_mongo(config.mongo, config.outage_grace)
            print(f"MongoDB is back after {away:.0f} s; taking trials again.", flush=True)
            try:  # a trial reserved for us whose answer was lost is not ours to keep
                give_back_interrupted(jobs.jobs, host_id)
            except pymongo.errors.PyMongoError:
                pass  # the driver requeues it once no heartbeat comes
            continue
        except ReserveTimeout:
            if config.reserve_timeout is None or (left is not None and left < config.reserve_timeout):
                continue  # --last-job-timeout, said at the top of the loop
            print(f"No queued trial for {config.reserve_timeout:g} s: exiting.")
            return 0
        except mongo_search.MongoLost:
            raise
        except dataset.DatasetError as err:  # hyperopt marked the trial as an error
            print(f"error: {err}. This worker stops: the next trials would fail the same way.",
                  file=sys.stderr, flush=True)
            return 1
        except Exception as err:  # the trial could not run at all (not a failed training)
            if trial_process.abandoned.is_set() or "updated doc not found" in str(err):
                # Requeued while this worker was silent: another worker has it, and
                # hyperopt's version check refused this result. Keep no file of it.
                forget_result_file(jobs)
                print(f"Trial given up here and left to another worker "
                      f"({type(err).__name__}).", flush=True)
                continue
            failures += 1
            try:
                give_up_orphans(jobs.jobs, host_id, err)
            except pymongo.errors.PyMongoError:
                pass  # the driver requeues it once its heartbeat is missed
            print(f"error: a trial could not run: {type(err).__name__}: {err}",
                  file=sys.stderr, flush=True)
            if failures >= config.max_consecutive_failures:
                print(f"error: {failures} trials in a row could not run: exiting.",
                      file=sys.stderr)
                return 1
            continue
        failures, finished = 0, finished + 1
        try:
            report_last_trial(jobs.jobs, host_id, time.monotonic() - trial_started)
        except pymongo.errors.PyMongoError:
            print("Trial finished (MongoDB did not answer for its summary line).", flush=True)
    print(f"Ran --max-jobs {config.max_jobs} trials: exiting.")
    return 0


def main(argv=None):
    parser = build_parser()
    _, (config,) = flags.parse_or_exit(parser, [mongo_settings.WorkerSettings], argv)
    if config.mongo is None:
        parser.error("no MongoDB given: pass --mongo HOST:PORT/DB or set HKS_MONGO or "
                     "MONGO_DB_HOST")
    signal.signal(signal.SIGTERM, console.raise_interrupt)
    moved.allow_old_pickles()  # an experiment's objective pickled before the package existed
    machine = machine_settings(config)
    config.workdir = str(Path(config.workdir or os.getcwd()).resolve())
    try:
        notice = mongo_settings.open_database_notice(config.mongo)
        if notice:
            print(notice, file=sys.stderr, flush=True)
        jobs = mongo_compat.open_jobs(config.mongo)
    except mongo_compat.MongoUnavailable as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    try:
        own = own_data_set(config, machine)  # refuse to take trials without data
    except dataset.DatasetError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    Path(machine.results_dir).mkdir(parents=True, exist_ok=True)
    # What mongo_search.worker_objective gives each trial: this machine's
    # folders, and where the other trials' learning curves are (for --prune).
    jobs.machine = machine
    jobs.dataset = own
    jobs.curves = mongo_curves.MongoCurves(config.mongo, config.exp_key)
    jobs.in_trial = {"_id": None}  # the trial training now (mongo_search.worker_objective)
    # hyperopt writes each trial's result with jobs.update: one that finds
    # MongoDB away waits for it, so a trial trained through an outage is kept.
    jobs.update = patiently(jobs.update, config.outage_grace, "writing a trial's state")
    # --keep-models: a kept model goes into the experiment's GridFS, for the driver.
    jobs.store_model = patiently(functools.partial(mongo_files.store_model, jobs),
                                 config.outage_grace, "storing a kept model")
    # Unique even for a worker restarted with the same pid (containers): the
    # heartbeat must never revive the trial of a previous life.
    host_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:4]}"
    data = own or f"the driver's data set (archives in {machine.data_dir})"
    print(f"Worker {host_id} taking trials of {config.exp_key!r} from "
          f"{mongo_settings.redact(config.mongo)}; data: {data}, results to "
          f"{machine.results_dir}.", flush=True)
    stop = threading.Event()
    threading.Thread(target=keep_alive,
                     args=(jobs.jobs, host_id, config.heartbeat, stop, jobs.in_trial),
                     daemon=True, name="heartbeat").start()
    try:
        return run_worker(config, jobs, host_id)
    except mongo_search.MongoLost as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"\nInterrupted{interrupted_trial(jobs.jobs, host_id)}.", file=sys.stderr)
        return console.EXIT_INTERRUPTED
    finally:
        stop.set()


def interrupted_trial(jobs, host_id):
    """What became of the trial of an interrupted worker, for its last line."""
    import pymongo.errors
    try:
        return "; its trial is back in the queue" if give_back_interrupted(jobs, host_id) else ""
    except pymongo.errors.PyMongoError:
        return ("; MongoDB did not answer, so its trial goes back to the queue once the "
                "driver sees it is silent")


if __name__ == "__main__":
    sys.exit(main())
