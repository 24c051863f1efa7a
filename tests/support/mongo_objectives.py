"""Stand-in objectives for the MongoDB tests, cheap enough to run many trials.

They run inside hyperopt_mongo_worker.py processes (the tests put this folder
on the workers' PYTHONPATH) through mongo_search.worker_objective, like the
real objective: `config` holds the driver's settings and the worker's own
folders. They return a result of the real shape. What each does:
  quick  - 0.5 s of "training", then a result;
  slow   - marks that it started (a file named after the worker's pid) and
           takes 4 s, so a test can kill the worker in the middle;
  poison - kills its worker (kill -9), as an out-of-memory kill would.
"""

import os
import signal
import time
import uuid
from pathlib import Path

import utils


def fake_result(hype_space, seconds):
    accuracy = 0.2 + 0.1 * hype_space["conv_dropout_drop_proba"]
    uid = uuid.uuid4().hex[:5]
    return {"loss": -accuracy, "status": "ok", "fine_best_accuracy": accuracy,
            "coarse_best_accuracy": accuracy + 0.1, "space": hype_space,
            "model_name": utils.model_name_for(accuracy, uid), "seconds": seconds}


def finish(hype_space, config, seconds):
    time.sleep(seconds)
    result = fake_result(hype_space, seconds)
    utils.save_json_result(result, config.results_dir)
    return result


def quick(hype_space, config):
    return finish(hype_space, config, 0.5)


def slow(hype_space, config):
    Path(config.results_dir, f"started-{os.getpid()}-{time.time():.3f}").touch()
    return finish(hype_space, config, 4.0)


def poison(hype_space, config):
    os.kill(os.getpid(), signal.SIGKILL)
