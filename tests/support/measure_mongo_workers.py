"""Not a test: measures how many trials per minute 1 and 2 MongoDB workers
finish, with real (tiny) training, through the wire-protocol test server.

    .venv/bin/python tests/support/measure_mongo_workers.py [TRIALS]

For each worker count: start the test server's database afresh, the workers
(given 15 s to import TensorFlow and check the data), then the driver
(mongo_driver.py train: the tiny space, 1 epoch, 400 + 100 fake
CIFAR-100 images, --queue-len 2), and read the trials' book and finish times
back from MongoDB. Prints one JSON line per worker count.
"""

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pymongo

SUPPORT = Path(__file__).resolve().parent
ROOT = SUPPORT.parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from conftest import free_port, wait_for_mongo  # noqa: E402
from hks.data import synthetic_data  # noqa: E402

WORKER_START_SECONDS = 15


def measure(url, db, n_workers, n_trials, work, env):
    workers = [subprocess.Popen(
        [sys.executable, str(ROOT / "hyperopt_mongo_worker.py"), "--mongo", url, "--exp-key", "m",
         "--data-dir", str(work), "--results-dir", str(work / f"results_{n_workers}_{i}")],
        cwd=work, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for i in range(n_workers)]
    time.sleep(WORKER_START_SECONDS)
    started = time.time()
    subprocess.run([sys.executable, str(SUPPORT / "mongo_driver.py"), "train", "--mongo", url,
                    "--exp-key", "m", "--epochs", "1", "--no-plots", "--max-evals", str(n_trials),
                    "--queue-len", "2", "--seed", "0"],
                   cwd=work, env=env, check=True, stdout=subprocess.DEVNULL)
    wall = time.time() - started
    for worker in workers:
        worker.terminate()
    for worker in workers:
        worker.wait()
    jobs = list(db.jobs.find({"state": 2}))
    span = (max(j["refresh_time"] for j in jobs) - min(j["book_time"] for j in jobs)).total_seconds()
    return {"workers": n_workers, "trials": len(jobs), "driver_wall_s": round(wall, 1),
            "first_taken_to_last_done_s": round(span, 1),
            "trials_per_minute": round(60 * len(jobs) / span, 2),
            "seconds_per_trial": sorted(round((j["refresh_time"] - j["book_time"]).total_seconds(), 1)
                                        for j in jobs)}


def main():
    n_trials = int(sys.argv[1]) if len(sys.argv) > 1 else 6
    work = Path(tempfile.mkdtemp(prefix="hks_measure_"))
    synthetic_data.write_synthetic_archive(work / "cifar-100-python.tar.gz", 400, 100)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HKS_", "MONGO_DB_"))}
    env.update(PYTHONPATH=str(SUPPORT), HKS_OFFLINE="1", HKS_HEARTBEAT="1", HKS_POLL_INTERVAL="1",
               TF_CPP_MIN_LOG_LEVEL="3", KERAS_HOME=str(work / "keras_home"))
    port = free_port()
    server = subprocess.Popen([sys.executable, str(SUPPORT / "mongo_test_server.py"),
                               "--port", str(port)], stdout=subprocess.DEVNULL)
    try:
        wait_for_mongo(f"mongodb://127.0.0.1:{port}")
        client = pymongo.MongoClient(f"mongodb://127.0.0.1:{port}")
        for n_workers in (1, 2):
            name = f"measure_{n_workers}"
            print(json.dumps(measure(f"127.0.0.1:{port}/{name}", client[name], n_workers,
                                     n_trials, work, env)), flush=True)
    finally:
        server.terminate()


if __name__ == "__main__":
    main()
