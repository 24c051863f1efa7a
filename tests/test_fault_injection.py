"""The fault-injection run (tests/fault_injection.py) in its short form:
the local search killed twice (once the moment a result file appears),
and over MongoDB a worker killed, the driver restarted and MongoDB paused.
Nothing may be lost, counted twice or left running."""

import json
import subprocess
import sys

import pytest

from conftest import ROOT


@pytest.mark.slow
def test_the_short_fault_injection_run_loses_nothing(tmp_path, clean_env):
    out = tmp_path / "faults.json"
    done = subprocess.run([sys.executable, str(ROOT / "tests" / "fault_injection.py"), "--quick",
                           "--out", str(out)], env=clean_env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    report = json.loads(out.read_text())
    local, mongo = report["local"], report["mongo"]
    assert local["kills"] >= 1 and local["trials_finished"] == local["max_evals"]
    assert local["result_files_without_a_trial"] == local["trials_without_a_result_file"] == 0
    assert local["trial_processes_left_running"] == local["results_pkl_unreadable"] == 0
    assert mongo["search_completed"] and mongo["results_counted_twice"] == 0
    assert mongo["result_files_of_no_finished_trial"] == 0
    assert mongo["finished_trials_without_a_result_file"] == 0
    assert all(seconds < 3 * mongo["stale_after_seconds"] + 10
               for seconds in mongo["seconds_from_worker_death_to_another_worker"])


@pytest.mark.slow
def test_the_short_soak_run_loses_nothing_and_requeues_on_time(tmp_path, clean_env):
    """`fault_injection.py --soak --quick`: 2 workers and a CPU hog, workers
    killed and frozen, the driver restarted, MongoDB frozen twice."""
    out = tmp_path / "soak.json"
    done = subprocess.run([sys.executable, str(ROOT / "tests" / "fault_injection.py"), "--soak",
                           "--quick", "--out", str(out)], env=clean_env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    soak = json.loads(out.read_text())["soak"]
    assert soak["search_completed"] and soak["trials_lost"] == 0
    assert soak["results_counted_twice"] == soak["result_files_of_no_finished_trial"] == 0
    assert soak["workers_killed"] >= 2 and soak["workers_frozen"] >= 1
    assert soak["driver_restarts"] >= 1 and soak["driver_outages_ridden"] >= 2
    assert soak["trials_requeued"] >= soak["workers_killed"] + soak["workers_frozen"]
    assert soak["requeue_seconds"]["max"] <= soak["requeue_bound_seconds"]
    for process in ("driver", "worker"):
        threads = soak[process]["threads"]
        assert threads["last"] <= threads["first"] + 1, (process, threads)
