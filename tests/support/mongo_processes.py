"""The search over MongoDB as processes, for the tests: a driver (through
mongo_driver.py, with a stand-in objective or `train`) and workers, each in
a folder of its own, waited for, stopped, and polled."""

import signal
import subprocess
import sys
import time

import pytest

from conftest import ROOT, SUPPORT, hear_ctrl_c


def start_driver(objective, mongo_url, env, log, *flags):
    return subprocess.Popen(
        [sys.executable, str(SUPPORT / "mongo_driver.py"), objective, "--mongo", mongo_url,
         "--exp-key", "exp", "--epochs", "1", "--no-plots", *flags],
        cwd=log.parent, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT,
        preexec_fn=hear_ctrl_c)


def start_worker(mongo_url, env, folder, cifar_dir, *flags):
    folder.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        [sys.executable, str(ROOT / "hyperopt_mongo_worker.py"), "--mongo", mongo_url,
         "--exp-key", "exp", "--data-dir", str(cifar_dir), "--results-dir", "results",
         "--reserve-timeout", "60", *flags],
        cwd=folder, env=env, stdout=(folder / "worker.log").open("w"),
        stderr=subprocess.STDOUT, preexec_fn=hear_ctrl_c)


def finish(process, log, timeout=180):
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        pytest.fail(f"{log} did not finish in {timeout} s:\n{log.read_text()}")
    return log.read_text()


def stop(workers):
    for worker in workers:
        if worker.poll() is None:
            worker.send_signal(signal.SIGINT)
    for worker in workers:
        try:
            worker.wait(timeout=20)
        except subprocess.TimeoutExpired:
            worker.kill()


def freeze(server, seconds):
    """MongoDB paused (SIGSTOP) for `seconds`, then woken, whatever happens."""
    server.send_signal(signal.SIGSTOP)
    try:
        time.sleep(seconds)
    finally:
        server.send_signal(signal.SIGCONT)


def wait_until(condition, timeout, what, every=0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(every)
    pytest.fail(f"timed out after {timeout} s waiting for {what}")
