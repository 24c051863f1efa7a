"""The soak run of tests/fault_injection.py: the search over MongoDB as a
team runs it for days, compressed into minutes on a busy machine.

    python3 tests/fault_injection.py --soak                 # 10 minutes, 4 workers, >= 200 trials
    python3 tests/fault_injection.py --soak --quick         # the suite's short form (under 2 minutes)
    python3 tests/fault_injection.py --soak --minutes 60 --workers 6 --out soak.json

A driver and --workers workers run 3 s stand-in trials against the tests'
MongoDB server on loopback, while as many CPU-bound processes as cores keep
the machine busy. For --minutes, at random moments and one at a time:
  - a worker killed (SIGKILL) in the middle of a trial, then started again;
  - a worker frozen (SIGSTOP) in the middle of a trial for longer than
    --stale-after, then woken;
  - the driver killed (SIGKILL), then started again;
  - MongoDB frozen (SIGSTOP) for longer than --stale-after and shorter than
    --outage-grace: long enough for the driver's and workers' calls to time
    out, so that they ride out an outage.
The driver restarts come before the freezes, so that the last driver rides
out every outage. Worker 1 is never touched: it and the driver are sampled
(RSS, threads) every few seconds, from their first reported trial.

Once the minutes are up and at least --trials trials finished, the driver is
interrupted and started a last time with --max-evals at the trials it has
queued: it waits until every one of them is finished. Then the workers are
stopped and everything is counted.

Exit 1 when a trial is lost or done twice, when a killed worker's trial waits
longer than stale_after + 2 x poll interval + 10 s for another worker, when
the driver's (or the untouched worker's) threads or memory grow across the
outages, or when fewer faults or trials than asked for happened.
"""

import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil

import fault_injection as fi
import synthetic_data
import utils

FULL = {"minutes": 10.0, "workers": 4, "trials": 200, "hogs": os.cpu_count() or 1,
        "worker_kills": 10, "worker_stops": 3, "driver_kills": 2, "mongo_freezes": 3}
QUICK = {"minutes": 0.5, "workers": 2, "trials": 8, "hogs": 1,
         "worker_kills": 2, "worker_stops": 1, "driver_kills": 1, "mongo_freezes": 2}
STALE_AFTER = 5.0  # the driver's --stale-after, seconds
POLL = 0.5  # the workers' --poll-interval and --heartbeat; the driver looks every 1 s
DRIVER_POLL = 1.0  # hyperopt's fmin polls MongoDB once a second
# A killed worker's trial must be taken by another worker within this.
REQUEUE_BOUND = STALE_AFTER + 2 * max(POLL, DRIVER_POLL) + 10
# MongoDB freezes this long: past the clients' 20 s socket timeout
# (mongo_compat.SOCKET_TIMEOUT_S), so that calls in flight fail and the
# driver and workers go through their outage handling; well within
# --outage-grace (fault_injection.OUTAGE_GRACE).
FREEZE_S = (22.0, 28.0)
SAMPLE_S = 2.0  # seconds between samples of RSS and threads
# Flat across the outages: the last sample may exceed the first by this much.
# A MongoDB client left behind per outage adds 2 or more threads each.
THREADS_SLACK = 1
RSS_SLACK_MIB = 8.0
TRIAL_LINE = "Trial "  # utils.progress_line: one per finished trial, driver and workers


def environment():
    return dict(fi.environment(), HKS_HEARTBEAT=str(POLL), HKS_POLL_INTERVAL=str(POLL))


def start_hogs(count):
    """As many CPU-bound processes as asked: the machine is busy training."""
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]


def fault_plan(sizes, rng):
    """The faults in order: the driver restarts among the first half's worker
    faults, the MongoDB freezes among the second half's, so the last driver
    rides out every outage."""
    worker = ["kill"] * sizes["worker_kills"] + ["stop"] * sizes["worker_stops"]
    rng.shuffle(worker)
    half = len(worker) // 2
    early = worker[:half] + ["driver"] * sizes["driver_kills"]
    late = worker[half:] + ["freeze"] * sizes["mongo_freezes"]
    rng.shuffle(early)
    rng.shuffle(late)
    return early + late


def trial_lines(log):
    try:
        return sum(line.startswith(TRIAL_LINE) for line in log.read_text().splitlines())
    except FileNotFoundError:
        return 0


class Sampler(threading.Thread):
    """Every SAMPLE_S seconds, the RSS and threads of the watched driver and
    worker, each once it has reported a trial."""

    def __init__(self):
        super().__init__(daemon=True)
        self.watch = {}  # role -> (process, its log, trial lines in the log at its start)
        self.samples = []  # {"role", "pid", "at", "rss_mib", "threads"}
        self.done = threading.Event()

    def run(self):
        started = time.monotonic()
        while not self.done.wait(SAMPLE_S):
            for role, (process, log, lines_at_start) in list(self.watch.items()):
                if trial_lines(log) <= lines_at_start:
                    continue  # not yet: the first sample comes after its first trial
                try:
                    p = psutil.Process(process.pid)
                    rss, threads = p.memory_info().rss / 2**20, p.num_threads()
                except psutil.Error:
                    continue
                self.samples.append({"role": role, "pid": process.pid, "threads": threads,
                                     "at": round(time.monotonic() - started, 1),
                                     "rss_mib": round(rss, 1)})

    def figures(self, role, pid):
        """first/last/max of the RSS and threads of one process."""
        mine = [s for s in self.samples if s["role"] == role and s["pid"] == pid]
        if not mine:
            return {"rss_mib": None, "threads": None, "samples": 0}
        return {key: {"first": mine[0][key], "last": mine[-1][key],
                      "max": max(s[key] for s in mine)} for key in ("rss_mib", "threads")} | {
            "samples": len(mine)}


class Soak:
    """The processes of one soak run and what was done to them."""

    def __init__(self, work, sizes, rng):
        self.work, self.sizes, self.rng = work, sizes, rng
        self.env = environment()
        self.data_dir = work / "ml_req"
        self.log = work / "driver.log"
        self.mongo = fi.Mongo(work)
        self.folders = [work / f"w{i + 1}" for i in range(sizes["workers"])]
        self.workers, self.driver = [], None
        self.driver_started_at = 0  # driver.log's size when the watched driver started
        self.sampler = Sampler()
        self.done = {"kill": [], "stop": [], "driver": 0, "freeze": []}

    def start_driver(self, max_evals=10**6):
        self.driver_started_at = self.log.stat().st_size if self.log.exists() else 0
        self.driver = fi.start_driver(self.mongo, self.work, self.env, max_evals,
                                      stale_after=STALE_AFTER, queue_len=self.sizes["workers"])
        self.watched_driver = self.driver.pid
        self.sampler.watch["driver"] = (self.driver, self.log, trial_lines(self.log))

    def start(self):
        self.start_driver()
        self.workers = [fi.start_worker(self.mongo, f, self.data_dir, self.env)
                        for f in self.folders]
        self.sampler.watch["worker"] = (self.workers[0], self.folders[0] / "worker.log", 0)
        self.sampler.start()

    def finished(self):
        return self.mongo.jobs.count_documents({"exp_key": "faults", "state": 2})

    def inject(self, fault):
        """One fault, done and recovered from before the next."""
        touchable = range(1, len(self.workers))  # worker 1 is the one watched
        if fault == "kill":
            self.done["kill"].append(fi.kill_a_worker(
                self.mongo, self.workers, self.folders, self.data_dir, self.env, self.rng,
                candidates=touchable))
        elif fault == "stop":
            index, job = fi.worker_mid_trial(self.mongo, self.workers, self.rng, touchable)
            if job is not None:
                self.workers[index].send_signal(signal.SIGSTOP)
                frozen = time.monotonic()
                took = fi.takeover_seconds(self.mongo, job, frozen, timeout=REQUEUE_BOUND + 30)
                time.sleep(max(0.0, frozen + STALE_AFTER + 1 - time.monotonic()))
                self.workers[index].send_signal(signal.SIGCONT)
                self.done["stop"].append(took)
        elif fault == "driver":
            self.driver.kill()
            self.driver.wait()
            time.sleep(self.rng.uniform(0.5, 3.0))
            self.start_driver()
            self.done["driver"] += 1
        else:
            seconds = self.rng.uniform(*FREEZE_S)
            self.mongo.process.send_signal(signal.SIGSTOP)
            time.sleep(seconds)
            self.mongo.process.send_signal(signal.SIGCONT)
            self.done["freeze"].append(round(seconds, 1))
            fi.wait_for(self.driver_is_back, fi.OUTAGE_GRACE)

    def driver_is_back(self):
        """Whether the driver said MongoDB is back after each time it went away."""
        said = self.log.read_text(errors="replace")
        return said.count("went away") <= said.count("is back after")

    def drain(self, timeout):
        """Interrupt the driver and start it a last time with --max-evals at
        the trials it queued: it waits for all of them. Returns whether that
        last driver completed."""
        self.driver.send_signal(signal.SIGINT)
        self.driver.wait(timeout=60)
        queued = self.mongo.jobs.count_documents({"exp_key": "faults"})
        self.driver = fi.start_driver(self.mongo, self.work, self.env, queued,
                                      stale_after=STALE_AFTER, queue_len=self.sizes["workers"])
        try:
            return self.driver.wait(timeout=timeout) == 0
        except subprocess.TimeoutExpired:
            self.driver.kill()
            return False

    def stop_workers(self):
        """SIGTERM: each gives its trial back, if it has one."""
        for worker in self.workers:
            worker.send_signal(signal.SIGCONT)
            worker.terminate()
        for worker in self.workers:
            try:
                worker.wait(timeout=30)
            except subprocess.TimeoutExpired:
                worker.kill()

    def close(self):
        self.sampler.done.set()
        for process in [self.driver] + self.workers:
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGCONT)
                process.kill()
                process.wait()
        self.mongo.close()


def run_faults(soak, sizes, rng, started):
    """The faults at random moments over --minutes, one at a time; then go on
    until --trials trials finished."""
    plan = fault_plan(sizes, rng)
    window = sizes["minutes"] * 60
    for step, fault in enumerate(plan):
        moment = started + window * (step + rng.uniform(0.1, 0.9)) / len(plan)
        time.sleep(max(0.0, moment - time.monotonic()))
        print(f"  {time.monotonic() - started:6.1f} s: {fault} ({soak.finished()} trials "
              "finished)", flush=True)
        soak.inject(fault)
    time.sleep(max(0.0, started + window - time.monotonic()))
    fi.wait_for(lambda: soak.finished() >= sizes["trials"], 3600)


def outages_ridden(soak):
    """How many MongoDB outages the watched driver went through (its log lines)."""
    with open(soak.log, "rb") as f:
        f.seek(soak.driver_started_at)
        return f.read().decode(errors="replace").count("went away")


def counts(soak):
    """What became of every trial, in MongoDB and in the workers' folders."""
    jobs = list(soak.mongo.jobs.find({"exp_key": "faults"}))
    done = [job for job in jobs if job["state"] == 2]
    tids = [job["tid"] for job in done]
    names = {job["result"]["model_name"] for job in done}
    files = [Path(p).name[:-len(utils.RESULT_SUFFIX)]
             for f in soak.folders for p in utils.result_files(f / "results")]
    return {
        "trials_finished": len(done),
        "trials_lost": sum(job["state"] in (0, 1) for job in jobs),
        "results_counted_twice": (len(tids) - len(set(tids))) + (len(files) - len(set(files))),
        "result_files_of_no_finished_trial": len([n for n in files if n not in names]),
        "finished_trials_without_a_result_file": len(names - set(files)),
        "trials_requeued": sum(job.get("requeue_count", 0) for job in jobs),
        "trials_given_up": sum(job["state"] == 3 for job in jobs),
    }


def percentiles(values):
    if not values:
        return {"p50": None, "p95": None, "max": None}
    return {"p50": round(float(np.percentile(values, 50)), 1),
            "p95": round(float(np.percentile(values, 95)), 1), "max": max(values)}


def figures(soak, sizes, completed, outages):
    kills = [s for s in soak.done["kill"] if s is not None]
    result = counts(soak)
    result.update({
        "search_completed": completed,
        "requeue_seconds": percentiles(kills),
        "requeue_bound_seconds": REQUEUE_BOUND,
        "stale_after_seconds": STALE_AFTER,
        "workers": sizes["workers"], "cpu_hogs": sizes["hogs"], "minutes": sizes["minutes"],
        "workers_killed": len(soak.done["kill"]),
        "kills_whose_trial_no_other_worker_took": len(soak.done["kill"]) - len(kills),
        "workers_frozen": len(soak.done["stop"]),
        "frozen_workers_trials_taken_over_seconds": soak.done["stop"],
        "driver_restarts": soak.done["driver"],
        "mongo_freezes_seconds": soak.done["freeze"],
        "driver_outages_ridden": outages,
        "driver": soak.sampler.figures("driver", soak.watched_driver),
        "worker": soak.sampler.figures("worker", soak.workers[0].pid),
    })
    return result


def grew(process):
    """Whether a process's threads or RSS grew from its first sample to its last."""
    if not process["samples"]:
        return True  # never sampled: nothing shows it flat
    return (process["threads"]["last"] > process["threads"]["first"] + THREADS_SLACK
            or process["rss_mib"]["last"] > process["rss_mib"]["first"] + RSS_SLACK_MIB)


def verdict(soak_figures, sizes):
    f = soak_figures
    return {
        "nothing lost": f["trials_lost"] == 0 and f["search_completed"],
        "nothing done twice": f["results_counted_twice"] == 0,
        "no result file of no finished trial": f["result_files_of_no_finished_trial"] == 0,
        "every finished trial has its result file": f["finished_trials_without_a_result_file"] == 0,
        "every requeue within the bound": f["kills_whose_trial_no_other_worker_took"] == 0 and (
            f["requeue_seconds"]["max"] is None or f["requeue_seconds"]["max"] <= REQUEUE_BOUND),
        "driver flat across outages": f["driver_outages_ridden"] >= 1 and not grew(f["driver"]),
        "worker flat across outages": not grew(f["worker"]),
        "all faults done": (f["workers_killed"] >= sizes["worker_kills"]
                            and f["workers_frozen"] >= sizes["worker_stops"]
                            and f["driver_restarts"] >= sizes["driver_kills"]
                            and len(f["mongo_freezes_seconds"]) >= sizes["mongo_freezes"]),
        "enough trials": f["trials_finished"] >= sizes["trials"],
    }


def machine():
    try:
        model = next(line.split(":", 1)[1].strip() for line in
                     Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name"))
    except (OSError, StopIteration):
        model = "unknown CPU"
    return f"{os.cpu_count()} x {model}"


def main(args):
    """--soak: run it with fault_injection.py's parsed `args`; returns the exit code."""
    sizes = dict(QUICK if args.quick else FULL)
    sizes.update({k: v for k, v in (("minutes", args.minutes), ("workers", args.workers))
                  if v is not None})
    if sizes["workers"] < 2:
        print("error: --soak needs at least 2 workers (one is never touched)", file=sys.stderr)
        return 2
    rng = random.Random(args.seed)
    started = time.monotonic()
    print(f"Soak: {sizes['workers']} workers, {sizes['hogs']} CPU hogs, {sizes['minutes']:g} "
          f"minutes of faults, at least {sizes['trials']} trials ...", flush=True)
    hogs = start_hogs(sizes["hogs"])
    with tempfile.TemporaryDirectory(prefix="hks-soak-") as tmp:
        work = Path(tmp)
        (work / "ml_req").mkdir()
        synthetic_data.write_synthetic_archive(work / "ml_req" / "cifar-100-python.tar.gz",
                                               400, 100)
        soak = Soak(work, sizes, rng)
        try:
            soak.start()
            fi.wait_for(lambda: soak.finished() >= 1, 300)
            run_faults(soak, sizes, rng, time.monotonic())
            del soak.sampler.watch["driver"]  # the watched driver's life ends here
            outages = outages_ridden(soak)
            completed = soak.drain(timeout=600)
            time.sleep(2 * SAMPLE_S)  # the worker's last samples, settled
            soak.sampler.done.set()
            figures_ = figures(soak, sizes, completed, outages)
            soak.stop_workers()
        finally:
            soak.close()
            for hog in hogs:
                hog.kill()
                hog.wait()
            if os.environ.get("HKS_KEEP_FAULTS"):
                import shutil
                shutil.copytree(work, os.environ["HKS_KEEP_FAULTS"], dirs_exist_ok=True)
    checks = verdict(figures_, sizes)
    report = {"date": time.strftime("%Y-%m-%d"), "machine": machine(),
              "seconds": round(time.monotonic() - started), "seed": args.seed,
              "soak": figures_, "passed": all(checks.values()),
              "failed_checks": [name for name, ok in checks.items() if not ok],
              "samples": soak.sampler.samples}
    print(json.dumps(figures_, indent=2), flush=True)
    if args.out:
        utils.atomic_write(args.out, (json.dumps(report, indent=2) + "\n").encode())
    print(f"{'PASSED' if report['passed'] else 'FAILED: ' + ', '.join(report['failed_checks'])}"
          f" in {report['seconds']} s")
    return 0 if report["passed"] else 1
