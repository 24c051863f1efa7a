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
(RSS, threads, CPU) every 2 s, from their first reported trial.

Once the minutes are up and at least 200 trials finished (--quick: 8), the
driver is interrupted and started a last time with --max-evals at the trials
it has queued: it waits until every one of them is finished. Then the
workers are stopped and everything is counted.

Exit 1 when a trial is lost or done twice, when a killed worker's trial waits
longer than stale_after + 2 x poll interval + 10 s for another worker, when
the driver's (or the untouched worker's) threads or memory grow across the
outages, or when fewer faults or trials than asked for happened.
"""

import json
import os
import random
import re
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
from hks.core import storage
from hks.data import synthetic_data

# freeze_s: how long MongoDB freezes (seconds, drawn between the two): past
# 20 s, so that the driver and the workers always ride out an outage. A call
# in flight fails at the clients' 20 s socket timeout
# (mongo_compat.SOCKET_TIMEOUT_S), and within 15 s pymongo's monitor (a look
# every 10 s, answered within 5 s) gives the server up, after which a new
# call fails once it found no server for 5 s. Shorter freezes are often
# ridden out unnoticed. Well within --outage-grace (fault_injection.OUTAGE_GRACE).
FULL = {"minutes": 10.0, "workers": 4, "trials": 200, "hogs": os.cpu_count() or 1,
        "worker_kills": 10, "worker_stops": 3, "driver_kills": 2, "mongo_freezes": 3,
        "freeze_s": (22.0, 28.0)}
QUICK = {"minutes": 0.5, "workers": 2, "trials": 8, "hogs": 1,
         "worker_kills": 2, "worker_stops": 1, "driver_kills": 1, "mongo_freezes": 2,
         "freeze_s": (22.0, 24.0)}
STALE_AFTER = 5.0  # the driver's --stale-after, seconds
POLL = 0.5  # the workers' --poll-interval and --heartbeat; the driver looks every 1 s
DRIVER_POLL = 1.0  # hyperopt's fmin polls MongoDB once a second
# A killed worker's trial must be taken by another worker within this.
REQUEUE_BOUND = STALE_AFTER + 2 * max(POLL, DRIVER_POLL) + 10
SAMPLE_S = 2.0  # seconds between samples of RSS and threads
# Flat across the outages: the last sample's threads may exceed the first's
# by this much (a MongoDB client left behind adds 2 or more: its monitors),
# and an outage may add this much RSS, beyond what the trials add (the
# driver holds every trial: about 20 KiB each).
THREADS_SLACK = 1
RSS_MIB_PER_OUTAGE = 2.0
# console.progress_line: one per finished trial, from the driver and the workers.
TRIAL_LINE = re.compile(r"^Trial \d+", re.MULTILINE)


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


def log_since(log, offset):
    """What a process wrote to its log since `offset` (bytes)."""
    try:
        with open(log, "rb") as f:
            f.seek(offset)
            return f.read().decode(errors="replace")
    except FileNotFoundError:
        return ""


def trial_lines(said):
    return len(TRIAL_LINE.findall(said))


def outages_in(said):
    """(MongoDB outages a driver's or worker's log shows, whether it is still
    in one): its "went away" lines, and whether "is back after" lines lag."""
    went = said.count("went away")
    return went, went > said.count("is back after")


def log_size(log):
    return log.stat().st_size if log.exists() else 0


class Sampler(threading.Thread):
    """Every SAMPLE_S seconds, the RSS and threads of the watched driver and
    worker, each from its first reported trial on, with the trials and the
    MongoDB outages its log shows by then."""

    def __init__(self, worker_logs):
        super().__init__(daemon=True)
        self.worker_logs = worker_logs  # their trial lines: the trials finished so far
        self.watch = {}  # role -> (process, its log, the log's size at its start)
        self.samples = []  # {"role", "pid", "at", "rss_mib", "threads", "trials", ...}
        self.done = threading.Event()

    def run(self):
        started = time.monotonic()
        while not self.done.wait(SAMPLE_S):
            finished = sum(trial_lines(log_since(log, 0)) for log in self.worker_logs)
            for role, (process, log, offset) in list(self.watch.items()):
                said = log_since(log, offset) if log else ""
                if log and not trial_lines(said):
                    continue  # not yet: the first sample comes after its first trial
                try:
                    p = psutil.Process(process.pid)
                    rss, threads = p.memory_info().rss / 2**20, p.num_threads()
                    cpu = sum(p.cpu_times()[:2])
                except psutil.Error:
                    continue
                outages, in_outage = outages_in(said)
                self.samples.append({
                    "role": role, "pid": process.pid, "at": round(time.monotonic() - started, 1),
                    "rss_mib": round(rss, 1), "threads": threads, "cpu_s": round(cpu, 1),
                    "trials": finished, "outages": outages,
                    "in_outage": in_outage})

    def cpu_share(self, role, pid=None):
        """The share of one core a process used over its first and last
        quarter of samples: how its work grows with the trials."""
        mine = [s for s in self.samples if s["role"] == role and pid in (None, s["pid"])]
        if len(mine) < 8:
            return None
        quarter = len(mine) // 4

        def share(a, b):
            return round((b["cpu_s"] - a["cpu_s"]) / max(b["at"] - a["at"], 1e-9), 2)
        return {"first_quarter": share(mine[0], mine[quarter]),
                "last_quarter": share(mine[-quarter - 1], mine[-1])}

    def figures(self, role, pid):
        """first/last/max of the RSS and threads of one process (first and
        last outside outages), and the RSS it gained per outage and per trial."""
        mine = [s for s in self.samples if s["role"] == role and s["pid"] == pid]
        settled = [s for s in mine if not s["in_outage"]]
        if not settled:
            return {"rss_mib": None, "threads": None, "samples": 0}
        figures = {key: {"first": settled[0][key], "last": settled[-1][key],
                         "max": max(s[key] for s in mine)} for key in ("rss_mib", "threads")}
        figures.update(growth(settled), samples=len(mine), outages=mine[-1]["outages"])
        return figures


def growth(samples):
    """RSS = a + b x trials + c x outages, fitted by least squares over the
    samples: the MiB an outage adds (c; None without samples before and after
    one) and the KiB a trial adds (b)."""
    rss = np.array([s["rss_mib"] for s in samples])
    columns = [np.ones(len(samples)), [s["trials"] for s in samples]]
    with_outages = len({s["outages"] for s in samples}) > 1
    if with_outages:
        columns.append([s["outages"] for s in samples])
    fit = np.linalg.lstsq(np.column_stack(columns), rss, rcond=None)[0]
    return {"rss_mib_per_outage": round(float(fit[2]), 2) if with_outages else None,
            "rss_kib_per_trial": round(float(fit[1]) * 1024, 1)}


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
        self.sampler = Sampler([folder / "worker.log" for folder in self.folders])
        self.done = {"kill": [], "stop": [], "driver": 0, "freeze": []}

    def start_driver(self):
        """A driver with no end of trials, the one watched."""
        self.driver_started_at = log_size(self.log)
        self.launch_driver(max_evals=10**6)
        self.watched_driver = self.driver.pid
        self.sampler.watch["driver"] = (self.driver, self.log, self.driver_started_at)

    def launch_driver(self, max_evals):
        self.driver = fi.start_driver(self.mongo, self.work, self.env, max_evals,
                                      stale_after=STALE_AFTER, queue_len=self.sizes["workers"])

    def start(self):
        self.start_driver()
        self.workers = [fi.start_worker(self.mongo, f, self.data_dir, self.env)
                        for f in self.folders]
        self.sampler.watch["worker"] = (self.workers[0], self.folders[0] / "worker.log", 0)
        self.sampler.watch["mongo"] = (self.mongo.process, None, 0)
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
            seconds = self.rng.uniform(*self.sizes["freeze_s"])
            self.mongo.process.send_signal(signal.SIGSTOP)
            time.sleep(seconds)
            self.mongo.process.send_signal(signal.SIGCONT)
            self.done["freeze"].append(round(seconds, 1))
            fi.wait_for(self.driver_is_back, fi.OUTAGE_GRACE)

    def driver_is_back(self):
        """Whether the driver said MongoDB is back after each time it went away."""
        return not outages_in(log_since(self.log, 0))[1]

    def drain(self, timeout):
        """Interrupt the driver and start it a last time with --max-evals at
        the trials it queued: it waits for all of them. Returns whether that
        last driver completed."""
        self.driver.send_signal(signal.SIGINT)
        self.driver.wait(timeout=60)
        self.launch_driver(max_evals=self.mongo.jobs.count_documents({"exp_key": "faults"}))
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
    until sizes["trials"] trials finished."""
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
    return outages_in(log_since(soak.log, soak.driver_started_at))[0]


def counts(soak):
    """What became of every trial, in MongoDB and in the workers' folders."""
    jobs = list(soak.mongo.jobs.find({"exp_key": "faults"}))
    done = [job for job in jobs if job["state"] == 2]
    tids = [job["tid"] for job in done]
    names = {job["result"]["model_name"] for job in done}
    files = [Path(p).name[:-len(storage.RESULT_SUFFIX)]
             for f in soak.folders for p in storage.result_files(f / "results")]
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
        # Where the CPU went as the trials piled up: one core = 1.0.
        "cpu_share": {"driver": soak.sampler.cpu_share("driver", soak.watched_driver),
                      "mongo_test_server": soak.sampler.cpu_share("mongo")},
    })
    return result


def grew(process):
    """Whether a process's threads grew from its first sample to its last, or
    its memory with the outages."""
    if not process["samples"]:
        return True  # never sampled: nothing shows it flat
    per_outage = process["rss_mib_per_outage"]
    return (process["threads"]["last"] > process["threads"]["first"] + THREADS_SLACK
            or (per_outage is not None and per_outage > RSS_MIB_PER_OUTAGE))


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


def sample_columns(samples):
    """The samples for the report: per process ("driver 1234"), one list per figure."""
    columns = {}
    for sample in samples:
        mine = columns.setdefault(f"{sample['role']} {sample['pid']}", {})
        for key, value in sample.items():
            if key not in ("role", "pid"):
                mine.setdefault(key, []).append(value)
    return columns


def report_text(report):
    """The report as JSON, indented, with each process's samples on one line."""
    head = json.dumps({k: v for k, v in report.items() if k != "samples"}, indent=2)
    rows = ",\n".join(f"    {json.dumps(name)}: {json.dumps(columns)}"
                      for name, columns in report["samples"].items())
    return head[:-2] + ',\n  "samples": {\n' + rows + "\n  }\n}\n"


def machine():
    try:
        model = next(line.split(":", 1)[1].strip() for line in
                     Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name"))
    except (OSError, StopIteration):
        model = "unknown CPU"
    return f"{os.cpu_count()} x {model}"


def soak_run(work, sizes, rng):
    """The whole run in the folder `work`; returns (its figures, the samples)."""
    (work / "ml_req").mkdir()
    synthetic_data.write_synthetic_archive(work / "ml_req" / "cifar-100-python.tar.gz", 400, 100)
    soak, hogs = Soak(work, sizes, rng), []
    try:
        hogs = start_hogs(sizes["hogs"])
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
        return figures_, soak.sampler.samples
    finally:
        soak.close()
        for hog in hogs:
            hog.kill()
            hog.wait()


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
    with tempfile.TemporaryDirectory(prefix="hks-soak-") as tmp:
        try:
            figures_, samples = soak_run(Path(tmp), sizes, rng)
        finally:
            if os.environ.get("HKS_KEEP_FAULTS"):
                import shutil
                shutil.copytree(tmp, os.environ["HKS_KEEP_FAULTS"], dirs_exist_ok=True)
    checks = verdict(figures_, sizes)
    report = {"date": time.strftime("%Y-%m-%d"), "machine": machine(),
              "seconds": round(time.monotonic() - started), "seed": args.seed,
              "soak": figures_, "passed": all(checks.values()),
              "failed_checks": [name for name, ok in checks.items() if not ok],
              "samples": sample_columns(samples)}
    print(json.dumps(figures_, indent=2), flush=True)
    return fi.conclude(report, args.out, report_text(report))
