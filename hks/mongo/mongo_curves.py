"""The learning curves of an experiment's finished trials, read from
MongoDB by a worker's trial for the stopping rule (--prune) and for
--keep-models: what the rule's `earlier` trials are on a worker."""

import dataclasses

from hks.core import storage
from hks.mongo import mongo_compat
from hks.stopping import pruning


@dataclasses.dataclass(frozen=True)
class MongoCurves:
    """The earlier trials of an experiment's finished jobs in MongoDB, which
    a worker's trial reads again every REFRESH_EPOCHS epochs (other workers
    finish trials meanwhile). Picklable: the trial's own process connects by
    itself."""
    url: str  # mongo://[user:password@]host:port/db/jobs, as hyperopt takes it
    exp_key: str

    def __call__(self):
        """The trials, or None when MongoDB cannot be read: the trial trains on."""
        import pymongo.errors
        from hyperopt import JOB_STATE_DONE
        try:
            jobs = mongo_compat.open_jobs(self.url)
        except mongo_compat.MongoUnavailable:
            return None
        try:
            docs = jobs.jobs.find({"exp_key": self.exp_key, "state": JOB_STATE_DONE,
                                   "result.status": "ok"},
                                  projection=["result.status", "result.pruned"] + [
                                      f"result.history.{key}" for key in storage.VAL_FINE_KEYS])
            return pruning.earlier_trials([doc["result"] for doc in docs])
        except pymongo.errors.PyMongoError:
            return None
        finally:
            jobs.conn.close()
