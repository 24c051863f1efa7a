"""Stand-in objectives for the MongoDB tests, cheap enough to run many trials.

They run inside hyperopt_mongo_worker.py processes (the tests put this folder
on the workers' PYTHONPATH) through mongo_search.worker_objective, like the
real objective: `config` holds the driver's settings and the worker's own
folders, `earlier` the other trials' curves for pruning (unused here). They return a result of the real shape. What each does:
  quick  - 0.5 s of "training", then a result;
  slow_3s - 3 s of "training", then a result (tests/fault_injection.py);
  slow   - marks that it started (a file named after the worker's pid) and
           takes 4 s, so a test can kill the worker in the middle;
  poison - kills its worker (kill -9) after 1 s, as an out-of-memory kill
           would: always after some heartbeats, which a server that kept
           dates in microseconds would never let the driver match (the
           reason this test once failed on a loaded machine);
  first_best - the first trial a worker runs is its best (accuracy 0.9),
           every later one 0.1: a search that stalls, whatever TPE draws;
  fake_model - a result and a kept "model" of HKS_TEST_MODEL_MB random
           megabytes (1 by default: not a Keras file, bytes to store) with
           its JSON in the worker's results/models/, as --keep-models leaves
           it; HKS_TEST_MODEL_PAUSE seconds of "training" (0.5 by default);
  perfect_on_first_worker - on a worker started with HKS_TEST_PERFECT=1, a
           complete trial of perfect accuracy at every epoch, made up at
           once; elsewhere real training (hyperopt_optimize.optimize_cnn,
           with pruning), which the stopping rule must then prune, from the
           other worker's curves read back from MongoDB.
"""

import json
import os
import signal
import time
import uuid
from pathlib import Path

from hks.core import storage


def fake_result(hype_space, seconds):
    accuracy = 0.2 + 0.1 * hype_space["conv_dropout_drop_proba"]
    uid = uuid.uuid4().hex[:5]
    return {"loss": -accuracy, "status": "ok", "fine_best_accuracy": accuracy,
            "coarse_best_accuracy": accuracy + 0.1, "space": hype_space,
            "model_name": storage.model_name_for(accuracy, uid), "seconds": seconds}


def finish(hype_space, config, seconds):
    time.sleep(seconds)
    result = fake_result(hype_space, seconds)
    storage.save_json_result(result, config.results_dir)
    return result


def fake_model(hype_space, config, earlier=None):
    from hks.trials import kept_models
    result = finish(hype_space, config, float(os.environ.get("HKS_TEST_MODEL_PAUSE", "0.5")))
    path = kept_models.model_path(config.results_dir, result["model_name"])
    path.parent.mkdir(parents=True, exist_ok=True)
    size = int(float(os.environ.get("HKS_TEST_MODEL_MB", "1")) * 2**20)
    kept_models.info_path(path).write_text(json.dumps({"model_name": result["model_name"]}))
    path.write_bytes(os.urandom(size))
    return result


def quick(hype_space, config, earlier=None):
    return finish(hype_space, config, 0.5)


def slow_3s(hype_space, config, earlier=None):
    return finish(hype_space, config, 3.0)


def slow(hype_space, config, earlier=None):
    Path(config.results_dir, f"started-{os.getpid()}-{time.time():.3f}").touch()
    return finish(hype_space, config, 4.0)


def poison(hype_space, config, earlier=None):
    time.sleep(1.0)  # always after a few heartbeats (the tests beat every 0.3 s)
    os.kill(os.getpid(), signal.SIGKILL)


def perfect_on_first_worker(hype_space, config, earlier=None):
    import hyperopt_optimize
    if os.environ.get("HKS_TEST_PERFECT") != "1":
        return hyperopt_optimize.optimize_cnn(hype_space, config, earlier)
    result = dict(fake_result(hype_space, 0.0), loss=-1.0, fine_best_accuracy=1.0,
                  model_name=storage.model_name_for(1.0, uuid.uuid4().hex[:5]),
                  history={"val_fine_outputs_accuracy": [1.0] * config.epochs})
    storage.save_json_result(result, config.results_dir)
    return result


_runs = []


def first_best(hype_space, config, earlier=None):
    _runs.append(1)
    accuracy = 0.9 if len(_runs) == 1 else 0.1
    result = dict(finish(hype_space, config, 0.3), loss=-accuracy, fine_best_accuracy=accuracy)
    return result
