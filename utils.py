"""Shared helpers: settings from flags and environment variables, atomic file
writes, the JSON result of each trial, and the small command-line helpers
every script uses.

Each setting is declared once, as a field of the settings class of whoever
reads it, with its flag and its environment variable (`setting` below):
TrialSettings is what one trial reads, SearchSettings adds what
hyperopt_optimize.py reads; mongo_search.py declares the MongoDB driver's and
workers' own. `read_settings` is the only place that reads them. Nothing here
imports Keras, so reading results and parsing flags start at once.
"""

import argparse
import contextlib
import dataclasses
import glob
import json
import math
import os
import pickle
import sys
import tempfile
from pathlib import Path

import numpy as np

RESULTS_DIR = "results"
RESULT_SUFFIX = ".txt.json"
FAILED_PREFIX = "failed_"  # sorts before "model_", so the best result stays last
ACCURACY_DECIMALS = 6
FILE_MODE = 0o644  # results and results.pkl: readable by others, like any file
PRECISIONS = ("auto", "float32", "mixed_bfloat16", "mixed_float16")
PRUNE_RULES = ("median", "none")  # --prune; the rule itself is in pruning.py
DATASETS = ("cifar100", "cifar10", "synthetic")  # --dataset, or a folder (dataset.py)
MIN_IMAGE_SIZE = 8  # three stages halve the image: 8 -> 4 -> 2 -> 1
CACHE_FOLDER_NAME = "hyperopt-keras-sample"  # under ~/.cache: decoded image folders
TENSORBOARD_DIR = "TensorBoard"  # per-epoch logs and HParams runs, in the trial's folder
WEIGHTS_DIR = "weights"  # best weights of a retrained model: <id>.weights.h5 and <id>.space.json
WEIGHTS_SUFFIX = ".weights.h5"
SPACE_SUFFIX = ".space.json"
DATASET_SUFFIX = ".dataset.json"  # beside the weights: the data set's image size and heads
EXIT_INTERRUPTED = 130  # Ctrl-C or SIGTERM, as a shell reports it


class UsageError(Exception):
    """A flag or an environment variable holds a value that cannot be used."""


# --- parsers for option values: each raises ValueError with a short reason ---

def whole_number(text, minimum):
    try:
        value = int(str(text).strip())
    except ValueError:
        raise ValueError(f"{text!r} is not a whole number") from None
    if value < minimum:
        raise ValueError(f"{text!r} must be at least {minimum}")
    return value


def positive_int(text):
    return whole_number(text, 1)


def non_negative_int(text):
    return whole_number(text, 0)


def fraction(text):
    try:
        value = float(str(text).strip())
    except ValueError:
        raise ValueError(f"{text!r} is not a number") from None
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{text!r} must be at least 0 and below 1")
    return value


def positive_number(text):
    try:
        value = float(str(text).strip())
    except ValueError:
        raise ValueError(f"{text!r} is not a number") from None
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"{text!r} must be a number above 0")
    return value


def seconds_or_forever(text):
    """Seconds; 0 or 'none' mean no limit (None)."""
    if str(text).strip().lower() in ("0", "none", "forever"):
        return None
    return positive_number(text)


def flag_value(text):
    value = str(text).strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("", "0", "false", "no", "off"):
        return False
    raise ValueError(f"{text!r} is not one of 1/0, true/false, yes/no")


def precision_name(text):
    value = str(text).strip().lower()
    if value not in PRECISIONS:
        raise ValueError(f"{text!r} is not one of {', '.join(PRECISIONS)}")
    return value


def prune_rule(text):
    value = str(text).strip().lower()
    if value not in PRUNE_RULES:
        raise ValueError(f"{text!r} is not one of {', '.join(PRUNE_RULES)}")
    return value


def dataset_spec(text):
    """One of DATASETS (any case), or a folder's path (checked when loaded:
    a MongoDB driver names a folder that only its workers may hold)."""
    value = str(text).strip()
    if not value:
        raise ValueError(f"give one of {', '.join(DATASETS)} or a folder of images")
    return value.lower() if value.lower() in DATASETS else value


def image_size(text):
    return whole_number(text, MIN_IMAGE_SIZE)


def xdg_cache(environ):
    """--cache-dir's fallback: $XDG_CACHE_HOME/hyperopt-keras-sample."""
    if environ.get("XDG_CACHE_HOME"):
        return "XDG_CACHE_HOME", os.path.join(environ["XDG_CACHE_HOME"], CACHE_FOLDER_NAME)
    return None


def existing_dir(text):
    if not os.path.isdir(os.path.expanduser(text)):
        raise ValueError(f"folder {text!r} does not exist")
    return text


# --- settings: one dataclass per reader, each field with its flag and variable ---

@dataclasses.dataclass(frozen=True)
class Option:
    """How a setting is given: `flag` (None: only the variable), environment
    variable `env`, `parse` (text -> value, ValueError with a reason), the
    help text; `fallback(environ)` gives (source, text) when neither is set;
    `testing_only`: the variable counts only with CODE_TESTING=1 (the seed's
    rule for DATASET_SIZE)."""
    flag: str | None
    env: str
    parse: object
    help: str
    fallback: object = None
    testing_only: bool = False


def setting(default, flag, env, parse, help, **more):
    """A settings field whose value comes from `flag`, else `env`, else `default`."""
    return dataclasses.field(default=default,
                             metadata={"option": Option(flag, env, parse, help, **more)})


@dataclasses.dataclass
class MachineSettings:
    """Where this machine keeps things. A MongoDB worker uses its own, whatever
    the driver's machine has."""

    data_dir: str = setting("ml_req", "--data-dir", "HKS_DATA_DIR", existing_dir,
                            "folder holding cifar-100-python.tar.gz (and cifar-10-python.tar.gz)")
    results_dir: str = setting(RESULTS_DIR, "--results-dir", "HKS_RESULTS_DIR", str,
                               "folder where every trial's result JSON is written")
    offline: bool = setting(False, "--offline", "HKS_OFFLINE", flag_value,
                            "never try to download CIFAR-100")
    keras_home: str = setting(os.path.join(os.path.expanduser("~"), ".keras"), None,
                              "KERAS_HOME", str, "Keras' folder, whose datasets/ is searched")
    cache_dir: str = setting(
        os.path.join(os.path.expanduser("~"), ".cache", CACHE_FOLDER_NAME), "--cache-dir",
        "HKS_CACHE_DIR", str, "where folders of images are kept decoded (one .npz per "
        "folder and image size; never inside the image folder; default "
        "$XDG_CACHE_HOME/hyperopt-keras-sample if set)", fallback=xdg_cache)


@dataclasses.dataclass
class TrialSettings(MachineSettings):
    """What one trial reads (the objective, neural_net, dataset). The MongoDB
    driver sends these to its workers, who put in their own MachineSettings."""

    dataset: str = setting(
        "cifar100", "--dataset", "HKS_DATASET", dataset_spec,
        "the images to search on: cifar100 (two heads, 100 fine and 20 coarse labels), "
        "cifar10 (one head of 10 classes), synthetic (a small made-up set for a first "
        "run without a download; its accuracies mean nothing) or a folder: "
        "DIR/<class>/<image> (one head) or DIR/<group>/<class>/<image> (fine and "
        "coarse heads), optionally split into DIR/train/ and DIR/test/. With one head "
        "coarse_labels_weight is still drawn but not used, so the space and a warm start "
        "from CIFAR-100 results stay the same (README: Your own images)")
    test_split: float = setting(
        0.2, "--test-split", "HKS_TEST_SPLIT", fraction,
        "for a folder without train/ and test/: the fraction of each class held out "
        "for testing (stratified, the same draw in every trial)")
    image_size: int = setting(
        32, "--image-size", "HKS_IMAGE_SIZE", image_size,
        f"images are resized to N x N pixels (at least {MIN_IMAGE_SIZE}; 32 is CIFAR's "
        "and what the architecture was designed for)")
    epochs: int = setting(100, "--epochs", "HKS_EPOCHS", positive_int,
                          "training epochs per trial")
    dataset_size: int | None = setting(
        None, "--dataset-size", "DATASET_SIZE", positive_int,
        "use only N images, 80%% for training and 20%% for testing (the variable "
        "counts only with CODE_TESTING=1)", testing_only=True)
    val_split: float = setting(
        0.0, "--val-split", "HKS_VAL_SPLIT", fraction,
        "hold out this fraction of the training images for validation and report "
        "test accuracy separately (default 0: validate on the test split, as the "
        "original did)")
    tensorboard: bool = setting(False, "--tensorboard", "HKS_TENSORBOARD", flag_value,
                                "write each trial's per-epoch scalars to TensorBoard/<model_name>/")
    precision: str = setting(
        "auto", "--precision", "HKS_PRECISION", precision_name,
        "what the model computes in: auto (mixed_bfloat16 on a GPU of compute "
        "capability 8.0 and up, mixed_float16 on an older GPU, float32 on a CPU), "
        "float32, mixed_bfloat16 or mixed_float16; the output heads stay float32")
    in_process: bool = setting(
        False, "--in-process", "HKS_IN_PROCESS", flag_value,
        "train each trial inside the search process instead of a fresh child "
        "process: starts faster, but TensorFlow then keeps about 15 MB of graphs "
        "per trial and an out-of-memory kill ends the search")
    prune: str = setting(
        "median", "--prune", "HKS_PRUNE", prune_rule,
        "stop hopeless trials early: median (after an epoch, stop a trial whose "
        "best validation fine accuracy so far is below the median of the earlier "
        "completed trials at that epoch) or none. Replayed on the original search's "
        "42 learning curves, the default settings save 52.5%% of the epochs and keep "
        "its best trial in every order (README: Stopping hopeless trials)")
    prune_startup: int = setting(
        4, "--prune-startup", "HKS_PRUNE_STARTUP", positive_int,
        "prune only at epochs that at least N completed (not pruned) trials reached")
    prune_warmup: int = setting(
        25, "--prune-warmup", "HKS_PRUNE_WARMUP", non_negative_int,
        "never prune at or before this epoch")


@dataclasses.dataclass
class SearchSettings(TrialSettings):
    """What hyperopt_optimize.py reads on top of the trial's: the search itself."""

    max_evals: int | None = setting(
        None, "--max-evals", "HKS_MAX_EVALS", positive_int,
        "stop once this many trials exist in total, counting those of earlier runs "
        "(default: run until interrupted)")
    trials_file: str = setting("results.pkl", "--trials-file", "HKS_TRIALS_FILE", str,
                               "pickle of hyperopt's Trials, rewritten after every "
                               "trial; the search resumes from it")
    seed: int | None = setting(None, "--seed", "HKS_SEED", non_negative_int,
                               "seed for hyperopt's suggestions (default: random)")
    plots: bool = setting(True, "--no-plots", "HKS_PLOTS", flag_value,
                          "do not draw model_demo.png and model_best.png")
    warm_start: str | None = setting(
        None, "--warm-start", "HKS_WARM_START", existing_dir,
        "first add the trials of the result JSON files in this folder (e.g. "
        "results/, after losing results.pkl) so TPE goes on from them; files "
        "already in the search are not added twice")
    stop_after: int | None = setting(
        None, "--stop-after-no-improvement", "HKS_STOP_AFTER", positive_int,
        "end the search once N trials in a row found no new best fine accuracy "
        "(hyperopt's no_progress_loss; default: never)")


Config = SearchSettings  # the name scripts written for earlier versions use


def options_of(kind):
    """{field name: Option} of a settings class."""
    return {f.name: f.metadata["option"] for f in dataclasses.fields(kind)
            if "option" in f.metadata}


def defaults_of(kind):
    return {f.name: f.default for f in dataclasses.fields(kind)}


def subset(kind, settings):
    """The `kind` settings held by a larger settings object (e.g. the
    TrialSettings of a SearchSettings): what a trial needs and nothing else."""
    return kind(**{f.name: getattr(settings, f.name) for f in dataclasses.fields(kind)})


def add_options(parser, *kinds, only=None):
    """Add the flags of these settings classes (or `only` those named) to an
    argparse parser, each once. Defaults stay None, so `read_settings` can
    tell a flag given from one left out."""
    added = set()
    for kind in kinds:
        defaults = defaults_of(kind)
        for name, option in options_of(kind).items():
            if option.flag is None or name in added or (only and name not in only):
                continue
            added.add(name)
            default = defaults[name]
            help_text = f"{option.help} [env {option.env}; default {default}]"
            if isinstance(default, bool):
                parser.add_argument(option.flag, dest=name, action="store_const",
                                    const=not default,  # --tensorboard on, --no-plots off
                                    default=None, help=help_text)
            else:
                metavar = ("N" if option.parse in (positive_int, non_negative_int, image_size)
                           else None)
                parser.add_argument(option.flag, dest=name, default=None, metavar=metavar,
                                    help=help_text)


def read_settings(kind, args=None, environ=None, only=None):
    """The one place where settings are read: a flag wins over its environment
    variable, which wins over the default (`only` these names, if given; the
    others keep their defaults). Raises UsageError on a bad value."""
    environ = os.environ if environ is None else environ
    values = {}
    for name, option in options_of(kind).items():
        if only and name not in only:
            continue
        given = getattr(args, name, None) if args is not None else None
        if given is not None:
            source, raw = option.flag, given
        elif environ.get(option.env, "") != "":
            if option.testing_only and not code_testing(environ):
                continue
            source, raw = option.env, environ[option.env]
        elif option.fallback and option.fallback(environ):
            source, raw = option.fallback(environ)
        else:
            continue
        if isinstance(raw, bool):
            values[name] = raw
            continue
        try:
            values[name] = option.parse(raw)
        except ValueError as err:
            raise UsageError(f"{source}: {err}") from None
    return kind(**values)


def chosen(kind, name, args=None, environ=None):
    """Whether the user set setting `name` (its flag or its variable), rather
    than leaving its default."""
    environ = os.environ if environ is None else environ
    option = options_of(kind)[name]
    return getattr(args, name, None) is not None or environ.get(option.env, "") != ""


def code_testing(environ):
    try:
        return flag_value(environ.get("CODE_TESTING", "0"))
    except ValueError as err:
        raise UsageError(f"CODE_TESTING: {err}") from None


# --- command lines ---

class OneLineErrorParser(argparse.ArgumentParser):
    """argparse that refuses a bad flag with one line and exit code 2, and
    takes no abbreviations (--dataset is not --dataset-size)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def parse_or_exit(parser, kinds, argv=None, environ=None, only=None):
    """Parse the command line and read one settings object per class in
    `kinds` (`only` the settings named, if given); a bad flag or variable ends
    the program with one line and exit code 2. Returns (args, [settings, ...])."""
    args = parser.parse_args(argv)
    try:
        return args, [read_settings(kind, args, environ, only) for kind in kinds]
    except UsageError as err:
        parser.error(str(err))


def argparse_type(parse):
    """An argparse `type` from one of the parsers above: its ValueError becomes
    argparse's one-line error."""
    def parse_or_complain(text):
        try:
            return parse(text)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None
    parse_or_complain.__name__ = parse.__name__
    return parse_or_complain


def raise_interrupt(signum, frame):
    """SIGTERM (kill, docker stop) stops like Ctrl-C: install with
    signal.signal(signal.SIGTERM, utils.raise_interrupt)."""
    raise KeyboardInterrupt


QUIET_MARK = "HKS_QUIET_TF_LOGS"  # set with TF_CPP_MIN_LOG_LEVEL when the scripts chose it


def quiet_tensorflow_logs():
    """Unless the user chose TF_CPP_MIN_LOG_LEVEL, hide TensorFlow's C++ INFO
    and WARNING logs (errors still show). Call before TensorFlow is imported;
    trial processes inherit the choice. True when the scripts chose it."""
    if "TF_CPP_MIN_LOG_LEVEL" not in os.environ:
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
        os.environ[QUIET_MARK] = "1"
    return os.environ.get(QUIET_MARK) == "1"


# Lines TensorFlow's C++ start-up writes to stderr whatever TF_CPP_MIN_LOG_LEVEL
# says (they come before its logging is set up), none of which asks anything of
# the user ("Unable to register cuDNN factory: ... already registered" is an
# error line, and a harmless one)...
STARTUP_NOISE = ("All log messages before absl::InitializeLog()", "oneDNN custom operations",
                 "cudart_stub.cc", "cpu_feature_guard.cc", "To enable the following instructions",
                 "Unable to register cu")
# ...and on a machine without an NVIDIA driver, the error that CUDA found none.
NO_DRIVER_NOISE = ("failed call to cuInit",)
NVIDIA_DRIVER = "/proc/driver/nvidia"


@contextlib.contextmanager
def startup_noise_filtered():
    """Run the block (importing TensorFlow, finding its devices) with the
    process's stderr caught at the file-descriptor level, where C++ writes;
    then write back every line that is not noise (on a GPU machine, a failed
    cuInit stays). Does nothing when the user set TF_CPP_MIN_LOG_LEVEL: they
    want to see for themselves. (A crash inside the block loses what it wrote.)"""
    if not quiet_tensorflow_logs():
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as caught:
        os.dup2(caught.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            caught.seek(0)
            noise = STARTUP_NOISE + (() if os.path.exists(NVIDIA_DRIVER) else NO_DRIVER_NOISE)
            for line in caught.read().decode("utf-8", "replace").splitlines(keepends=True):
                if not any(text in line for text in noise):
                    sys.stderr.write(line)
            sys.stderr.flush()


# --- files that must never be half-written ---

def os_error_text(err):
    """An OSError as one line that says what is in the way and what to do."""
    if not isinstance(err, OSError):
        return str(err)
    name = err.filename if err.filename is not None else "a file"
    if isinstance(err, (FileExistsError, NotADirectoryError)):
        return (f"{name}: a file is in the way where a folder is needed (move it, or "
                "choose another path)")
    if isinstance(err, IsADirectoryError):
        return f"{name} is a folder where a file is needed (choose a file name)"
    if isinstance(err, PermissionError):
        return f"{name}: permission denied (choose a place you can write to)"
    return f"{name}: {err.strerror or err}"


def atomic_write(path, data):
    """Write bytes or text to `path` so that a crash at any moment leaves either
    the old file or the new one, never a mix: temporary file in the same
    folder, flush, fsync, rename over the old one, fsync the folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        data = data.encode("utf-8")
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, FILE_MODE)  # mkstemp's files are private (0600)
        with os.fdopen(fd, "wb") as tmp:
            tmp.write(data)
            tmp.flush()
            os.fsync(tmp.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def atomic_pickle(obj, path):
    atomic_write(path, pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL))


# --- results as plain JSON ---

def to_plain(value):
    """Turn numpy scalars/arrays and tuples into plain Python, recursively, so
    the result encodes as JSON and as BSON. Non-finite floats become None."""
    if isinstance(value, dict):
        return {str(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [to_plain(v) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return value if math.isfinite(value) else None
    return value


def model_name_for(fine_accuracy, uid):
    """`model_<accuracy>_<id>`: fixed decimals, so sorting names sorts accuracies."""
    return f"model_{fine_accuracy:.{ACCURACY_DECIMALS}f}_{uid}"


def model_id(model_name):
    """The random id that ends a model's name (`model_<accuracy>_<id>`,
    `failed_<id>`); its weights and TensorBoard logs are named after it."""
    return str(model_name).removesuffix(RESULT_SUFFIX).rsplit("_", 1)[-1]


def result_path(result, results_dir=RESULTS_DIR):
    return Path(results_dir) / f"{result['model_name']}{RESULT_SUFFIX}"


def result_to_json(result):
    return json.dumps(to_plain(result), indent=4, sort_keys=True)


def print_json(result):
    print(result_to_json(result))


def save_json_result(result, results_dir=RESULTS_DIR):
    """Write one trial's result to `<results_dir>/<model_name>.txt.json`."""
    path = result_path(result, results_dir)
    atomic_write(path, result_to_json(result) + "\n")
    return path


def load_json_result(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def result_files(results_dir=RESULTS_DIR):
    return sorted(glob.glob(os.path.join(results_dir, "*" + RESULT_SUFFIX)))


def load_results(results_dir=RESULTS_DIR):
    """Every readable result dict in `results_dir` (unreadable files skipped)."""
    results = []
    for path in result_files(results_dir):
        try:
            result = load_json_result(path)
        except (OSError, ValueError):
            continue
        if isinstance(result, dict):
            results.append(result)
    return results


def load_best_result(results_dir=RESULTS_DIR):
    """The successful result with the lowest loss (highest fine accuracy), or
    None when the folder holds none. Unreadable files are skipped."""
    best = None
    for result in load_results(results_dir):
        loss = result.get("loss")
        if result.get("status") == "ok" and isinstance(loss, (int, float)) and (
                best is None or loss < best["loss"]):
            best = result
    return best


def load_best_hyperspace(results_dir=RESULTS_DIR):
    """The `space` of the best trial in `results_dir`, or None if there is none."""
    best = load_best_result(results_dir)
    return None if best is None else best["space"]


def best_trial(trials):
    """(trial id, result) of the best successful trial of hyperopt Trials, or None."""
    ok = [(t["tid"], t["result"]) for t in trials.trials if t["result"].get("status") == "ok"]
    return min(ok, key=lambda pair: pair[1]["loss"], default=None)


def progress_line(result, number, seconds, of="", where="", best=None):
    """The one line printed for a finished trial, by the search, the MongoDB
    driver and the workers alike: `Trial <number><of> (<data set>): <accuracies
    or FAILED>, <seconds><where>`, then the best so far when `best` (a
    best_trial pair, or False for none yet) is given."""
    data = f" ({data_line(result)})" if result.get("dataset") else ""
    if result.get("status") == "ok":
        pruned = (f", pruned at epoch {result.get('pruned_at_epoch')} (below the median "
                  f"{result.get('pruned_below_median', float('nan')):.4f})"
                  if result.get("pruned") else "")
        coarse = result.get("coarse_best_accuracy")
        coarse = "" if coarse is None else f", coarse {coarse:.4f}"
        head = (f"Trial {number}{of}{data}: fine {result['fine_best_accuracy']:.4f}"
                f"{coarse}{pruned}, {seconds:.1f} s{where}")
    else:
        error = str(result.get("error", "unknown error")).splitlines()[0][:200]
        head = f"Trial {number}{of}{data}: FAILED after {seconds:.1f} s{where} ({error})"
    if best is None:
        return head
    tail = (f"best so far: fine {best[1]['fine_best_accuracy']:.4f} (trial {best[0] + 1}, "
            f"{best[1]['model_name']})" if best else "no successful trial yet")
    return f"{head} | {tail}"


def data_line(result):
    """`cifar10, 10 classes, 32 px`: the data set a result was trained on."""
    name = os.path.basename(str(result["dataset"]).rstrip("/")) or result["dataset"]
    groups = f" in {result['nb_groups']} groups" if result.get("nb_groups") else ""
    return f"{name}, {result.get('nb_classes')} classes{groups}, {result.get('image_size')} px"


# Validation fine accuracy per epoch: Keras 3 name (this project), Keras 2 (the original's).
VAL_FINE_KEYS = ["val_fine_outputs_accuracy", "val_fine_outputs_acc"]


def is_number(value):
    """A finite int or float, and not a bool."""
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value))


def val_fine_curve(result):
    """A result's validation fine accuracy per epoch (NaN where not a number),
    under its Keras 3 or Keras 2 name, or []."""
    history = result.get("history") or {}
    for key in VAL_FINE_KEYS:
        if isinstance(history.get(key), list):
            return [v if is_number(v) else float("nan") for v in history[key]]
    return []
