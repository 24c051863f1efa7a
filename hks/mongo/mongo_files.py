"""An experiment's files, kept in MongoDB and brought into one folder: every
finished trial's result JSON (from its job document) and the models of its
K best trials (--keep-models), which the worker that trained each stores as
attachments of that trial in the experiment's GridFS, the way hyperopt's
MongoJobs.set_attachment does (the job's `_attachments` lists
[name, file id]; `MongoTrials.trial_attachments(trial)` reads them).

- A worker: `store_model` after a trial that ended among the K best.
- The driver: `bring_results` and `bring_models` as trials finish, into its
  --results-dir; the models that fall out of the K best leave its folder
  and GridFS, and `collect_garbage` removes what a dead worker left.
- analyze_results.py --mongo --results-dir: the same, without deleting.

A stored file's GridFS id names its trial, attachment, try and uploader
(`hks_kept_model:<job id>:<name>:<try>:<owner>`), so that the chunks of an
upload cut short can be told from one under way, and a try after an outage
never meets a late chunk of the one before. Nothing here imports Keras."""

import datetime
import hashlib
import os
import uuid
from pathlib import Path

import gridfs
from bson import ObjectId
from bson.errors import InvalidId
from hyperopt import JOB_STATE_DONE, JOB_STATE_RUNNING

from hks.core import storage
from hks.trials import kept_models

ID_PREFIX = "hks_kept_model"
MODEL = "kept_model.keras"  # the trial's attachments: the model, and its JSON
INFO = "kept_model.json"
STORED = (MODEL, INFO)


def file_id(job_id, name, owner, attempt=None):
    return f"{ID_PREFIX}:{job_id}:{name}:{attempt or uuid.uuid4().hex[:8]}:{owner}"


def parse_file_id(value):
    """(job _id, attachment name, owner) of one of our GridFS ids, or None."""
    if not isinstance(value, str) or value.count(":") < 4 or not value.startswith(ID_PREFIX):
        return None
    _, job_id, name, _, owner = value.split(":", 4)
    try:
        return ObjectId(job_id), name, owner
    except InvalidId:
        return None


def models_of(job):
    """{attachment name: file id} of a job's stored model, {} when it has none."""
    attached = {name: fid for name, fid in job.get("_attachments") or [] if name in STORED}
    return attached if len(attached) == len(STORED) else {}


# ------------------------------------------------------- the worker ----

class TakenAway(Exception):
    """The trial is no longer this worker's: nothing of its model stays stored."""


def store_model(handle, job, owner, model_file):
    """Store a kept model (`model_file`, its .json beside it) as attachments
    of `job`, this worker's (`owner`) running trial: streamed into GridFS,
    then listed in the job's `_attachments` only if the trial is still this
    worker's (else its files are deleted again and TakenAway raised). Safe to
    call again after an outage: each try writes files of its own, and what a
    try cut short left is the driver's garbage. Returns the bytes stored."""
    jobs, gfs = handle.jobs, handle.gfs
    mine = {"_id": job["_id"], "owner": owner, "state": JOB_STATE_RUNNING}
    if jobs.find_one(mine, projection=["_id"]) is None:
        raise TakenAway("the trial went back to the queue before its model was stored")
    paths = {MODEL: Path(model_file), INFO: kept_models.info_path(model_file)}
    stored, size, attempt = [], 0, uuid.uuid4().hex[:8]
    for name, path in paths.items():
        fid = file_id(job["_id"], name, owner, attempt)
        with open(path, "rb") as f:
            gfs.put(f, _id=fid, filename=f"{job['_id']}_{name}", metadata={
                "exp_key": job.get("exp_key"), "tid": job.get("tid"), "owner": owner,
                "file": path.name, "sha256": storage.sha256_of(path)})
        stored.append([name, fid])
        size += path.stat().st_size
    attached = [a for a in job.get("_attachments") or [] if a[0] not in STORED] + stored
    if not jobs.update_one(mine, {"$set": {"_attachments": attached}}).matched_count:
        for _, fid in stored:
            gfs.delete(fid)
        raise TakenAway("the trial went back to the queue while its model was stored")
    job["_attachments"] = attached  # hyperopt's copy of the job, as set_attachment keeps it
    return size


# ------------------------------------------------- into a folder ----

def bring_results(jobs, exp_key, results_dir, written):
    """Write the result JSON of each finished trial of the experiment that is
    not in `written` (tids, updated) into `results_dir`: the file the worker
    wrote, name and content, atomically, dated when the trial finished. A
    file already there with that content is left alone. Returns the paths
    written."""
    new = []
    for job in jobs.find({"exp_key": exp_key, "state": JOB_STATE_DONE,
                          "tid": {"$nin": sorted(written)}},
                         projection=["tid", "result", "refresh_time"]):
        result = job.get("result")
        if isinstance(result, dict) and isinstance(result.get("model_name"), str):
            path = storage.result_path(result, results_dir)
            text = storage.result_to_json(result) + "\n"
            if not (path.is_file() and path.read_text(encoding="utf-8") == text):
                storage.atomic_write(path, text)
                if isinstance(job.get("refresh_time"), datetime.datetime):
                    when = job["refresh_time"].replace(tzinfo=datetime.timezone.utc).timestamp()
                    os.utime(path, (when, when))
                new.append(path)
        written.add(job["tid"])  # after the file: one that failed is tried again
    return new


def ranked(jobs, exp_key):
    """The experiment's successful finished trials, best first (a tie: the
    one that finished first), with their names and attachments."""
    done = jobs.find({"exp_key": exp_key, "state": JOB_STATE_DONE, "result.status": "ok"},
                     projection=["tid", "result.fine_best_accuracy", "result.model_name",
                                 "_attachments", "refresh_time"])
    done = [job for job in done if storage.is_number(job["result"].get("fine_best_accuracy"))]
    return sorted(done, key=lambda job: (-job["result"]["fine_best_accuracy"],
                                         job.get("refresh_time") or datetime.datetime.min,
                                         job["tid"]))


def bring_models(handle, exp_key, results_dir, keep, prune=True):
    """Copy the stored models of the experiment's `keep` best trials into
    `results_dir`/models/, byte for byte (checked against the sha256 the
    worker stored), and remove from that folder the kept models of its
    other trials. With `prune` (the driver) also delete those trials' models
    from GridFS. Returns (names copied, names removed)."""
    jobs, gfs = handle.jobs, handle.gfs
    trials = ranked(jobs, exp_key)
    best, others = trials[:keep], trials[keep:]
    copied, removed = [], []
    for job in best:
        stored = models_of(job)
        if stored and copy_model(gfs, stored, results_dir, job["result"]["model_name"]):
            copied.append(job["result"]["model_name"])
    for job in others:
        name = job["result"]["model_name"]
        path = kept_models.model_path(results_dir, name)
        if path.exists() or kept_models.info_path(path).exists():
            path.unlink(missing_ok=True)
            kept_models.info_path(path).unlink(missing_ok=True)
            removed.append(name)
        if prune and job.get("_attachments"):
            unstore(handle, job)
    return copied, removed


def copy_model(gfs, stored, results_dir, model_name):
    """Install one stored model in the folder (the JSON first, then the
    model, each atomically) unless it is there already; True if copied."""
    path = kept_models.model_path(results_dir, model_name)
    targets = {MODEL: path, INFO: kept_models.info_path(path)}
    wanted = {}
    for name, fid in stored.items():
        try:
            out = gfs.get(fid)
        except gridfs.NoFile:  # listed, but its file is gone: nothing to copy
            return False
        wanted[name] = ((out.metadata or {}).get("sha256"), out)
    if all(targets[n].is_file() and storage.sha256_of(targets[n]) == digest
           for n, (digest, _) in wanted.items()):
        return False
    for name in (INFO, MODEL):
        digest, out = wanted[name]
        data = out.read()
        if digest and hashlib.sha256(data).hexdigest() != digest:
            raise OSError(f"the stored {name} of {model_name} does not match its sha256")
        storage.atomic_write(targets[name], data)
    return True


def unstore(handle, job):
    """Delete a trial's stored model from GridFS and from its `_attachments`."""
    for name, fid in (job.get("_attachments") or []):
        if name in STORED:
            handle.gfs.delete(fid)
    kept = [a for a in job.get("_attachments") or [] if a[0] not in STORED]
    handle.jobs.update_one({"_id": job["_id"]}, {"$set": {"_attachments": kept}})


def collect_garbage(handle, exp_key):
    """Delete the stored files (and lone chunks) of the experiment that no
    finished trial lists and no worker is writing: those of a worker killed
    while it stored a model, of a trial that went back to the queue or was
    given up. Returns how many files went."""
    db, jobs = handle.db, handle.jobs
    ours = {"$regex": f"^{ID_PREFIX}:"}
    ids = set(db.fs.files.distinct("_id", {"_id": ours}))
    ids |= set(db.fs.chunks.distinct("files_id", {"files_id": ours}))
    gone = 0
    for fid in ids:
        parsed = parse_file_id(fid)
        if parsed is None:
            continue
        job_id, _, owner = parsed
        job = jobs.find_one({"_id": job_id},
                            projection=["exp_key", "state", "owner", "_attachments"])
        if job is not None and job.get("exp_key") != exp_key:
            continue  # another experiment's driver looks after it
        state = None if job is None else job.get("state")
        listed = state == JOB_STATE_DONE and any(a[1] == fid for a in job.get("_attachments") or [])
        writing = state == JOB_STATE_RUNNING and job.get("owner") == owner
        if not listed and not writing:
            handle.gfs.delete(fid)
            gone += 1
    return gone


def stored_bytes(handle, exp_key=None):
    """(files, bytes) of the kept models in GridFS (of one experiment, or all)."""
    query = {"_id": {"$regex": f"^{ID_PREFIX}:"}}
    if exp_key is not None:
        query["metadata.exp_key"] = exp_key
    files = list(handle.db.fs.files.find(query, projection=["length"]))
    return len(files), sum(int(f.get("length", 0)) for f in files)
