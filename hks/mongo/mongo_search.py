"""The search over MongoDB: the driver that queues trials for
hyperopt_mongo_worker.py processes on any number of machines, follows them,
puts back in the queue the trials of workers that died, and gives up a trial
that kills every worker it lands on.

hyperopt_optimize.py --mongo hands over to `run_driver`; the workers use
`requeue_update` (one change for every way a trial goes back in the queue)
and run each trial through `worker_objective`, which gives the trial the
worker's own folders. Their settings and MongoDB addresses are in
mongo_settings.py. Nothing here imports Keras: queueing trials starts in a
second.
"""

import dataclasses
import datetime
import functools
import sys
import time

import numpy as np
from hyperopt import JOB_STATE_DONE, JOB_STATE_ERROR, JOB_STATE_NEW, JOB_STATE_RUNNING
from hyperopt.base import JOB_STATE_CANCEL

from hks.core import console, flags, storage
from hks.data import dataset
from hks.mongo import mongo_files, mongo_settings
from hks.stopping import pruning
from hks.trials import kept_models, trial_process

DATA_SETS_COLLECTION = "hks_data_sets"  # {_id: exp_key, identity: dataset.identity()}
# hyperopt's MongoJobs.update writes to {_id, version v} and then checks that
# {_id, version v+1} exists: a jump of 2 makes both fail for a worker whose
# trial was taken away, so its late result never lands on the requeued trial.
VERSION_BUMP = 2
# Two looks of the driver at MongoDB this far apart (it polls every second)
# mean that MongoDB or the driver was stuck: staleness counts afresh.
STUCK_S = 5.0
RETRY_PAUSE_MAX_S = 15.0  # the longest pause between tries while MongoDB is away


# ----------------------------------------------------- the driver ----

def run_driver(search, driver, objective, space, warm_start):
    """hyperopt_optimize.py --mongo: queue trials of `space` for the workers
    and follow them until --max-evals trials are finished or given up (or
    forever). `objective(hype_space, trial_settings)` is what the workers run;
    `warm_start(trials, folder)` adds result files as trials. Returns the
    exit code, having said what happened in one line."""
    import pymongo.errors
    from hks.mongo import mongo_compat
    seen = {}  # what the driver has reported, kept across MongoDB outages
    notice = mongo_settings.open_database_notice(driver.mongo)
    if notice:
        print(notice, file=sys.stderr, flush=True)
    try:
        while True:
            try:
                trials = queue_and_follow(search, driver, objective, space, warm_start, seen)
                break
            except (pymongo.errors.ConnectionFailure, MongoLost) as err:
                if isinstance(err, MongoLost) and not seen:
                    raise  # at start-up: say so at once
                print(f"MongoDB at {mongo_settings.redact(driver.mongo)} went away ({mongo_compat.short_reason(err)}); "
                      f"waiting up to {driver.outage_grace:g} s for it. Running trials train "
                      "on.", flush=True)
                away = wait_for_mongo(driver.mongo, driver.outage_grace)
                print(f"MongoDB is back after {away:.0f} s; the search goes on.", flush=True)
                search = dataclasses.replace(search, warm_start=None)  # done once already
    except KeyboardInterrupt:
        print("\nInterrupted. The trials stay in MongoDB: workers finish those they "
              "are running and the queued ones wait. Run the same command again to "
              "resume.", file=sys.stderr)
        return console.EXIT_INTERRUPTED
    except (MongoLost, DataSetMismatch, dataset.DatasetError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except pymongo.errors.PyMongoError as err:
        print(f"error: lost MongoDB at {mongo_settings.redact(driver.mongo)} ({err}). The experiment "
              "is safe in the database: run the same command again once MongoDB is "
              "back.", file=sys.stderr)
        return 1
    try:
        counts = job_counts(trials.handle.jobs, driver.exp_key)
        trials.refresh()
    except pymongo.errors.PyMongoError as err:
        print(f"The search is over; MongoDB did not answer for its summary "
              f"({mongo_compat.short_reason(err)}).")
        return 0
    print((f"Done: experiment {driver.exp_key!r} has {describe_counts(counts)}. Every "
           f"finished trial's JSON is in {search.results_dir}/. "
           + pruning.summary(finished_results(trials), search.epochs)).rstrip())
    print(kept_models.summary(search.results_dir, search.keep_models))
    return 0


class MongoLost(Exception):
    """MongoDB cannot be reached or refuses us; the message says what to check."""


def retry_pauses(grace, started):
    """The pauses between tries while MongoDB is away: 1, 2, 4 ... up to
    RETRY_PAUSE_MAX_S seconds, as long as one more still ends within `grace`
    seconds of `started` (a time.monotonic() stamp). The driver and the
    workers both wait this way."""
    pause = 1.0
    while time.monotonic() - started + pause <= grace:
        yield pause
        pause = min(pause * 2, RETRY_PAUSE_MAX_S)


def wait_for_mongo(url, grace, started=None):
    """MongoDB went away: try it with growing pauses until it answers
    (returns the seconds since `started`, default now) or `grace` seconds
    have passed (raises MongoLost, with what to do)."""
    from hks.mongo import mongo_compat
    started = time.monotonic() if started is None else started
    pauses = retry_pauses(grace, started)
    while True:
        try:
            mongo_compat.open_jobs(url).conn.close()
            return time.monotonic() - started
        except mongo_compat.MongoUnavailable as err:
            pause = next(pauses, None)
            if pause is None:
                waited = time.monotonic() - started
                raise MongoLost(f"MongoDB at {mongo_settings.redact(url)} has been away for {waited:.0f} s "
                                f"(--outage-grace {grace:g}): giving up. Nothing is lost: run "
                                f"the same command again once it is back. ({err})") from None
            time.sleep(pause)


class SearchStalled(Exception):
    """--stop-after-no-improvement: raised out of fmin to end the search."""


def queue_and_follow(search, driver, objective, space, warm_start, seen=None):
    """The driver's work: open the experiment, queue with TPE, follow the
    workers (`seen`: what was reported before an outage). Returns the
    MongoTrials. When it fails (MongoDB went away), its MongoDB client is
    closed: the next try opens its own, and a driver that rides out many
    outages does not keep one client, with its monitor threads, per outage."""
    from hks.mongo import mongo_compat
    from hyperopt.mongoexp import MongoTrials
    try:
        trials = MongoTrials(mongo_compat.open_jobs(driver.mongo), exp_key=driver.exp_key)
    except mongo_compat.MongoUnavailable as err:
        raise MongoLost(str(err)) from None
    try:
        return run_experiment(trials, search, driver, objective, space, warm_start, seen)
    except BaseException:
        trials.handle.conn.close()
        raise


def run_experiment(trials, search, driver, objective, space, warm_start, seen):
    """queue_and_follow's work on the opened MongoTrials."""
    from hyperopt import fmin
    from hyperopt.exceptions import AllTrialsFailed
    # hyperopt's trial-id counter, created here so that ids start at 0 (created
    # by its first use, hyperopt warns and skips ahead).
    trials.handle.db.job_ids.update_one({"a": 0}, {"$setOnInsert": {"last_id": 0}},
                                        upsert=True)
    check_data_set(trials.handle.db, driver.exp_key, search)
    if search.warm_start:
        print(f"Warm start: added {warm_start(trials, search.warm_start)} trials from "
              f"{search.warm_start}/.")
    counts = job_counts(trials.handle.jobs, driver.exp_key)
    print(f"Experiment {driver.exp_key!r} in MongoDB at {mongo_settings.redact(driver.mongo)}: "
          + describe_counts(counts) + ". Start workers with: python3 "
          f"hyperopt_mongo_worker.py --mongo ... --exp-key {driver.exp_key}", flush=True)
    given_up = counts[JOB_STATE_ERROR]
    target = sys.maxsize if search.max_evals is None else search.max_evals - given_up
    # Seeded by how many trials exist, so a resumed search does not redraw the first ones.
    rstate = np.random.default_rng(None if search.seed is None
                                   else [search.seed, sum(counts.values())])
    # What shapes a trial travels to the workers inside the pickled objective:
    # the trial's settings only, never the address (and its password).
    on_worker = functools.partial(worker_objective, objective,
                                  flags.subset(flags.TrialSettings, search))
    follow = follow_workers(search, driver, trials, seen)
    try:
        follow(trials)  # on resume, the search may have ended already
        fmin(on_worker, space, algo=looking_first(follow), trials=trials, max_evals=target,
             max_queue_len=driver.queue_len, rstate=rstate, early_stop_fn=follow,
             pass_expr_memo_ctrl=True, show_progressbar=False, return_argmin=False)
    except AllTrialsFailed:
        pass  # hyperopt 0.3.0 raises this at the end when no trial succeeded
    except SearchStalled:
        wait_for_running(trials, driver, follow)
    follow(trials, final=True)
    return trials


def looking_first(follow):
    """TPE's suggest, after a look at the workers (`follow`). hyperopt's fmin
    calls its early_stop_fn only once the queue is full: while idle workers
    take each trial the moment it is queued (short trials, or a driver slowed
    by a busy machine or a large experiment), it would never look, and a dead
    worker's trial would wait for minutes (the soak run saw up to 7)."""
    from hyperopt import tpe

    def suggest(new_ids, domain, trials, seed):
        follow(trials)
        return tpe.suggest(new_ids, domain, trials, seed)
    return suggest


class DataSetMismatch(Exception):
    """The experiment's trials were run on another data set."""


def check_data_set(db, exp_key, search):
    """Record the experiment's data set at its first run; refuse a driver
    started again on it with another one (the accuracies would not compare)."""
    current = dataset.expected_identity(search)
    if current[2] is None:
        print(f"note: the folder {search.dataset} is not on this machine; workers need it "
              "at that path, or started with --dataset <its path there>.", flush=True)
    collection = db[DATA_SETS_COLLECTION]
    collection.update_one({"_id": exp_key}, {"$setOnInsert": {"identity": list(current)}},
                          upsert=True)
    recorded = collection.find_one({"_id": exp_key})["identity"]
    if not dataset.same_identity(recorded, current):
        raise DataSetMismatch(
            f"experiment {exp_key!r} holds trials run on "
            f"{dataset.describe_identity(recorded)}, not on "
            f"{dataset.describe_identity(current)}: their accuracies would not compare. "
            "Give this search its own --exp-key, or run with the data set of those trials.")
    if recorded[2] is None and current[2] is not None:  # first run did not know the classes
        collection.update_one({"_id": exp_key}, {"$set": {"identity": list(current)}})


def own_data_set(settings, own):
    """The driver's trial settings with this worker's own --dataset (a
    folder's path on this machine); DatasetError when it is another data set."""
    if own is None:
        return settings
    if dataset.dataset_name(own) != dataset.dataset_name(settings.dataset):
        raise dataset.DatasetError(
            f"this worker trains on {dataset.dataset_name(own)} (its --dataset) but the "
            f"trial is of {dataset.dataset_name(settings.dataset)}: start the worker "
            "without --dataset, or with that data set's path on its machine")
    return dataclasses.replace(settings, dataset=own)


def finished_results(trials):
    """The results of the finished trials (as last refreshed), in the order they finished."""
    done = [t for t in trials.trials if t["state"] == JOB_STATE_DONE]
    # Warm-started trials have no refresh_time: they came first.
    return [t["result"] for t in sorted(done, key=lambda t: (
        t.get("refresh_time") is not None, t.get("refresh_time") or datetime.datetime.min,
        t["tid"]))]


def wait_for_running(trials, driver, follow, poll=1.0):
    """The search has ended: cancel the queued trials (workers will not take
    them) and follow the running ones to their end."""
    jobs = trials.handle.jobs
    queued = {"exp_key": driver.exp_key, "state": JOB_STATE_NEW}
    cancel = {"$set": {"state": JOB_STATE_CANCEL}}
    cancelled = jobs.update_many(queued, cancel).modified_count
    running = job_counts(jobs, driver.exp_key)[JOB_STATE_RUNNING]
    if cancelled or running:
        print(f"Cancelled {cancelled} queued trials; waiting for the {running} running.",
              flush=True)
    while job_counts(jobs, driver.exp_key)[JOB_STATE_RUNNING]:
        time.sleep(poll)
        trials.refresh()
        follow(trials)
        jobs.update_many(queued, cancel)  # a dead worker's trial that follow requeued


def worker_objective(objective, settings, expr, memo, ctrl):
    """What a worker runs for one trial (hyperopt calls it with the space's
    expression, its memo of drawn values and the trial's control): the
    hyperspace drawn, trained by `objective` with the driver's `settings` but
    this worker's own folders. hyperopt_mongo_worker.py hands those over on
    the job handle that hyperopt gives back here: `machine` (its folders),
    `dataset` (its own --dataset, or None), `curves` (a mongo_curves.MongoCurves,
    for --prune) and `in_trial`, which tells the worker's heartbeat which
    trial is training (and gets `last_result_file`). Under hyperopt's own
    hyperopt-mongo-worker there are none: the driver's folders stay and
    trials are not pruned. Raises TrialTakenAway when the heartbeat found
    the trial requeued meanwhile (trial_process.abandon): nothing was
    written; DatasetError when the worker's --dataset is another one."""
    from hyperopt import pyll
    hype_space = pyll.rec_eval(expr, memo=memo)
    machine = getattr(ctrl.trials.handle, "machine", None)
    if machine is not None:
        settings = dataclasses.replace(settings, **dataclasses.asdict(machine))
    settings = own_data_set(settings, getattr(ctrl.trials.handle, "dataset", None))
    curves = getattr(ctrl.trials.handle, "curves", None)  # mongo_curves.MongoCurves
    if pruning.rule_of(settings) is None and not settings.keep_models:
        curves = None
    handle = ctrl.trials.handle
    in_trial = getattr(handle, "in_trial", None)  # {"_id": ...}: the heartbeat watches it
    trial_process.abandoned.clear()
    handle.last_result_file = None
    if in_trial is not None:
        in_trial["_id"] = ctrl.current_trial["_id"]
    try:
        result = objective(hype_space, settings, earlier=curves)
    finally:
        if in_trial is not None:
            in_trial["_id"] = None  # before hyperopt writes the result
    if isinstance(result, dict) and result.get("model_name"):  # to remove if not stored
        handle.last_result_file = storage.result_path(result, settings.results_dir)
    if trial_process.abandoned.is_set():  # its file too, if written before the heartbeat knew
        raise TrialTakenAway(f"trial {ctrl.current_trial['tid'] + 1} went back to the queue "
                             "while this worker was silent; another worker runs it")
    store_kept_model(handle, ctrl.current_trial, result, settings)
    return result


def store_kept_model(handle, job, result, settings):
    """--keep-models on a worker: the model this trial kept in the worker's
    folder goes into the experiment's GridFS, for the driver (hyperopt's own
    worker has no `store_model`: its models stay where they were trained). A
    model that cannot be stored is said in one line; the result stands."""
    store = getattr(handle, "store_model", None)
    name = result.get("model_name") if isinstance(result, dict) else None
    path = kept_models.model_path(settings.results_dir, name) if name else None
    if store is None or path is None or not path.is_file():
        return
    try:
        size = store(job, job["owner"], path)
    except mongo_files.TakenAway as err:
        raise TrialTakenAway(f"trial {job['tid'] + 1}: {err}; another worker runs it") from None
    except (MongoLost, OSError) as err:
        print(f"warning: the model of {name} was not stored in MongoDB ({err}); it stays in "
              f"{path.parent}/ only.", file=sys.stderr, flush=True)
        return
    print(f"Stored the model of {name} in MongoDB ({size / 2**20:.1f} MB).", flush=True)


class TrialTakenAway(Exception):
    """This worker's trial was requeued (the worker was paused or cut off for
    longer than --stale-after): its result must not be written anywhere."""


def job_counts(jobs, exp_key):
    """How many of the experiment's trials are in each hyperopt job state."""
    return {state: jobs.count_documents({"exp_key": exp_key, "state": state})
            for state in (JOB_STATE_NEW, JOB_STATE_RUNNING, JOB_STATE_DONE, JOB_STATE_ERROR)}


def describe_counts(counts):
    if not any(counts.values()):
        return "new experiment"
    return (f"{counts[JOB_STATE_DONE]} trials finished, {counts[JOB_STATE_RUNNING]} "
            f"running, {counts[JOB_STATE_NEW]} queued, {counts[JOB_STATE_ERROR]} given up")


def follow_workers(search, driver, trials, seen=None):
    """The function fmin calls after each poll of MongoDB (as its
    early_stop_fn): requeue the trials of dead workers, print each newly
    finished trial. `seen` keeps what was reported across MongoDB outages."""
    jobs = trials.handle.jobs
    seen = {} if seen is None else seen
    if "reported" not in seen:
        seen["reported"] = {t["tid"] for t in trials.trials if t["state"] == JOB_STATE_DONE}
        seen["failed"] = {job["tid"] for job in jobs.find(
            {"exp_key": driver.exp_key, "state": JOB_STATE_ERROR}, projection=["tid"])}
    reported, failed = seen["reported"], seen["failed"]
    # Staleness counts from when the driver last found MongoDB answering
    # steadily: heartbeats that could not reach it while it was away or
    # paused, or while no driver watched, do not make a trial stale.
    now = jobs.database.command("hello")["localTime"]
    clock = {"since": now, "last": now}
    of = f"/{search.max_evals}" if search.max_evals else ""
    stalled_said = []

    def follow(trials, *_, final=False):
        """Returns (False, []) as fmin's early_stop_fn must, or raises
        SearchStalled once --stop-after-no-improvement says so (unless
        `final`: the search is over anyway)."""
        now = jobs.database.command("hello")["localTime"]  # MongoDB's clock, as heartbeats
        gap = (now - clock["last"]).total_seconds()
        if gap > max(driver.stale_after / 2, STUCK_S) and not heartbeat_since(
                jobs, driver.exp_key, clock["last"]):
            # No worker got a heartbeat through since the last look: MongoDB
            # (or the whole machine) was stuck, a pause for all. A driver that
            # was only starved of CPU finds the live workers' heartbeats of
            # meanwhile, and requeues on time.
            clock["since"] = now
        clock["last"] = now
        requeued = requeue_stale_jobs(jobs, driver, now=now, not_before=clock["since"])
        for message in requeued:
            print(message, flush=True)
        for job in jobs.find({"exp_key": driver.exp_key, "state": JOB_STATE_ERROR,
                              "tid": {"$nin": sorted(failed)}}):
            failed.add(job["tid"])
            if job.get("error", [""])[0] != "WorkerLost":  # those were printed above
                print(f"Trial {job['tid'] + 1}: could not run on {job.get('owner')}: "
                      f"{': '.join(map(str, job.get('error', ['unknown error'])))}",
                      flush=True)
        finished = [t for t in trials.trials
                    if t["state"] == JOB_STATE_DONE and t["tid"] not in reported]
        if finished:
            best = storage.best_trial(trials) or False
            for trial in sorted(finished, key=lambda t: t["refresh_time"]):
                reported.add(trial["tid"])
                seconds = ((trial["refresh_time"] - trial["book_time"]).total_seconds()
                           if trial.get("book_time") and trial.get("refresh_time") else 0.0)
                print(console.progress_line(
                    trial["result"], trial["tid"] + 1, seconds, best=best,
                    where=f" on {trial['owner']}, {len(reported)}{of} finished"), flush=True)
        bring_files(trials.handle, search, driver, seen,
                    everything=final or bool(finished or requeued) or "models" not in seen)
        line = pruning.stalled(finished_results(trials), search.stop_after)
        if line and not stalled_said and not final:
            stalled_said.append(line)
            print(line, flush=True)
            raise SearchStalled(line)
        return False, []
    return follow


def bring_files(handle, search, driver, seen, everything):
    """Into the driver's --results-dir: each finished trial's JSON, and, when
    `everything` (a trial finished or went back to the queue, the first and
    the last look), the models of the K best trials, those that fell out
    deleted there and from GridFS, and what dead workers left in GridFS. A
    folder that cannot be written is said once: everything stays in MongoDB."""
    written = seen.setdefault("written", set())
    try:
        mongo_files.bring_results(handle.jobs, driver.exp_key, search.results_dir, written)
        if not everything:
            return
        seen["models"] = True
        gone = mongo_files.collect_garbage(handle, driver.exp_key)
        if gone:
            print(f"Deleted {gone} model files in GridFS that no trial holds (a worker died "
                  "while storing them, or its trial went back to the queue).", flush=True)
        copied, _ = mongo_files.bring_models(handle, driver.exp_key, search.results_dir,
                                             search.keep_models)
        for name in copied:
            print(f"Model of {name} copied to {kept_models.models_dir(search.results_dir)}/.",
                  flush=True)
    except OSError as err:
        if "write_failed" not in seen:
            seen["write_failed"] = True
            print(f"warning: cannot write into {search.results_dir}/ "
                  f"({storage.os_error_text(err)}); every result stays in MongoDB, and "
                  "analyze_results.py --mongo --results-dir DIR brings them anywhere.",
                  flush=True)


def heartbeat_since(jobs, exp_key, when):
    """Whether any running trial of the experiment had a heartbeat after `when`."""
    return jobs.find_one({"exp_key": exp_key, "state": JOB_STATE_RUNNING,
                          "refresh_time": {"$gt": when}}, projection=["_id"]) is not None


def requeue_update(count_requeue=True):
    """The change that puts a running trial back in the queue, for the driver
    (a dead worker's trial: counted in `requeue_count`) and for a worker that
    is stopped (not counted). It bumps the version by VERSION_BUMP, so a
    worker that was only slow cannot write over the trial later."""
    increments = {"version": VERSION_BUMP}
    if count_requeue:
        increments["requeue_count"] = 1
    return {"$set": {"state": JOB_STATE_NEW, "owner": None, "book_time": None,
                     "refresh_time": None},
            "$unset": {"error": "", "_attachments": "", "hks_progress": ""},
            "$inc": increments}


def requeue_stale_jobs(jobs, driver, now=None, not_before=None):
    """Running trials whose worker sent no heartbeat for --stale-after seconds
    (killed, machine gone) go back to the queue; a trial that has already
    been requeued --max-requeues times is given up (state error, with the
    reason) so that one that kills every worker cannot loop forever. Silence
    before `not_before` (when the driver started watching, on MongoDB's
    clock) does not count. Returns one message per change."""
    now = now or jobs.database.command("hello")["localTime"]  # the server's clock, as heartbeats
    cutoff = now - datetime.timedelta(seconds=driver.stale_after)
    if not_before is not None and not_before > cutoff:
        return []
    messages = []
    stale = jobs.find({"exp_key": driver.exp_key, "state": JOB_STATE_RUNNING,
                       "refresh_time": {"$lt": cutoff}})
    for job in list(stale):
        silent = (now - job["refresh_time"]).total_seconds()
        requeues = job.get("requeue_count", 0)
        lost = f"trial {job['tid'] + 1}: worker {job['owner']} silent for {silent:.0f} s"
        if requeues >= driver.max_requeues:
            reason = (f"given up: its worker died or stopped responding {requeues + 1} "
                      f"times (--max-requeues {driver.max_requeues}); the last was "
                      f"{job['owner']}. Out of memory is the usual cause.")
            change = {"$set": {"state": JOB_STATE_ERROR, "error": ["WorkerLost", reason]},
                      "$inc": {"version": VERSION_BUMP}}
            message = f"{lost}: {reason}"
        else:
            change = requeue_update()
            message = f"{lost}: put back in the queue ({requeues + 1}/{driver.max_requeues})"
        # Only if nothing changed since we looked (a late heartbeat wins).
        unchanged = {key: job[key] for key in ("_id", "state", "owner", "refresh_time")}
        if jobs.update_one(unchanged, change).modified_count:
            messages.append(message)
    return messages
