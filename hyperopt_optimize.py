"""Search the hyperparameters and the architecture of the CIFAR-100 CNN with
hyperopt's TPE (or of the same CNN on CIFAR-10, a folder of your own images
or a synthetic set: --dataset).

Every trial trains one model (neural_net.build_and_train, in a process of its
own: hks/trials/trial_process.py), writes its result to results/<model_name>.txt.json,
and hyperopt's Trials are pickled to results.pkl after every trial,
atomically, so that running the same command again resumes the search. Runs
until interrupted, or until --max-evals trials exist.

With --mongo (or MONGO_DB_HOST) this process trains nothing: hks/mongo/mongo_search.py
queues the trials in MongoDB for hyperopt_mongo_worker.py processes on any
number of machines, puts back in the queue the trials of workers that died,
and prints each result as it arrives. Running the same command again resumes
the experiment.
"""

import argparse
import dataclasses
import functools
import pickle
import signal
import sys
import time
from pathlib import Path

import numpy as np
from hyperopt import JOB_STATE_DONE, Trials, fmin, hp, tpe
from hyperopt.exceptions import AllTrialsFailed

from hks import moved
from hks.core import console, flags, storage
from hks.data import dataset, image_folders
from hks.mongo import mongo_search, mongo_settings
from hks.reports import tensorboard_hparams
from hks.stopping import pruning
from hks.trials import kept_models, trial_process, warm_start

# neural_net imports Keras and TensorFlow, which take seconds: functions
# import it when needed, so --help and bad flags are answered at once.

# The search space, key for key the original's. Multipliers are log-uniform so
# that they vary by ratios; quantised values arrive as floats (320.0).
space = {
    # Learning rate = 0.001 x this:
    "lr_rate_mult": hp.loguniform("lr_rate_mult", -0.5, 0.5),
    # L2 weight decay = 0.0007 x this, on every kernel:
    "l2_weight_reg_mult": hp.loguniform("l2_weight_reg_mult", -1.3, 1.3),
    "batch_size": hp.quniform("batch_size", 100, 700, 5),
    "optimizer": hp.choice("optimizer", ["Adam", "Nadam", "RMSprop"]),
    # Weight of the 20-class coarse loss next to the fine loss (1.0); drawn
    # but unused with one head (the space stays the same for every data set):
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

DATA_SET_KEY = "hks_data_set"  # in Trials.attachments: what the trials were run on
DEMO_PLOT = "model_demo.png"
BEST_PLOT = "model_best.png"


class SearchError(Exception):
    """The search cannot start or go on; the message says what to do."""


def optimize_cnn(hype_space, config, earlier=None):
    """hyperopt's objective: train one model with the flags.TrialSettings
    `config`, save its result, return it. On a MongoDB worker `config` holds
    the driver's settings and that worker's own folders. `earlier`: the
    curves of the search's earlier completed trials (or a function that reads
    them), for --prune; None trains every epoch.

    Any error becomes a failed trial (with its traceback) so the search goes
    on; only a missing data set and Ctrl-C stop the search."""
    called_at = time.time()
    if config.in_process:
        result = trial_process.train_here(hype_space, config, called_at, earlier=earlier)
    else:
        result = trial_process.train_in_child(hype_space, config, called_at, earlier=earlier)
    if trial_process.abandoned.is_set():  # another MongoDB worker has this trial now
        return result
    if "dataset" not in result:  # a trial that failed before it had its data
        result.update(dataset.identity_keys(config))
    try:
        storage.save_json_result(result, config.results_dir)
    except OSError as err:
        print(f"warning: could not write the result of {result['model_name']} to "
              f"{config.results_dir}/ ({err}); it is still kept with the search's trials "
              "(--trials-file, or MongoDB).")
    if config.tensorboard and result.get("status") == "ok":
        tensorboard_hparams.log_trial(result, storage.TENSORBOARD_DIR, config.results_dir,
                                      tensorboard_hparams.conditional_hparams(space))
    return result


# --------------------------------------------------- the local search ----

def load_trials(path):
    """The Trials pickled at `path`, or new ones if there is no such file. A
    file that cannot be read is left alone and stops the search."""
    if not Path(path).exists():
        return Trials()
    if Path(path).is_dir():
        raise SearchError(f"--trials-file {path} is a folder; give the file to keep the "
                          "search in (default results.pkl)")
    moved.allow_old_pickles()  # a file pickled before the package existed
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


def run_search(config, trials=None):
    """Run trials one at a time, pickling the Trials after each one. Starts
    from `trials`, else from those in the trials file."""
    trials = load_trials(config.trials_file) if trials is None else trials
    if not Path(config.trials_file).exists():
        # Saved before the first trial: its time tells take_back which result
        # files a search stopped before it saved them.
        storage.atomic_pickle(trials, config.trials_file)
    if trials.trials:
        best = storage.best_trial(trials)
        print(f"Resuming the search: {len(trials.trials)} trials in {config.trials_file}"
              + (f", best fine accuracy {best[1]['fine_best_accuracy']:.4f}." if best else "."))
    settings = flags.subset(flags.TrialSettings, config)
    rule = pruning.rule_of(config)
    of = f"/{config.max_evals}" if config.max_evals else ""
    try:
        while config.max_evals is None or len(trials.trials) < config.max_evals:
            if search_has_stalled(trials, config):
                break
            done = len(trials.trials)
            # With --prune or --keep-models, the finished trials' curves to compare with:
            earlier = (pruning.trials_curves(trials)
                       if rule is not None or config.keep_models else None)
            objective = functools.partial(optimize_cnn, config=settings, earlier=earlier)
            # A fresh generator per trial: seeded runs stay reproducible across resumes.
            rstate = np.random.default_rng(None if config.seed is None else [config.seed, done])
            trial_process.expect_more(config.max_evals is None or done + 1 < config.max_evals)
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
            storage.atomic_pickle(trials, config.trials_file)
            best = storage.best_trial(trials)
            print(console.progress_line(trials.trials[-1]["result"], done + 1,
                                        time.perf_counter() - started, of=of,
                                        best=best or False), flush=True)
            if config.plots and best and best[0] == done:
                plot_models(config, demo=False)  # model_best.png follows the best trial
    finally:
        trial_process.stop_spare()  # the process prestarted for a next trial
        trial_process.expect_more(True)
    return trials


def search_has_stalled(trials, config):
    """--stop-after-no-improvement: whether the search ends here (said if so)."""
    line = pruning.stalled([t["result"] for t in trials.trials], config.stop_after)
    if line:
        print(line, flush=True)
    return bool(line)


def check_data_set(trials, info, path):
    """Refuse to resume trials run on another data set (their accuracies
    would not compare); record the data set in the trials file otherwise.
    A trials file of an earlier version is taken to be of its first trial's
    data set (CIFAR-100 for results without one)."""
    current = dataset.identity(info)
    recorded = trials.attachments.get(DATA_SET_KEY)
    if recorded is None and trials.trials:
        recorded = dataset.identity(trials.trials[0]["result"])
    if recorded is not None and not dataset.same_identity(recorded, current):
        raise SearchError(
            f"{path} holds trials run on {dataset.describe_identity(recorded)}, not on "
            f"{dataset.describe_identity(current)}: their accuracies would not compare. "
            f"Give this search its own --trials-file and --results-dir, or run with the "
            f"data set of those trials (--dataset, --image-size).")
    if recorded is None or tuple(recorded) != current:
        trials.attachments[DATA_SET_KEY] = list(current)
        storage.atomic_pickle(trials, path)


def save_finished_trials(trials, done, path):
    """On Ctrl-C: keep a trial that finished just before it, drop an unfinished one."""
    trials._dynamic_trials[:] = [t for t in trials._dynamic_trials
                                 if t["state"] == JOB_STATE_DONE]
    trials.refresh()
    if len(trials.trials) > done:
        storage.atomic_pickle(trials, path)


# ------------------------------------------------------ model plots ----

_plots_unavailable = False


def plot_models(config, demo=True):
    """Draw the demo space and the best space found so far (or the original's
    best) with keras.utils.plot_model; warn once if graphviz/pydot is missing."""
    global _plots_unavailable
    import neural_net  # first: it quiets TensorFlow's start-up
    from hks.training import device
    import keras
    if not config.in_process:
        device.keep_off_the_gpu()  # the trial processes need all of it
    best = storage.load_best_hyperspace(config.results_dir) or SPACE_BEST_ORIGINAL
    plots = [(DEMO_PLOT, SPACE_DEMO)] if demo else []
    shape = dataset.model_shape(dataset.identity_keys(config))
    for path, hype_space in plots + [(BEST_PLOT, best)]:
        if _plots_unavailable:
            return
        model = neural_net.build_model(hype_space, **shape)
        try:
            keras.utils.plot_model(model, to_file=path, show_shapes=True)
        except ImportError:
            _plots_unavailable = True
            print(f"warning: cannot draw {path}: pydot or graphviz is missing "
                  "(pip install pydot; make install_graph_viz). Going on without model plots.")
        finally:
            del model
            keras.backend.clear_session()


# ----------------------------------------------------- command line ----

def build_parser():
    parser = flags.OneLineErrorParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="A flag wins over its environment variable. DATASET_SIZE only counts "
               "when CODE_TESTING=1 is set too, as in the original scripts.")
    flags.add_options(parser, flags.SearchSettings, mongo_settings.DriverSettings)
    return parser


def main(argv=None):
    _, (config, driver) = flags.parse_or_exit(
        build_parser(), [flags.SearchSettings, mongo_settings.DriverSettings], argv)
    config = with_absolute_folder(config)
    signal.signal(signal.SIGTERM, console.raise_interrupt)
    rule = pruning.rule_of(config)
    if rule is not None and rule.never_acts(config.epochs):
        print(rule.never_acts(config.epochs), flush=True)
    if driver.mongo:  # no data set, no training here
        return mongo_search.run_driver(config, driver, optimize_cnn, space,
                                       functools.partial(warm_start.warm_start, space=space))
    try:
        if dataset.is_folder(config.dataset):  # a wrong path or layout: said at once
            image_folders.scan_folder(Path(config.dataset))
        trials = prepare_trials(config)
    except (SearchError, OSError, dataset.DatasetError) as err:
        print(f"error: {storage.os_error_text(err)}", file=sys.stderr)
        return 1
    try:
        dataset.training_data(config)  # a missing data set stops us here, once
        check_data_set(trials, dataset.load_dataset(config).info, config.trials_file)
        if not config.in_process:
            dataset.unload()  # the trials' processes load their own copy
        if config.plots:
            plot_models(config)
        trials = run_search(config, trials)
    except KeyboardInterrupt:
        print(f"\nInterrupted. Finished trials are saved in {config.trials_file} and "
              f"{config.results_dir}/; run the same command again to resume.", file=sys.stderr)
        return console.EXIT_INTERRUPTED
    except (SearchError, dataset.DatasetError, OSError) as err:
        print(f"error: {storage.os_error_text(err)}", file=sys.stderr)
        return 1
    results = [t["result"] for t in trials.trials]
    print(f"Done: {len(results)} trials in {config.trials_file}; results in "
          f"{config.results_dir}/. {pruning.summary(results, config.epochs)}".rstrip())
    print(kept_models.summary(config.results_dir, config.keep_models))
    return 0


def with_absolute_folder(config):
    """--dataset DIR as an absolute path: trial processes and MongoDB workers
    run in other folders."""
    return dataclasses.replace(config, dataset=dataset.recorded_name(config.dataset))


def prepare_trials(config):
    """The results folder and the search's Trials (a broken trials file is
    refused before any work), with the trials it missed (warm_start.take_back) and
    --warm-start's trials added."""
    Path(config.results_dir).mkdir(parents=True, exist_ok=True)
    trials = load_trials(config.trials_file)
    taken = warm_start.take_back(trials, config, space)
    if taken:
        print(f"Took back {taken} trials whose result file was written after "
              f"{config.trials_file} was last saved (the search stopped between the two).")
        storage.atomic_pickle(trials, config.trials_file)
    if config.warm_start:
        added = warm_start.warm_start(trials, config.warm_start, space)
        print(f"Warm start: added {added} trials from {config.warm_start}/ "
              f"({len(trials.trials)} in the search).")
        if added:
            storage.atomic_pickle(trials, config.trials_file)
    elif not trials.trials and storage.result_files(config.results_dir):
        print(f"note: {config.trials_file} does not exist but {config.results_dir}/ "
              f"holds {len(storage.result_files(config.results_dir))} result files; to let "
              f"TPE start from them, run again with --warm-start {config.results_dir}")
    return trials


if __name__ == "__main__":
    # Run through the module's own name, not __main__, so that the objective
    # pickled for MongoDB workers refers to hyperopt_optimize.optimize_cnn.
    import hyperopt_optimize
    sys.exit(hyperopt_optimize.main())
