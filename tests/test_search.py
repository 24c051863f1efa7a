"""The search driver: trials saved after each one, resume, crash safety,
failed trials, Ctrl-C, and the command line."""

import gc
import json
import multiprocessing
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import keras
import psutil
import pytest

import hyperopt_optimize
import neural_net
from conftest import ROOT, SUPPORT, hear_ctrl_c
from hks.core import console
from hks.data import dataset
from hks.trials import trial_process

TINY_SEARCH = str(SUPPORT / "tiny_search.py")
SCRIPT = str(ROOT / "hyperopt_optimize.py")


@pytest.fixture
def tiny_search_space(monkeypatch):
    import tiny_search
    monkeypatch.setattr(hyperopt_optimize, "space", tiny_search.TINY_SPACE)


def run(args, env, cwd, script=TINY_SEARCH, timeout=600):
    return subprocess.run([sys.executable, script, *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)


def search_args(cifar_dir, *extra):
    """Flags for a quick search; --in-process unless the test is about the child process."""
    if "--isolated" in extra:
        extra = tuple(a for a in extra if a != "--isolated")
    else:
        extra = ("--in-process", *extra)
    return ["--data-dir", str(cifar_dir), "--epochs", "1", "--no-plots", *extra]


def load(path):
    with open(path, "rb") as f:
        return pickle.load(f)


def test_failing_trial_is_recorded_and_the_search_goes_on(config, tiny_search_space,
                                                          monkeypatch):
    real = neural_net.build_and_train
    calls = []

    def fails_first(hype_space, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise MemoryError("OOM when allocating tensor with shape [700,32,32,80]")
        return real(hype_space, **kwargs)
    monkeypatch.setattr(neural_net, "build_and_train", fails_first)
    config.in_process = True  # so the patched function is the one that runs
    config.max_evals = 2
    hyperopt_optimize.run_search(config)

    trials = load(config.trials_file)
    statuses = [t["result"]["status"] for t in trials.trials]
    assert statuses == ["fail", "ok"]
    failed = trials.trials[0]["result"]
    assert "MemoryError: OOM when allocating" in failed["error"]
    assert "Traceback" in failed["traceback"] and "fails_first" in failed["traceback"]
    files = sorted(p.name for p in Path(config.results_dir).iterdir() if p.is_file())
    assert len(files) == 2 and files[0].startswith("failed_") and files[1].startswith("model_")
    saved = json.loads((Path(config.results_dir) / files[0]).read_text())
    assert saved["status"] == "fail" and "MemoryError" in saved["error"]


def test_missing_dataset_stops_the_search_instead_of_failing_every_trial(
        config, tiny_search_space, tmp_path):
    config.data_dir = str(tmp_path)
    dataset.unload_cifar100()
    config.max_evals = 3
    with pytest.raises(neural_net.DatasetError):
        hyperopt_optimize.run_search(config)
    assert load(config.trials_file).trials == []  # saved empty before the first trial


@pytest.mark.slow
def test_memory_of_the_search_process_stays_flat(config, tiny_search_space, monkeypatch,
                                                  capsys):
    """Trials run in child processes, so the search's own memory does not grow
    with the graphs TensorFlow keeps for every model it has trained; the
    last trial starts no spare process that nothing would use."""
    process = psutil.Process()
    rss = []
    objective = hyperopt_optimize.optimize_cnn

    def measured(hype_space, config, earlier=None):
        result = objective(hype_space, config, earlier)
        gc.collect()
        rss.append(process.memory_info().rss / 2**20)
        return result

    monkeypatch.setattr(console, "_said", set())  # nothing said yet in this process
    started = []
    start = trial_process.start
    monkeypatch.setattr(trial_process, "start", lambda: started.append(1) or start())
    monkeypatch.setattr(hyperopt_optimize, "optimize_cnn", measured)
    config.max_evals = 4
    hyperopt_optimize.run_search(config)
    growth = rss[-1] - rss[1]  # after the first trial: imports, data, first plots
    assert growth < 20, f"RSS grew {growth:.0f} MiB over 2 trials: {rss}"
    assert len(load(config.trials_file).trials) == 4
    assert len(started) == 4  # a process per trial: the last trial prestarts none
    # Where trials train: said by the first of the 4 trial processes only.
    assert capsys.readouterr().out.count("No GPU found: trials train on the CPU.") == 1
    assert not trial_process.has_spare()  # no process is left waiting for a trial
    assert multiprocessing.active_children() == []


def test_in_process_trials_free_their_models(config, tiny_search_space):
    config.in_process = True
    config.max_evals = 2
    hyperopt_optimize.run_search(config)
    alive = [o for o in gc.get_objects() if isinstance(o, keras.Model)]
    assert alive == []


def test_a_trial_process_hears_ctrl_c_only_once_it_is_set_up(capfd):
    """Ctrl-C while a trial process starts (spawn re-imports the main script)
    would print a traceback from that import: it is ignored until the process
    is set up (the search ends it anyway), then ends it quietly (exit code 130)."""
    heard = signal.signal(signal.SIGINT, signal.default_int_handler)  # even if the suite ignores it
    try:
        trial = trial_process.start()
    finally:
        signal.signal(signal.SIGINT, heard)
    os.kill(trial.process.pid, signal.SIGINT)  # at once: it is still starting up
    assert trial.results.poll(120) and trial.results.recv()[0] == "ready"
    os.kill(trial.process.pid, signal.SIGINT)  # set up: it listens now
    trial.process.join(60)
    trial.close()
    assert trial.process.exitcode == console.EXIT_INTERRUPTED
    assert "Traceback" not in capfd.readouterr().err


@pytest.mark.slow
def test_a_trial_killed_by_the_system_is_a_failed_trial(clean_env, tmp_path, cifar_dir):
    """What the out-of-memory killer does to a trial: the search records it and
    goes on. With TF_CPP_MIN_LOG_LEVEL unset, as a user's would be, the trial
    processes print none of TensorFlow's C++ start-up lines, and the CPU and
    the archive notice are said once per search, not once per trial."""
    users_env = {k: v for k, v in clean_env.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    process = subprocess.Popen(
        [sys.executable, TINY_SEARCH, *search_args(cifar_dir, "--max-evals", "2", "--isolated")],
        env=users_env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    driver = psutil.Process(process.pid)
    deadline = time.time() + 300
    while time.time() < deadline and not trial_processes(driver) and process.poll() is None:
        time.sleep(0.05)
    children = trial_processes(driver) if process.poll() is None else []
    if not children:
        process.kill()
        out, err = process.communicate()
        pytest.fail(f"expected a trial process: {out[-2000:]} {err[-3000:]}")
    # The oldest is the trial's; a younger one is the spare prestarted for the next trial.
    child = min(children, key=lambda p: p.create_time())
    time.sleep(1.0)
    child.kill()
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0, err
    trials = load(tmp_path / "results.pkl")
    assert [t["result"]["status"] for t in trials.trials] == ["fail", "ok"]
    assert "exit code -9" in trials.trials[0]["result"]["error"]
    assert "Trial 1/2 (cifar100, 100 classes in 20 groups, 32 px): FAILED" in out
    for noise in ("absl::InitializeLog", "oneDNN", "cudart_stub", "cuInit"):
        assert noise not in out + err
    assert (out + err).count("not the official archive") == 1
    assert (out + err).count("No GPU found: trials train on the CPU.") == 1


def test_help_documents_every_flag_and_variable(clean_env, tmp_path):
    done = run(["--help"], clean_env, tmp_path, script=SCRIPT, timeout=120)
    assert done.returncode == 0
    for text in ["--epochs", "HKS_EPOCHS", "--max-evals", "HKS_MAX_EVALS", "--dataset-size",
                 "DATASET_SIZE", "CODE_TESTING", "--data-dir", "HKS_DATA_DIR",
                 "--trials-file", "--results-dir", "--val-split", "--tensorboard",
                 "--dataset", "HKS_DATASET", "--test-split", "HKS_TEST_SPLIT", "--image-size",
                 "HKS_IMAGE_SIZE", "--cache-dir", "HKS_CACHE_DIR"]:
        assert text in done.stdout
    assert "coarse_labels_weight is still drawn but not used" in " ".join(done.stdout.split())


@pytest.mark.parametrize("args, env_extra, expected", [
    (["--epochs", "0"], {}, "--epochs: '0' must be at least 1"),
    (["--max-evals", "abc"], {}, "--max-evals: 'abc' is not a whole number"),
    ([], {"HKS_EPOCHS": "-3"}, "HKS_EPOCHS: '-3' must be at least 1"),
    (["--data-dir", "no/such/dir"], {}, "does not exist"),
    (["--no-such-flag"], {}, "unrecognized arguments"),
])
def test_bad_values_are_refused_with_one_line_and_exit_2(clean_env, tmp_path, args,
                                                         env_extra, expected):
    done = run(args, dict(clean_env, **env_extra), tmp_path, script=SCRIPT, timeout=120)
    assert done.returncode == 2
    assert expected in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert "Traceback" not in done.stderr


def test_no_dataset_exits_with_one_clear_message(clean_env, tmp_path):
    empty = tmp_path / "ml_req"
    empty.mkdir()
    done = run(["--data-dir", str(empty), "--no-plots"], clean_env, tmp_path,
               script=SCRIPT, timeout=120)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr + done.stdout
    assert "cifar-100-python.tar.gz" in done.stderr and "kriz" in done.stderr


@pytest.mark.slow
def test_unreadable_results_pkl_is_refused_and_left_alone(clean_env, tmp_path, cifar_dir):
    (tmp_path / "results.pkl").write_bytes(b"\x80\x05garbage")
    done = run(search_args(cifar_dir, "--max-evals", "1"), clean_env, tmp_path, timeout=120)
    assert done.returncode == 1
    assert "results.pkl cannot be read" in done.stderr and "mv results.pkl" in done.stderr
    assert "Traceback" not in done.stderr
    assert (tmp_path / "results.pkl").read_bytes() == b"\x80\x05garbage"


@pytest.mark.slow
def test_two_runs_resume_the_search(clean_env, tmp_path, cifar_dir):
    """A search run again goes on from results.pkl. The first run trains in
    the search's process (--in-process) with TF_CPP_MIN_LOG_LEVEL unset, as a
    user's would be: no TensorFlow start-up lines, where trials train said once."""
    users_env = {k: v for k, v in clean_env.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    first = run(search_args(cifar_dir, "--max-evals", "1", "--seed", "1"), users_env, tmp_path)
    assert first.returncode == 0, first.stderr
    for noise in ("absl::InitializeLog", "oneDNN", "cudart_stub", "cuInit"):
        assert noise not in first.stdout + first.stderr
    assert first.stdout.count("No GPU found: trials train on the CPU.") == 1
    assert "Trial 1/1 (cifar100, 100 classes in 20 groups, 32 px): fine" in first.stdout
    assert "best so far" in first.stdout
    trials = load(tmp_path / "results.pkl")
    assert len(trials.trials) == 1
    first_trial = trials.trials[0]

    second = run(search_args(cifar_dir, "--max-evals", "3", "--seed", "1"), clean_env, tmp_path)
    assert second.returncode == 0, second.stderr
    assert "Resuming the search: 1 trials" in second.stdout
    trials = load(tmp_path / "results.pkl")
    assert len(trials.trials) == 3
    assert trials.trials[0]["misc"]["vals"] == first_trial["misc"]["vals"]
    assert trials.trials[0]["result"] == first_trial["result"]
    assert [t["tid"] for t in trials.trials] == [0, 1, 2]
    # the seed does not replay the first suggestion after a resume
    assert trials.trials[1]["misc"]["vals"] != first_trial["misc"]["vals"]
    results = sorted((tmp_path / "results").glob("*.txt.json"))
    assert len(results) == 3

    third = run(search_args(cifar_dir, "--max-evals", "3"), clean_env, tmp_path)
    assert third.returncode == 0 and "Trial" not in third.stdout.replace("Resuming", "")
    assert len(load(tmp_path / "results.pkl").trials) == 3


def trial_processes(driver):
    return [p for p in driver.children() if "spawn_main" in " ".join(p.cmdline())]


@pytest.mark.slow
def test_kill_9_never_leaves_a_broken_results_pkl(clean_env, tmp_path, cifar_dir):
    process = subprocess.Popen(
        [sys.executable, TINY_SEARCH, *search_args(cifar_dir, "--max-evals", "50", "--isolated")],
        env=clean_env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    driver = psutil.Process(process.pid)
    pkl = tmp_path / "results.pkl"
    deadline = time.time() + 300
    try:
        while time.time() < deadline and not (pkl.exists() and len(load(pkl).trials) >= 1):
            time.sleep(0.05)
        while time.time() < deadline and not trial_processes(driver):
            time.sleep(0.05)
        children = trial_processes(driver)
        process.send_signal(signal.SIGKILL)
        process.wait()
    finally:
        process.kill()
    trials = load(pkl)
    assert len(trials.trials) >= 1
    assert all(t["result"]["status"] in ("ok", "fail") for t in trials.trials)
    # the trial being trained does not train on for nobody
    gone, alive = psutil.wait_procs(children, timeout=30)
    assert children and not alive
    resumed = run(search_args(cifar_dir, "--max-evals", str(len(trials.trials) + 1)),
                  clean_env, tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert len(load(pkl).trials) == len(trials.trials) + 1


@pytest.mark.slow
def test_ctrl_c_saves_and_says_how_to_resume(clean_env, tmp_path, cifar_dir):
    """Ctrl-C in a terminal reaches the search and its trial process alike."""
    process = subprocess.Popen(
        [sys.executable, TINY_SEARCH, *search_args(cifar_dir, "--max-evals", "50", "--isolated")],
        env=clean_env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True, preexec_fn=hear_ctrl_c)
    pkl = tmp_path / "results.pkl"
    deadline = time.time() + 300
    while time.time() < deadline and not (pkl.exists() and load(pkl).trials):
        time.sleep(0.05)
    time.sleep(2.0)  # well into the second trial
    os.killpg(process.pid, signal.SIGINT)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 130
    assert "Interrupted" in err and "run the same command again to resume" in err
    assert "Traceback" not in err
    trials = load(pkl).trials
    assert len(trials) >= 1 and all(t["result"]["status"] == "ok" for t in trials)
    assert len(list((tmp_path / "results").glob("*.txt.json"))) == len(trials)


@pytest.mark.slow
def test_real_space_end_to_end_with_plots(clean_env, tmp_path, cifar_dir):
    """The README's command on the real search space: one trial, the plots, a result."""
    done = run(["--data-dir", str(cifar_dir), "--epochs", "1", "--max-evals", "1",
                "--dataset-size", "100", "--seed", "3"], clean_env, tmp_path, script=SCRIPT)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "model_demo.png").stat().st_size > 1000
    assert (tmp_path / "model_best.png").stat().st_size > 1000
    [result] = (tmp_path / "results").glob("*.txt.json")
    saved = json.loads(result.read_text())
    assert saved["status"] == "ok" and saved["train_images"] == 80
    assert len(load(tmp_path / "results.pkl").trials) == 1


def test_tensorboard_shows_each_trial_in_the_hparams_dashboard(config, tiny_space, tmp_path,
                                                                monkeypatch):
    from tensorboard_events import read_events, run_contents
    monkeypatch.chdir(tmp_path)
    config.tensorboard, config.in_process = True, True
    result = hyperopt_optimize.optimize_cnn(tiny_space, config)
    run = tmp_path / "TensorBoard" / result["model_name"]
    hparams, metrics = run_contents(run)
    assert hparams["optimizer"] == "Adam" and hparams["residual"] == "none"
    assert metrics["fine_best_accuracy"] == pytest.approx(result["fine_best_accuracy"])
    assert (run / "train").is_dir() and (run / "validation").is_dir()  # the epochs' scalars
    assert read_events(tmp_path / "TensorBoard")  # the experiment: domains and metrics


@pytest.mark.slow
def test_a_prestarted_trial_process_trains_in_the_callers_folder(config, tiny_space, tmp_path,
                                                                  monkeypatch):
    """A MongoDB worker moves into a folder per job; the trial process started
    during the previous job must follow it (TensorBoard/ and weights/ are relative)."""
    config.tensorboard = True
    try:
        for job in ("job1", "job2"):
            trial_process.expect_more(job == "job1")  # job2 needs no spare after it
            (tmp_path / job).mkdir()
            monkeypatch.chdir(tmp_path / job)
            result = hyperopt_optimize.optimize_cnn(tiny_space, config)
            assert result["status"] == "ok"
            assert (tmp_path / job / "TensorBoard" / result["model_name"]).is_dir()
        assert not trial_process.has_spare()
    finally:
        trial_process.expect_more(True)
        trial_process.stop_spare()


def test_flags_are_never_abbreviated(clean_env, tmp_path):
    done = run(["--epoch", "1"], clean_env, tmp_path, script=SCRIPT, timeout=120)
    assert done.returncode == 2
    assert "unrecognized arguments: --epoch 1" in done.stderr
