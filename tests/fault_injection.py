"""What the search survives, measured: kill it, kill its workers, restart
its driver, pause MongoDB, and count what was lost or done twice.

    python3 tests/fault_injection.py                 # the full run (about 10 minutes)
    python3 tests/fault_injection.py --quick         # the short form the tests run (no
                                                     # undisturbed run to compare times with)
    python3 tests/fault_injection.py --out faults.json
    python3 tests/fault_injection.py --soak          # four workers on a busy machine,
                                                     # faults again and again: tests/soak.py

Everything runs on this machine, in a temporary folder, on a tiny synthetic
archive, against the tests' MongoDB stand-in on loopback; it stops by itself.

1. The local search (tiny models, each trial in its own process, as by
   default) is killed with SIGKILL --kills times: at random moments, and
   every other time the moment a new result file appears (between the result
   file and results.pkl). After each kill it is started again, until
   --max-evals trials exist. Counted: trials finished, result files without
   a trial and trials without a result file, trials counted twice, kills
   that left results.pkl unreadable, trial processes still running 5 s after
   the search died, and the seconds the kills cost against an undisturbed run.
2. Over MongoDB: a driver and two workers (stand-in trials of 3 s). Workers
   are killed at random moments in the middle of a trial and started again, the driver is killed and
   started again, and MongoDB is paused (SIGSTOP) for longer than
   --stale-after. Counted: trials requeued, given up, results counted twice
   (done jobs per trial id, result files per finished trial), whether the
   search completed, and for each killed worker the seconds until another
   worker took its trial, against --stale-after.

Exit code 0 when nothing was lost, counted twice or left behind, else 1.
"""

import datetime
import json
import os
import pickle
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SUPPORT = HERE / "support"
sys.path[:0] = [str(ROOT), str(SUPPORT)]

from hks.core import flags  # noqa: E402
from hks.core import storage  # noqa: E402
from hks.data import synthetic_data  # noqa: E402

FULL = {"kills": 20, "max_evals": 24, "worker_kills": 4, "mongo_evals": 16, "reference": True}
# A random kill lands this many seconds after the search starts: within its
# first trials, even when --quick's three tiny trials take under 20 s.
RANDOM_KILL_S = (3.0, 12.0)
QUICK = {"kills": 2, "max_evals": 3, "worker_kills": 1, "mongo_evals": 5, "reference": False}
STALE_AFTER = 3.0  # the MongoDB part's --stale-after, seconds
OUTAGE_GRACE = 120  # the driver's and workers' --outage-grace, seconds
# Workers wait this long for a queued trial, so that none leaves while the
# driver is down or slow to requeue (a loaded machine); the run ends them.
RESERVE_TIMEOUT = 600
LEFT_RUNNING_WAIT = 5.0  # seconds a dead search's trial processes get to notice
POLL = 0.05


def environment():
    """The children's environment: offline, unbuffered, the stand-ins importable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HKS_", "MONGO_DB_"))}
    env.update(HKS_OFFLINE="1", PYTHONUNBUFFERED="1", PYTHONPATH=str(SUPPORT),
               HKS_HEARTBEAT="0.3", HKS_POLL_INTERVAL="0.3")
    return env


# ------------------------------------------------------- the local search ----

def search_command(data_dir, max_evals):
    return [sys.executable, str(SUPPORT / "tiny_search.py"), "--data-dir", str(data_dir),
            "--epochs", "1", "--no-plots", "--max-evals", str(max_evals), "--prune", "none"]


def descendants(process):
    try:
        return psutil.Process(process.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def result_names(folder):
    return {Path(p).name[:-len(storage.RESULT_SUFFIX)] for p in storage.result_files(folder)}


def kill_local_search(folder, command, env, at_result, rng, log):
    """Start the search, SIGKILL it (at a random moment, or the moment a new
    result file appears); returns (seconds it ran, trial processes left
    running, whether it had finished by itself first)."""
    before = result_names(folder / "results")
    started = time.monotonic()
    search = subprocess.Popen(command, cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = started + (60 if at_result else rng.uniform(*RANDOM_KILL_S))
    children = []
    while time.monotonic() < deadline and search.poll() is None:
        children = descendants(search) or children
        if at_result and result_names(folder / "results") - before:
            break
        time.sleep(POLL)
    finished = search.poll() is not None
    children = [c for c in descendants(search) or children if c.is_running()]
    search.kill()
    search.wait()
    ran = time.monotonic() - started
    gone_by = time.monotonic() + LEFT_RUNNING_WAIT
    while time.monotonic() < gone_by and any(alive(c) for c in children):
        time.sleep(0.1)
    left = [c for c in children if alive(c)]
    for child in left:  # found and counted: do not leave them to the next round
        child.kill()
    return ran, len(left), finished


def alive(process):
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def readable_trials(path):
    try:
        with open(path, "rb") as f:
            return pickle.load(f)
    except FileNotFoundError:
        return None
    except Exception:  # noqa: BLE001 -- exactly what is counted
        return False


def local_part(work, sizes, rng):
    """Part 1: the local search killed again and again; its figures."""
    data_dir = work / "ml_req"
    env = environment()
    command = search_command(data_dir, sizes["max_evals"])

    undisturbed = None
    if sizes["reference"]:  # the same search, never killed, for the time the kills cost
        reference = work / "reference"
        reference.mkdir()
        started = time.monotonic()
        with open(reference / "search.log", "w") as log:
            subprocess.run(command, cwd=reference, env=env, stdout=log,
                           stderr=subprocess.STDOUT, check=True)
        undisturbed = time.monotonic() - started

    folder = work / "killed"
    folder.mkdir()
    figures = {"kills": 0, "kills_at_a_result_file": 0, "results_pkl_unreadable": 0,
               "trial_processes_left_running": 0}
    spent = 0.0
    with open(folder / "search.log", "w") as log:
        for kill in range(sizes["kills"]):
            at_result = kill % 2 == 1
            ran, left, finished = kill_local_search(folder, command, env, at_result, rng, log)
            spent += ran
            if finished:
                break  # the search reached --max-evals before this kill
            figures["kills"] += 1
            figures["kills_at_a_result_file"] += at_result
            figures["trial_processes_left_running"] += left
            figures["results_pkl_unreadable"] += readable_trials(folder / "results.pkl") is False
        started = time.monotonic()
        subprocess.run(command, cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT)
        spent += time.monotonic() - started

    trials = readable_trials(folder / "results.pkl")
    names = [t["result"].get("model_name") for t in trials.trials] if trials else []
    files = result_names(folder / "results")
    figures.update({
        "max_evals": sizes["max_evals"],
        "trials_finished": len(names),
        "trials_counted_twice": len(names) - len(set(names)),
        "result_files_without_a_trial": len(files - set(names)),
        "trials_without_a_result_file": len(set(names) - files),
        "seconds_undisturbed": None if undisturbed is None else round(undisturbed, 1),
        "seconds_with_kills": round(spent, 1),
        "extra_seconds_for_the_kills": None if undisturbed is None else round(
            spent - undisturbed, 1),
    })
    return figures


# ---------------------------------------------------------------- MongoDB ----

class Mongo:
    """A test server of our own, to pause and to look into."""

    def __init__(self, work):
        import socket
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.process = subprocess.Popen(
            [sys.executable, str(SUPPORT / "mongo_test_server.py"), "--port", str(port)],
            stdout=subprocess.DEVNULL, stderr=(work / "mongo.log").open("w"))
        self.url = f"mongodb://127.0.0.1:{port}/faults"
        import pymongo
        self.client = pymongo.MongoClient(self.url, serverSelectionTimeoutMS=20000)
        self.client.admin.command("ping")
        self.jobs = self.client.get_default_database().jobs

    def find(self, **query):
        return list(self.jobs.find(dict(query, exp_key="faults")))

    def close(self):
        self.client.close()
        self.process.send_signal(signal.SIGCONT)
        self.process.terminate()
        self.process.wait(timeout=10)


def start_driver(mongo, folder, env, max_evals, stale_after=STALE_AFTER, queue_len=2):
    """The MongoDB driver with 3 s stand-in trials (slow_3s), its log appended
    to folder/driver.log."""
    return subprocess.Popen(
        [sys.executable, str(SUPPORT / "mongo_driver.py"), "slow_3s", "--mongo", mongo.url,
         "--exp-key", "faults", "--max-evals", str(max_evals), "--queue-len", str(queue_len),
         "--stale-after", str(stale_after), "--max-requeues", "5", "--epochs", "1",
         "--no-plots", "--outage-grace", str(OUTAGE_GRACE)],
        cwd=folder, env=env, stdout=(folder / "driver.log").open("a"), stderr=subprocess.STDOUT)


def start_worker(mongo, folder, data_dir, env):
    """A worker in its own folder (results/ and worker.log there)."""
    folder.mkdir(exist_ok=True)
    return subprocess.Popen(
        [sys.executable, str(ROOT / "hyperopt_mongo_worker.py"), "--mongo", mongo.url,
         "--exp-key", "faults", "--data-dir", str(data_dir), "--results-dir", "results",
         "--reserve-timeout", str(RESERVE_TIMEOUT), "--outage-grace", str(OUTAGE_GRACE)],
        cwd=folder, env=env, stdout=(folder / "worker.log").open("a"), stderr=subprocess.STDOUT)


def mongo_part(work, sizes, rng):
    """Part 2: workers killed, the driver restarted, MongoDB paused; its figures."""
    data_dir = work / "ml_req"
    env = environment()
    mongo = Mongo(work)
    folders = [work / "w1", work / "w2"]
    driver = workers = None
    takeover = []
    try:
        driver = start_driver(mongo, work, env, sizes["mongo_evals"])
        workers = [start_worker(mongo, f, data_dir, env) for f in folders]
        total = sizes["mongo_evals"]
        finished = lambda: len(mongo.find(state=2)) + len(mongo.find(state=3))  # noqa: E731
        plan = (["worker"] * sizes["worker_kills"] + ["driver", "pause"])
        rng.shuffle(plan)
        for step, fault in enumerate(plan, 1):
            # Spread the faults over the search.
            wait_for(lambda: finished() >= step * total // (len(plan) + 2), 600)
            if fault == "worker":
                takeover.append(kill_a_worker(mongo, workers, folders, data_dir, env, rng))
            elif fault == "driver":
                driver.kill()
                driver.wait()
                time.sleep(rng.uniform(0.5, 3.0))
                driver = start_driver(mongo, work, env, total)
            else:
                mongo.process.send_signal(signal.SIGSTOP)
                time.sleep(STALE_AFTER * 3)
                mongo.process.send_signal(signal.SIGCONT)
        try:
            driver.wait(timeout=120 + 30 * total)
        except subprocess.TimeoutExpired:
            pass  # the search did not complete: search_completed says so
        done = mongo.find(state=2)
        tids = [job["tid"] for job in done]
        files = [p for f in folders for p in storage.result_files(f / "results")]
        names = {job["result"]["model_name"] for job in done}
        return {
            "max_evals": total,
            "search_completed": driver.returncode == 0 and finished() == total,
            "trials_finished": len(done),
            "trials_given_up": len(mongo.find(state=3)),
            "trials_requeued": sum(job.get("requeue_count", 0) for job in mongo.find()),
            "results_counted_twice": len(tids) - len(set(tids)),
            "result_files_of_no_finished_trial": len(
                [p for p in files if Path(p).name[:-len(storage.RESULT_SUFFIX)] not in names]),
            "finished_trials_without_a_result_file": len(
                names - {Path(p).name[:-len(storage.RESULT_SUFFIX)] for p in files}),
            "workers_killed": len(takeover),
            # Each worker killed mid-trial is one requeue; any other (the pause) is not.
            "requeued_for_other_reasons": max(
                0, sum(job.get("requeue_count", 0) for job in mongo.find()) - len(takeover)),
            "stale_after_seconds": STALE_AFTER,
            "seconds_from_worker_death_to_another_worker": [t for t in takeover if t is not None],
        }
    finally:
        for process in ([driver] if driver else []) + (workers or []):
            if process.poll() is None:
                process.kill()
                process.wait()
        mongo.close()


def kill_a_worker(mongo, workers, folders, data_dir, env, rng, candidates=None):
    """SIGKILL a worker (one of `candidates`, indexes; default any) in the
    middle of a trial and start it again; returns the seconds until another
    worker took the trial (None if none did, or it had finished first)."""
    index, job = worker_mid_trial(mongo, workers, rng, candidates)
    if job is None:
        return None
    worker = workers[index]
    for child in descendants(worker):
        child.kill()
    worker.kill()
    worker.wait()
    died = time.monotonic()
    workers[index] = start_worker(mongo, folders[index], data_dir, env)
    return takeover_seconds(mongo, job, died)


def worker_mid_trial(mongo, workers, rng, candidates=None, timeout=120):
    """Wait for a worker (of `candidates`) that has just taken a trial, then
    until a random moment in the middle of its 3 s trial; returns (index of
    the worker, its job), or (None, None) when none took one within `timeout`."""
    candidates = range(len(workers)) if candidates is None else candidates
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        owners = {job["owner"]: job for job in mongo.find(state=1) if job.get("owner")}
        for index in candidates:
            pid = str(workers[index].pid)
            job = next((j for o, j in owners.items() if o.split(":")[1] == pid), None)
            if job is None or not job.get("book_time"):
                continue
            into = (datetime.datetime.utcnow() - job["book_time"]).total_seconds()
            if into > 1.5:
                continue
            time.sleep(max(0.0, rng.uniform(0.5, 2.0) - into))
            return index, job
        time.sleep(0.1)
    return None, None


def takeover_seconds(mongo, job, since, timeout=120):
    """Seconds from `since` (time.monotonic()) until a worker other than
    `job`'s owner took `job`; None when none did within `timeout`, or when
    its owner finished it first."""
    while time.monotonic() < since + timeout:
        now = mongo.jobs.find_one({"_id": job["_id"]})
        if now and now.get("owner") not in (None, job["owner"]):
            return round(time.monotonic() - since, 1)
        if now and now["state"] in (2, 3) and now.get("owner") == job["owner"]:
            return None
        time.sleep(0.1)
    return None


def wait_for(condition, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not condition():
        time.sleep(0.2)


# ------------------------------------------------------------------- main ----

def verdict(local, mongo):
    """The figures that must be 0 (or true), and whether they are."""
    checks = {}
    if local:
        for key in ("trials_counted_twice", "result_files_without_a_trial",
                    "trials_without_a_result_file", "results_pkl_unreadable",
                    "trial_processes_left_running"):
            checks[f"local {key}"] = local[key] == 0
        checks["local trials_finished"] = local["trials_finished"] == local["max_evals"]
    if mongo:
        for key in ("results_counted_twice", "result_files_of_no_finished_trial",
                    "finished_trials_without_a_result_file", "trials_given_up"):
            checks[f"mongo {key}"] = mongo[key] == 0
        checks["mongo search_completed"] = mongo["search_completed"]
    return checks


def main(argv=None):
    parser = flags.OneLineErrorParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="the short form the tests run")
    parser.add_argument("--kills", type=flags.argparse_type(flags.positive_int),
                        help=f"kills of the local search (default {FULL['kills']})")
    parser.add_argument("--max-evals", type=flags.argparse_type(flags.positive_int),
                        help=f"trials of the local search (default {FULL['max_evals']})")
    parser.add_argument("--seed", type=flags.argparse_type(flags.non_negative_int), default=0,
                        help="seed of the random moments (default 0)")
    parser.add_argument("--skip-mongo", action="store_true", help="only the local search")
    parser.add_argument("--skip-local", action="store_true", help="only the MongoDB part")
    parser.add_argument("--out", help="also write the figures as JSON to this file")
    parser.add_argument("--soak", action="store_true",
                        help="the soak run instead (tests/soak.py): 4 workers on a busy machine, "
                        "faults again and again")
    parser.add_argument("--minutes", type=flags.argparse_type(flags.positive_number),
                        help="--soak: minutes of faults (default 10; --quick 0.5)")
    parser.add_argument("--workers", type=flags.argparse_type(flags.positive_int),
                        help="--soak: MongoDB workers (default 4; --quick 2)")
    args = parser.parse_args(argv)
    if args.soak:
        import soak
        return soak.main(args)
    sizes = dict(QUICK if args.quick else FULL)
    sizes.update({k: v for k, v in (("kills", args.kills), ("max_evals", args.max_evals))
                  if v is not None})
    rng = random.Random(args.seed)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="hks-faults-") as tmp:
        work = Path(tmp)
        data_dir = work / "ml_req"
        data_dir.mkdir()
        synthetic_data.write_synthetic_archive(data_dir / "cifar-100-python.tar.gz", 400, 100)
        local = None
        if not args.skip_local:
            print(f"Local search: {sizes['kills']} kills, --max-evals {sizes['max_evals']} ...",
                  flush=True)
            local = local_part(work, sizes, rng)
            print(json.dumps(local, indent=2), flush=True)
        mongo = None
        if not args.skip_mongo:
            print(f"MongoDB: 2 workers, {sizes['worker_kills']} worker kills, a driver "
                  f"restart, MongoDB paused {STALE_AFTER * 3:g} s ...", flush=True)
            mongo = mongo_part(work, sizes, rng)
            print(json.dumps(mongo, indent=2), flush=True)
        if os.environ.get("HKS_KEEP_FAULTS"):
            shutil.copytree(work, os.environ["HKS_KEEP_FAULTS"], dirs_exist_ok=True)
    checks = verdict(local, mongo)
    report = {"date": time.strftime("%Y-%m-%d"), "seconds": round(time.monotonic() - started),
              "seed": args.seed, "local": local, "mongo": mongo,
              "passed": all(checks.values()),
              "failed_checks": [name for name, ok in checks.items() if not ok]}
    return conclude(report, args.out)


def conclude(report, out, text=None):
    """Write `report` (as `text`, default indented JSON) to `out` if given,
    say PASSED or which checks failed; returns the exit code."""
    if out:
        storage.atomic_write(out, (text or json.dumps(report, indent=2) + "\n").encode())
    print(f"{'PASSED' if report['passed'] else 'FAILED: ' + ', '.join(report['failed_checks'])}"
          f" in {report['seconds']} s")
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
