"""An experiment as analyze_results.py --mongo shows it, from any machine,
while it runs or after: its finished trials (the results the analysis
reads), the trials running now (worker, epoch reached, accuracy so far,
seconds since their last heartbeat) and the queue. Nothing here writes to
MongoDB or imports Keras."""

import datetime

from hyperopt import JOB_STATE_DONE, JOB_STATE_ERROR, JOB_STATE_NEW, JOB_STATE_RUNNING
from hyperopt.base import JOB_STATE_CANCEL

from hks.core import storage
from hks.mongo import mongo_compat, mongo_files, mongo_settings

LISTED_EXPERIMENTS = 10  # named in the error line about an unknown experiment


class ViewError(Exception):
    """MongoDB cannot be reached, or holds no such experiment; one line."""


def open_experiment(url, exp_key):
    """hyperopt's MongoJobs on `url` (a mongo_settings.mongo_url address),
    checked to hold experiment `exp_key`; ViewError otherwise."""
    try:
        handle = mongo_compat.open_jobs(url)
    except mongo_compat.MongoUnavailable as err:
        raise ViewError(str(err)) from None
    if handle.jobs.find_one({"exp_key": exp_key}, projection=["_id"]) is None:
        names = sorted(str(n) for n in handle.jobs.distinct("exp_key"))
        handle.conn.close()
        held = (f"it holds {', '.join(repr(n) for n in names[:LISTED_EXPERIMENTS])}"
                + (", ..." if len(names) > LISTED_EXPERIMENTS else "") if names
                else "it holds none")
        raise ViewError(f"no experiment {exp_key!r} in MongoDB at {mongo_settings.redact(url)} "
                        f"({held}): check --exp-key")
    return handle


def queue(jobs, exp_key):
    """How many trials are queued, running, finished (failed among them),
    given up and cancelled."""
    def count(**query):
        return jobs.count_documents({"exp_key": exp_key, **query})
    return {"queued": count(state=JOB_STATE_NEW), "running": count(state=JOB_STATE_RUNNING),
            "finished": count(state=JOB_STATE_DONE),
            "failed": count(state=JOB_STATE_DONE, **{"result.status": {"$ne": "ok"}}),
            "given up": count(state=JOB_STATE_ERROR), "cancelled": count(state=JOB_STATE_CANCEL)}


def describe_queue(counts):
    return (f"{counts['queued']} queued, {counts['running']} running, {counts['finished']} "
            f"finished ({counts['failed']} failed), {counts['given up']} given up, "
            f"{counts['cancelled']} cancelled")


def running(jobs, exp_key):
    """One row per running trial: trial (1-based), worker, epoch reached and
    of how many, best validation fine accuracy so far, seconds since its last
    heartbeat (on MongoDB's clock, as the driver counts)."""
    now = jobs.database.command("hello")["localTime"]
    rows = []
    for job in jobs.find({"exp_key": exp_key, "state": JOB_STATE_RUNNING},
                         projection=["tid", "owner", "refresh_time", "hks_progress"]).sort("tid"):
        progress = job.get("hks_progress") or {}
        beat = job.get("refresh_time")
        rows.append({"trial": job["tid"] + 1, "worker": job.get("owner"),
                     "epoch": progress.get("epoch"), "epochs": progress.get("epochs"),
                     "accuracy": progress.get("best"),
                     "heartbeat_s": ((now - beat).total_seconds()
                                     if isinstance(beat, datetime.datetime) else None)})
    return rows


def finished(jobs, exp_key):
    """The finished trials' results, in the order they finished, each with
    the time it finished: [(result, seconds since the epoch)]."""
    done = jobs.find({"exp_key": exp_key, "state": JOB_STATE_DONE},
                     projection=["tid", "result", "refresh_time"])
    rows = []
    for job in sorted(done, key=lambda j: (j.get("refresh_time") or datetime.datetime.min,
                                           j["tid"])):
        when = job.get("refresh_time")
        when = (when.replace(tzinfo=datetime.timezone.utc).timestamp()
                if isinstance(when, datetime.datetime) else 0.0)
        if isinstance(job.get("result"), dict):
            rows.append((storage.to_plain(job["result"]), when))
    return rows


def stored_models(jobs, exp_key):
    """The model names of the trials whose model is stored in GridFS."""
    return {job["result"]["model_name"] for job in mongo_files.ranked(jobs, exp_key)
            if mongo_files.models_of(job)}
