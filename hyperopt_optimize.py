"""Search the hyperparameters and the architecture of the CIFAR-100 CNN with
hyperopt's TPE.

Every trial trains one model (neural_net.build_and_train), writes its result to
results/<model_name>.txt.json, and hyperopt's Trials are pickled to
results.pkl after every trial, atomically, so that running the same command
again resumes the search. Runs until interrupted, or until --max-evals trials
exist.

With --mongo (or MONGO_DB_HOST) this process trains nothing: it queues trials
in MongoDB for hyperopt_mongo_worker.py processes on any number of machines,
puts back in the queue the trials of workers that died, and prints each result
as it arrives. Running the same command again resumes the experiment.
"""

import argparse
import dataclasses
import datetime
import functools
import gc
import multiprocessing
import multiprocessing.connection
import os
import pickle
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np
import hyperopt.pyll
from hyperopt import (JOB_STATE_DONE, JOB_STATE_ERROR, JOB_STATE_NEW, JOB_STATE_RUNNING,
                      Trials, fmin, hp, tpe)
from hyperopt.exceptions import AllTrialsFailed

import utils

# neural_net imports Keras and TensorFlow, which take seconds and print on
# start-up: functions import it when needed, so --help and bad flags are
# answered at once.

# The search space, key for key the original's. Multipliers are log-uniform so
# that they vary by ratios; quantised values arrive as floats (320.0).
space = {
    # Learning rate = 0.001 x this:
    "lr_rate_mult": hp.loguniform("lr_rate_mult", -0.5, 0.5),
    # L2 weight decay = 0.0007 x this, on every kernel:
    "l2_weight_reg_mult": hp.loguniform("l2_weight_reg_mult", -1.3, 1.3),
    "batch_size": hp.quniform("batch_size", 100, 700, 5),
    "optimizer": hp.choice("optimizer", ["Adam", "Nadam", "RMSprop"]),
    # Weight of the 20-class coarse loss next to the fine loss (1.0):
    "coarse_labels_weight": hp.uniform("coarse_labels_weight", 0.1, 0.7),
    "conv_dropout_drop_proba": hp.uniform("conv_dropout_proba", 0.0, 0.35),
    "fc_dropout_drop_proba": hp.uniform("fc_dropout_proba", 0.0, 0.6),
    # Batch normalisation after each convolution stage:
    "use_BN": hp.choice("use_BN", [False, True]),
    # An extra first convolution of 16 filters, and its kernel size:
    "first_conv": hp.choice("first_conv", [None, hp.choice("first_conv_size", [3, 4])]),
    # How many residual blocks to stack after each conv stage, if any:
    "residual": hp.choice("residual", [None, hp.quniform("residual_units", 1 - 0.499, 4 + 0.499, 1)]),
    # Filters = 40 x this in the first stage, doubling at every stage:
    "conv_hiddn_units_mult": hp.loguniform("conv_hiddn_units_mult", -0.6, 0.6),
    "nb_conv_pool_layers": hp.choice("nb_conv_pool_layers", [2, 3]),
    # The first stage (0-based) that gets residual blocks:
    "conv_pool_res_start_idx": hp.quniform("conv_pool_res_start_idx", 0, 2, 1),
    # How each stage halves the image: pooling, strided conv or inception-like:
    "pooling_type": hp.choice("pooling_type", ["max", "avg", "all_conv", "inception"]),
    "conv_kernel_size": hp.quniform("conv_kernel_size", 2, 4, 1),
    "res_conv_kernel_size": hp.quniform("res_conv_kernel_size", 2, 4, 1),
    # Dense units = 1000 x this:
    "fc_units_1_mult": hp.loguniform("fc_units_1_mult", -0.6, 0.6),
    # An optional second dense layer of 750 x this units:
    "one_more_fc": hp.choice("one_more_fc", [None, hp.loguniform("fc_units_2_mult", -0.6, 0.6)]),
    "activation": hp.choice("activation", ["relu", "elu"]),
}

# One possible draw from the space, drawn as model_demo.png:
SPACE_DEMO = {
    "lr_rate_mult": 1.0, "l2_weight_reg_mult": 1.0, "batch_size": 300,
    "optimizer": "Nadam", "coarse_labels_weight": 0.2,
    "conv_dropout_drop_proba": 0.175, "fc_dropout_drop_proba": 0.3, "use_BN": True,
    "first_conv": 4, "residual": 4, "conv_hiddn_units_mult": 1.0,
    "nb_conv_pool_layers": 3, "conv_pool_res_start_idx": 0.0,
    "pooling_type": "inception", "conv_kernel_size": 3.0, "res_conv_kernel_size": 3.0,
    "fc_units_1_mult": 1.0, "one_more_fc": 1.0, "activation": "elu",
}

# The best space of the original search (67.61% fine, 77.31% coarse), drawn
# as model_best.png until this search has a best of its own:
SPACE_BEST_ORIGINAL = {
    "activation": "elu", "batch_size": 320.0, "coarse_labels_weight": 0.3067103474295116,
    "conv_dropout_drop_proba": 0.25923531175521264,
    "conv_hiddn_units_mult": 1.5958302613876916, "conv_kernel_size": 3.0,
    "conv_pool_res_start_idx": 0.0, "fc_dropout_drop_proba": 0.4322253354921089,
    "fc_units_1_mult": 1.3083964454436132, "first_conv": 3,
    "l2_weight_reg_mult": 0.41206755600055983, "lr_rate_mult": 0.6549347353077412,
    "nb_conv_pool_layers": 3, "one_more_fc": None, "optimizer": "Nadam",
    "pooling_type": "avg", "res_conv_kernel_size": 2.0, "residual": 3.0, "use_BN": True,
}

DEMO_PLOT = "model_demo.png"
BEST_PLOT = "model_best.png"
EXIT_INTERRUPTED = 130


class SearchError(Exception):
    """The search cannot start or go on; the message says what to do."""


# Set by hyperopt_mongo_worker.py: that machine's folders. A MongoDB worker
# trains what the driver asked for (epochs, dataset size, ...) with its own data.
machine_settings = {}


def optimize_cnn(hype_space, config):
    """hyperopt's objective: train one model, save its result, return it.

    Any error becomes a failed trial (with its traceback) so the search goes
    on; only a missing data set and Ctrl-C stop the search."""
    called_at = time.time()
    config = dataclasses.replace(config, **machine_settings)
    if config.in_process:
        result = train_trial(hype_space, config, called_at)
    else:
        result = train_trial_in_child(hype_space, config, called_at)
    try:
        utils.save_json_result(result, config.results_dir)
    except OSError as err:
        print(f"warning: could not write the result of {result['model_name']} to "
              f"{config.results_dir}/ ({err}); it is still kept in {config.trials_file}.")
    if config.tensorboard and result.get("status") == "ok":
        log_hparams(result, config)
    return result


def log_hparams(result, config):
    """Show the trial in TensorBoard's HParams dashboard: its hyperparameters
    and final accuracies in TensorBoard/<model_name>/ (beside the per-epoch
    scalars), and the experiment's domains over every result so far."""
    import analyze_results
    import neural_net
    try:
        analyze_results.write_hparams_run(result, neural_net.TENSORBOARD_DIR)
        trials, _ = analyze_results.read_results(config.results_dir)
        analyze_results.write_hparams_experiment(neural_net.TENSORBOARD_DIR,
                                                 [t["result"] for t in trials])
    except Exception as err:  # best effort: the trial itself is saved already
        print(f"warning: could not write {result['model_name']} to TensorBoard's "
              f"HParams ({type(err).__name__}: {err}); the search goes on.")


def train_trial(hype_space, config, called_at=None):
    """Train one model in this process and free it; errors become failed results."""
    import keras
    import neural_net
    try:
        model, _, result = neural_net.build_and_train(hype_space, config=config,
                                                      called_at=called_at)
        del model
    except neural_net.DatasetError:
        raise
    except Exception as err:  # a bad architecture, out of memory, ...
        result = neural_net.failure_result(hype_space, err)
    finally:
        keras.backend.clear_session()
        gc.collect()
    return result


# The next trial's process, started while the current trial trains so that
# its imports (TensorFlow takes about 8 s) are done when the trial begins:
# (process, task sender, result receiver), or None.
_spare = None


def start_trial_process():
    """A fresh process that imports neural_net, then waits for one trial."""
    context = multiprocessing.get_context("spawn")
    task_receive, task_send = context.Pipe(duplex=False)
    result_receive, result_send = context.Pipe(duplex=False)
    child = context.Process(target=child_main, args=(task_receive, result_send),
                            name="hks-trial", daemon=True)
    child.start()
    task_receive.close()
    result_send.close()
    return child, task_send, result_receive


def take_spare_process():
    """The prestarted trial process if it is still alive, else a new one."""
    global _spare
    spare, _spare = _spare, None
    if spare is not None and spare[0].is_alive():
        return spare
    if spare is not None:
        close_trial_process(spare)
    return start_trial_process()


def wait_for_spare_process(timeout=120.0):
    """Wait until the spare trial process has done its imports (benchmark)."""
    if _spare is not None:
        multiprocessing.connection.wait([_spare[2]], timeout)


def stop_spare_process():
    """End the spare trial process, if any (the search is over)."""
    global _spare
    if _spare is not None:
        close_trial_process(_spare)
        _spare = None


def close_trial_process(trial_process):
    child, task_send, result_receive = trial_process
    task_send.close()  # a waiting child reads end-of-file and exits
    child.join(timeout=5)
    if child.is_alive():
        child.terminate()
        child.join()
    result_receive.close()


def train_trial_in_child(hype_space, config, called_at=None):
    """Train one model in a fresh process. TensorFlow keeps every traced graph
    until its process ends (about 15 MB a trial even after clear_session), and
    a trial killed for using too much memory must not take the search along.
    The process was started during the previous trial, and this trial starts
    the next one."""
    global _spare
    import neural_net
    task = (hype_space, config, called_at, os.getcwd())  # a MongoDB worker moves per job
    trial_process = take_spare_process()
    try:
        trial_process[1].send(task)
    except OSError:  # the spare died while it waited (broken pipe): start afresh
        close_trial_process(trial_process)
        trial_process = start_trial_process()
        trial_process[1].send(task)
    child, task_send, result_receive = trial_process
    try:
        _spare = start_trial_process()
        kind, payload = receive_result(result_receive)
    except EOFError:  # the child died without answering
        child.join()
        close_trial_process(trial_process)
        if child.exitcode == EXIT_INTERRUPTED:  # Ctrl-C reached the child first
            raise KeyboardInterrupt from None
        return neural_net.failure_result(hype_space, ChildProcessError(
            f"the trial's process died with exit code {child.exitcode} (a negative "
            "code is the signal that killed it: -9 is usually the out-of-memory killer)"))
    except BaseException:  # Ctrl-C: do not leave processes training or waiting
        child.terminate()
        close_trial_process(trial_process)
        stop_spare_process()
        raise
    close_trial_process(trial_process)
    if kind == "dataset_error":
        raise neural_net.DatasetError(payload)
    return payload


def receive_result(result_receive):
    """The trial's ("result" | "dataset_error", payload), skipping "ready"."""
    while True:
        kind, payload = result_receive.recv()
        if kind != "ready":
            return kind, payload


def child_main(task_receive, result_send):
    """What a trial's process runs: import, say so, wait for the trial, train
    it, send the result back."""
    threading.Thread(target=exit_with_parent, daemon=True).start()
    try:
        import neural_net
        result_send.send(("ready", None))
        try:
            hype_space, config, called_at, cwd = task_receive.recv()
        except EOFError:  # the search ended without needing this process
            return
        os.chdir(cwd)  # TensorBoard/ and weights/ are relative to the trial's folder
        try:
            result_send.send(("result", train_trial(hype_space, config, called_at)))
        except neural_net.DatasetError as err:
            result_send.send(("dataset_error", str(err)))
    except (KeyboardInterrupt, BrokenPipeError):
        sys.exit(EXIT_INTERRUPTED)  # quietly: the search process reports it
    finally:
        result_send.close()
        sys.stdout.flush()


def exit_with_parent():
    """In a trial's process: stop when the search process is gone (kill -9),
    instead of training on for nobody."""
    multiprocessing.connection.wait([multiprocessing.parent_process().sentinel])
    os._exit(EXIT_INTERRUPTED)


def raise_interrupt(signum, frame):
    """SIGTERM (kill, docker stop) stops the search like Ctrl-C."""
    raise KeyboardInterrupt


def load_trials(path):
    """The Trials pickled at `path`, or new ones if there is no such file. A
    file that cannot be read is left alone and stops the search."""
    if not os.path.exists(path):
        return Trials()
    try:
        with open(path, "rb") as f:
            trials = pickle.load(f)
        if not isinstance(trials, Trials):
            raise TypeError(f"it holds a {type(trials).__name__}, not hyperopt Trials")
    except Exception as err:
        raise SearchError(
            f"{path} cannot be read ({type(err).__name__}: {err}). It was left as it "
            f"is. To start a new search, move it aside (mv {path} {path}.broken); the "
            "result files in the results folder are not affected.") from None
    return trials


def best_trial(trials):
    """(trial number, result) of the best successful trial, or None."""
    ok = [(t["tid"], t["result"]) for t in trials.trials if t["result"].get("status") == "ok"]
    return min(ok, key=lambda pair: pair[1]["loss"], default=None)


def progress_line(result, number, best, seconds, max_evals, where=""):
    """One line after each trial: number, accuracies, time and best so far."""
    of = f"/{max_evals}" if max_evals else ""
    if result.get("status") == "ok":
        head = (f"Trial {number}{of}: fine {result['fine_best_accuracy']:.4f}, "
                f"coarse {result['coarse_best_accuracy']:.4f}, {seconds:.1f} s{where}")
    else:
        error = str(result.get("error", "unknown error")).splitlines()[0][:200]
        head = f"Trial {number}{of}: FAILED after {seconds:.1f} s{where} ({error})"
    tail = (f"best so far: fine {best[1]['fine_best_accuracy']:.4f} (trial {best[0] + 1}, "
            f"{best[1]['model_name']})" if best else "no successful trial yet")
    return f"{head} | {tail}"


def run_search(config, trials=None):
    """Run trials one at a time, pickling the Trials after each one. Starts
    from `trials`, else from those in the trials file."""
    trials = load_trials(config.trials_file) if trials is None else trials
    if trials.trials:
        best = best_trial(trials)
        print(f"Resuming the search: {len(trials.trials)} trials in {config.trials_file}"
              + (f", best fine accuracy {best[1]['fine_best_accuracy']:.4f}." if best else "."))
    objective = functools.partial(optimize_cnn, config=config)
    try:
        while config.max_evals is None or len(trials.trials) < config.max_evals:
            done = len(trials.trials)
            # A fresh generator per trial: seeded runs stay reproducible across resumes.
            rstate = np.random.default_rng(None if config.seed is None else [config.seed, done])
            started = time.perf_counter()
            try:
                fmin(objective, space, algo=tpe.suggest, trials=trials, max_evals=done + 1,
                     rstate=rstate, show_progressbar=False, return_argmin=False)
            except AllTrialsFailed:
                pass  # hyperopt 0.3.0 raises this after the trial when none succeeded yet
            except KeyboardInterrupt:
                save_finished_trials(trials, done, config.trials_file)
                raise
            if len(trials.trials) == done:
                raise SearchError("hyperopt did not run a trial; is the trials file complete?")
            utils.atomic_pickle(trials, config.trials_file)
            best = best_trial(trials)
            print(progress_line(trials.trials[-1]["result"], done + 1, best,
                                time.perf_counter() - started, config.max_evals), flush=True)
            if config.plots and best and best[0] == done:
                plot_models(config, demo=False)  # model_best.png follows the best trial
    finally:
        stop_spare_process()  # the process prestarted for a next trial
    return trials


def save_finished_trials(trials, done, path):
    """On Ctrl-C: keep a trial that finished just before it, drop an unfinished one."""
    trials._dynamic_trials[:] = [t for t in trials._dynamic_trials
                                 if t["state"] == JOB_STATE_DONE]
    trials.refresh()
    if len(trials.trials) > done:
        utils.atomic_pickle(trials, path)


# ------------------------------------------------------- warm start ----

class SpaceMismatch(ValueError):
    """A stored hyperspace that the current search space cannot have drawn."""


def same_value(stored, option):
    """Equality that does not take True for 1 (use_BN vs nb_conv_pool_layers)."""
    if isinstance(stored, bool) or isinstance(option, bool):
        return type(stored) is type(option) and stored == option
    return stored == option


def encode_value(node, value, labels):
    """Record in `labels` (label -> internal value) what hyperopt must have
    drawn for `node` to evaluate to `value`: the option's index for hp.choice
    (and the draws inside the chosen option), the number for the others."""
    while node.name in ("float", "int"):
        node = node.pos_args[0]
    if node.name == "literal":
        if not same_value(value, node.obj):
            raise SpaceMismatch(f"{value!r} is not {node.obj!r}")
        return
    if node.name == "switch":  # hp.choice(label, options)
        label = node.pos_args[0].pos_args[0].obj
        for index, option in enumerate(node.pos_args[1:]):
            attempt = {}
            try:
                encode_value(option, value, attempt)
            except SpaceMismatch:
                continue
            labels.update(attempt, **{label: index})
            return
        raise SpaceMismatch(f"{label}: {value!r} is none of its choices")
    if node.name != "hyperopt_param":
        raise SpaceMismatch(f"cannot invert a {node.name!r} expression")
    label, distribution = node.pos_args[0].obj, node.pos_args[1]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SpaceMismatch(f"{label}: {value!r} is not a number")
    bounds = {k: distribution.arg[k].obj for k in ("low", "high") if k in distribution.arg}
    if distribution.name.endswith("loguniform"):
        bounds = {k: np.exp(v) for k, v in bounds.items()}
    q = distribution.arg["q"].obj if "q" in distribution.arg else 0
    low, high = bounds.get("low", -np.inf) - q, bounds.get("high", np.inf) + q
    if not low <= value <= high:
        raise SpaceMismatch(f"{label}: {value!r} is outside the search range")
    labels[label] = value


def misc_of(hype_space, tid):
    """hyperopt's `misc` for a trial that drew `hype_space`: `vals`/`idxs`
    hold one value per label the draw used and nothing for unused branches."""
    labels = {}
    missing = sorted(set(space) - set(hype_space))
    if missing:
        raise SpaceMismatch(f"no value for {', '.join(missing)}")
    for key, node in space.items():
        try:
            encode_value(node, hype_space[key], labels)
        except SpaceMismatch as err:
            where = "" if str(err).startswith(f"{key}:") else f"{key}: "
            raise SpaceMismatch(f"{where}{err}") from None
    every_label = {node.pos_args[0].obj for node in hyperopt.pyll.dfs(hyperopt.pyll.as_apply(space))
                   if node.name == "hyperopt_param"}
    return {"tid": tid, "cmd": ("domain_attachment", "FMinIter_Domain"), "workdir": None,
            "idxs": {label: [tid] if label in labels else [] for label in every_label},
            "vals": {label: [labels[label]] if label in labels else [] for label in every_label}}


def warm_start(trials, results_dir):
    """Add the trials of the result files in `results_dir` that `trials` does
    not hold yet (by model name) as finished trials, so that TPE goes on from
    them. Files that cannot be read or do not fit the search space are skipped
    with the reason. Returns the number added."""
    known = {t["result"].get("model_name") for t in trials.trials}
    results = []
    for path in utils.result_files(results_dir):
        try:
            result = utils.load_json_result(path)
            if result.get("model_name") in known:
                continue
            if result.get("status") not in ("ok", "fail"):
                raise SpaceMismatch(f"status {result.get('status')!r}")
            if result["status"] == "ok" and not isinstance(result.get("loss"), (int, float)):
                raise SpaceMismatch("no loss")
            misc_of(result.get("space") or {}, 0)  # check it fits before taking a trial id
        except (OSError, ValueError, AttributeError) as err:
            print(f"warm start: skipped {path}: {err}")
            continue
        known.add(result.get("model_name"))
        results.append(result)
    if not results:
        return 0
    tids = trials.new_trial_ids(len(results))
    docs = trials.new_trial_docs(tids, [None] * len(results), results,
                                 [misc_of(r["space"], tid) for r, tid in zip(results, tids)])
    for doc in docs:
        doc["state"] = JOB_STATE_DONE
    trials.insert_trial_docs(docs)
    trials.refresh()
    return len(docs)


# ------------------------------------------------------ over MongoDB ----

def run_mongo_search(config):
    """Queue trials in MongoDB for hyperopt_mongo_worker.py processes and
    follow them until --max-evals trials are finished or given up (or
    forever). Returns the MongoTrials."""
    import mongo_compat
    from hyperopt.mongoexp import MongoTrials
    try:
        trials = MongoTrials(mongo_compat.open_jobs(config.mongo), exp_key=config.exp_key)
    except mongo_compat.MongoUnavailable as err:
        raise SearchError(str(err)) from None
    # hyperopt's trial-id counter, created here so that ids start at 0 (created
    # by its first use, hyperopt warns and skips ahead).
    trials.handle.db.job_ids.update_one({"a": 0}, {"$setOnInsert": {"last_id": 0}},
                                        upsert=True)
    if config.warm_start:
        print(f"Warm start: added {warm_start(trials, config.warm_start)} trials from "
              f"{config.warm_start}/.")
    counts = job_counts(trials.handle.jobs, config.exp_key)
    print(f"Experiment {config.exp_key!r} in MongoDB at {utils.redact(config.mongo)}: "
          + describe_counts(counts) + ". Start workers with: python3 "
          f"hyperopt_mongo_worker.py --mongo ... --exp-key {config.exp_key}", flush=True)
    given_up = counts[JOB_STATE_ERROR]
    target = sys.maxsize if config.max_evals is None else config.max_evals - given_up
    # Seeded by how many trials exist, so a resumed search does not redraw the first ones.
    rstate = np.random.default_rng(None if config.seed is None
                                   else [config.seed, sum(counts.values())])
    # What shapes a trial travels to the workers inside the pickled objective;
    # the address (and its password) does not.
    objective = functools.partial(optimize_cnn, config=dataclasses.replace(config, mongo=None))
    follow = follow_workers(config, trials)
    try:
        fmin(objective, space, algo=tpe.suggest, trials=trials, max_evals=target,
             max_queue_len=config.queue_len, rstate=rstate, early_stop_fn=follow,
             show_progressbar=False, return_argmin=False)
    except AllTrialsFailed:
        pass  # hyperopt 0.3.0 raises this at the end when no trial succeeded
    follow(trials)
    return trials


def job_counts(jobs, exp_key):
    """How many of the experiment's trials are in each hyperopt job state."""
    return {state: jobs.count_documents({"exp_key": exp_key, "state": state})
            for state in (JOB_STATE_NEW, JOB_STATE_RUNNING, JOB_STATE_DONE, JOB_STATE_ERROR)}


def describe_counts(counts):
    if not any(counts.values()):
        return "new experiment"
    return (f"{counts[JOB_STATE_DONE]} trials finished, {counts[JOB_STATE_RUNNING]} "
            f"running, {counts[JOB_STATE_NEW]} queued, {counts[JOB_STATE_ERROR]} given up")


def follow_workers(config, trials):
    """The function fmin calls after each poll of MongoDB (as its
    early_stop_fn; it never stops the search): requeue the trials of dead
    workers, print each newly finished trial."""
    jobs = trials.handle.jobs
    reported = {t["tid"] for t in trials.trials if t["state"] == JOB_STATE_DONE}
    failed = {job["tid"] for job in jobs.find(
        {"exp_key": config.exp_key, "state": JOB_STATE_ERROR}, projection=["tid"])}

    def follow(trials, *_):
        for message in requeue_stale_jobs(jobs, config):
            print(message, flush=True)
        for job in jobs.find({"exp_key": config.exp_key, "state": JOB_STATE_ERROR,
                              "tid": {"$nin": sorted(failed)}}):
            failed.add(job["tid"])
            if job.get("error", [""])[0] != "WorkerLost":  # those were printed above
                print(f"Trial {job['tid'] + 1}: could not run on {job.get('owner')}: "
                      f"{': '.join(map(str, job.get('error', ['unknown error'])))}",
                      flush=True)
        finished = [t for t in trials.trials
                    if t["state"] == JOB_STATE_DONE and t["tid"] not in reported]
        if finished:
            best = best_trial(trials)
            for trial in sorted(finished, key=lambda t: t["refresh_time"]):
                reported.add(trial["tid"])
                seconds = ((trial["refresh_time"] - trial["book_time"]).total_seconds()
                           if trial.get("book_time") and trial.get("refresh_time") else 0.0)
                of = f"/{config.max_evals}" if config.max_evals else ""
                print(progress_line(trial["result"], trial["tid"] + 1, best, seconds, None,
                                    f" on {trial['owner']}, {len(reported)}{of} finished"),
                      flush=True)
        return False, []
    return follow


# hyperopt's MongoJobs.update writes to {_id, version v} and then checks that
# {_id, version v+1} exists: a jump of 2 makes both fail for a worker whose
# trial was taken away, so its late result never lands on the requeued trial.
VERSION_BUMP = 2


def requeue_stale_jobs(jobs, config, now=None):
    """Running trials whose worker sent no heartbeat for --stale-after seconds
    (killed, machine gone) go back to the queue; a trial that has already
    been requeued --max-requeues times is given up (state error, with the
    reason) so that one that kills every worker cannot loop forever. Each
    change bumps the document's version by VERSION_BUMP, so a worker that was
    only slow cannot write over it later. Returns one message per change."""
    now = now or jobs.database.command("hello")["localTime"]  # the server's clock, as heartbeats
    cutoff = now - datetime.timedelta(seconds=config.stale_after)
    messages = []
    stale = jobs.find({"exp_key": config.exp_key, "state": JOB_STATE_RUNNING,
                       "refresh_time": {"$lt": cutoff}})
    for job in list(stale):
        silent = (now - job["refresh_time"]).total_seconds()
        requeues = job.get("requeue_count", 0)
        lost = f"trial {job['tid'] + 1}: worker {job['owner']} silent for {silent:.0f} s"
        if requeues >= config.max_requeues:
            reason = (f"given up: its worker died or stopped responding {requeues + 1} "
                      f"times (--max-requeues {config.max_requeues}); the last was "
                      f"{job['owner']}. Out of memory is the usual cause.")
            change = {"$set": {"state": JOB_STATE_ERROR, "error": ["WorkerLost", reason]},
                      "$inc": {"version": VERSION_BUMP}}
            message = f"{lost}: {reason}"
        else:
            change = {"$set": {"state": JOB_STATE_NEW, "owner": None, "book_time": None,
                               "refresh_time": None},
                      "$inc": {"version": VERSION_BUMP, "requeue_count": 1}}
            message = f"{lost}: put back in the queue ({requeues + 1}/{config.max_requeues})"
        # Only if nothing changed since we looked (a late heartbeat wins).
        unchanged = {key: job[key] for key in ("_id", "state", "owner", "refresh_time")}
        if jobs.update_one(unchanged, change).modified_count:
            messages.append(message)
    return messages


_plots_unavailable = False


def plot_models(config, demo=True):
    """Draw the demo space and the best space found so far (or the original's
    best) with keras.utils.plot_model; warn once if graphviz/pydot is missing."""
    global _plots_unavailable
    import keras
    import neural_net
    if not config.in_process:
        neural_net.keep_off_the_gpu()  # the trial processes need all of it
    best = utils.load_best_hyperspace(config.results_dir) or SPACE_BEST_ORIGINAL
    plots = [(DEMO_PLOT, SPACE_DEMO)] if demo else []
    for path, hype_space in plots + [(BEST_PLOT, best)]:
        if _plots_unavailable:
            return
        model = neural_net.build_model(hype_space)
        try:
            keras.utils.plot_model(model, to_file=path, show_shapes=True)
        except ImportError:
            _plots_unavailable = True
            print(f"warning: cannot draw {path}: pydot or graphviz is missing "
                  "(pip install pydot; make install_graph_viz). Going on without model plots.")
        finally:
            del model
            keras.backend.clear_session()


def build_parser():
    parser = utils.OneLineErrorParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="A flag wins over its environment variable. DATASET_SIZE only counts "
               "when CODE_TESTING=1 is set too, as in the original scripts.")
    utils.add_options(parser, utils.SEARCH_OPTIONS + utils.DRIVER_OPTIONS)
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = utils.read_config(args)
    except utils.UsageError as err:
        parser.exit(2, f"{parser.prog}: error: {err} (see --help)\n")
    signal.signal(signal.SIGTERM, raise_interrupt)
    if config.mongo:
        return main_mongo(config)
    try:
        Path(config.results_dir).mkdir(parents=True, exist_ok=True)
        trials = load_trials(config.trials_file)  # refuse a broken file before any work
        if config.warm_start:
            added = warm_start(trials, config.warm_start)
            print(f"Warm start: added {added} trials from {config.warm_start}/ "
                  f"({len(trials.trials)} in the search).")
            if added:
                utils.atomic_pickle(trials, config.trials_file)
        elif not trials.trials and utils.result_files(config.results_dir):
            print(f"note: {config.trials_file} does not exist but {config.results_dir}/ "
                  f"holds {len(utils.result_files(config.results_dir))} result files; to let "
                  f"TPE start from them, run again with --warm-start {config.results_dir}")
    except (SearchError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    import neural_net
    try:
        neural_net.training_data(config)  # a missing data set stops us here, once
        if not config.in_process:
            neural_net.unload_cifar100()  # the trials' processes load their own copy
        if config.plots:
            plot_models(config)
        run_search(config, trials)
    except KeyboardInterrupt:
        print(f"\nInterrupted. Finished trials are saved in {config.trials_file} and "
              f"{config.results_dir}/; run the same command again to resume.", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (SearchError, neural_net.DatasetError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"Done: {config.max_evals} trials in {config.trials_file}; "
          f"results in {config.results_dir}/.")
    return 0


def main_mongo(config):
    """main() for the search over MongoDB: no data set, no training here."""
    import pymongo.errors
    try:
        trials = run_mongo_search(config)
    except KeyboardInterrupt:
        print("\nInterrupted. The trials stay in MongoDB: workers finish those they "
              "are running and the queued ones wait. Run the same command again to "
              "resume.", file=sys.stderr)
        return EXIT_INTERRUPTED
    except SearchError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except pymongo.errors.PyMongoError as err:
        print(f"error: lost MongoDB at {utils.redact(config.mongo)} ({err}). The "
              "experiment is safe in the database: run the same command again once "
              "MongoDB is back.", file=sys.stderr)
        return 1
    counts = job_counts(trials.handle.jobs, config.exp_key)
    print(f"Done: experiment {config.exp_key!r} has {describe_counts(counts)}. Each "
          "trial's JSON is in the results folder of the worker that ran it.")
    return 0


if __name__ == "__main__":
    # Run through the module's own name, not __main__, so that the objective
    # pickled for MongoDB workers refers to hyperopt_optimize.optimize_cnn.
    import hyperopt_optimize
    sys.exit(hyperopt_optimize.main())
