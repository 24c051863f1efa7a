"""Settings from flags and environment variables, declared once and read in
one function.

Each setting is a field of the settings class of whoever reads it, with its
flag and its environment variable (`setting` below): MachineSettings is
where this machine keeps things, TrialSettings what one trial reads,
SearchSettings adds what hyperopt_optimize.py reads; hks/mongo/mongo_settings.py declares
the MongoDB driver's and workers' own. `read_settings` is the only place
that reads them (a flag wins over its variable, which wins over the
default), and `parse_or_exit` refuses a bad one with one line and exit code
2. Nothing here imports Keras, so --help and a bad flag answer at once.
"""

import argparse
import dataclasses
import math
import os

RESULTS_DIR = "results"
PRECISIONS = ("auto", "float32", "mixed_bfloat16", "mixed_float16")
PRUNE_RULES = ("asha", "median", "learned", "none")  # --prune; the rules: hks/stopping/
DATASETS = ("cifar100", "cifar10", "synthetic")  # --dataset, or a folder (hks/data/image_folders)
MIN_IMAGE_SIZE = 8  # three stages halve the image: 8 -> 4 -> 2 -> 1
CACHE_FOLDER_NAME = "hyperopt-keras-sample"  # under ~/.cache: decoded image folders


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


def one_of(text, choices):
    """`text` as one of `choices` (any case and spacing)."""
    value = str(text).strip().lower()
    if value not in choices:
        raise ValueError(f"{text!r} is not one of {', '.join(choices)}")
    return value


def precision_name(text):
    return one_of(text, PRECISIONS)


def prune_rule(text):
    return one_of(text, PRUNE_RULES)


def reduction_factor(text):
    return whole_number(text, 2)


def dataset_spec(text):
    """One of DATASETS (any case), or a folder's path (checked when loaded:
    a MongoDB driver names a folder that only its workers may hold)."""
    value = str(text).strip()
    if not value:
        raise ValueError(f"give one of {', '.join(DATASETS)} or a folder of images")
    return value.lower() if value.lower() in DATASETS else value


def image_size(text):
    return whole_number(text, MIN_IMAGE_SIZE)


def epochs_or_share(text, minimum=0):
    """An epoch setting: a whole number of epochs (at least `minimum`), or a
    share of --epochs, written 0.3 or 30% (above 0 and below 1), which
    epochs_of turns into epochs for each search's length."""
    value = str(text).strip()
    if value.lstrip("+-").isdigit():
        return whole_number(value, minimum)
    try:
        share = float(value[:-1]) / 100 if value.endswith("%") else float(value)
    except ValueError:
        raise ValueError(f"{text!r} is neither a whole number of epochs nor a share of "
                         "--epochs (0.3 or 30%)") from None
    if not 0 < share < 1:
        raise ValueError(f"{text!r}: a share of --epochs is above 0 and below 1 (0.3 or 30%); "
                         "a number of epochs is a whole number")
    return share


def epochs_of(value, epochs, minimum=0):
    """A setting of epochs_or_share as epochs, for a search of `epochs`."""
    if isinstance(value, int):
        return value
    return max(minimum, math.floor(value * epochs + 0.5))


def share_text(value):
    """30% for a share, 30 for epochs: how a setting is shown."""
    return str(value) if isinstance(value, int) else f"{value:.0%}"


def warmup_setting(text):
    return epochs_or_share(text, minimum=0)


def grace_setting(text):
    return epochs_or_share(text, minimum=1)


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
    keep_models: int = setting(
        3, "--keep-models", "HKS_KEEP_MODELS", non_negative_int,
        "keep the trained models of the K best trials as <results-dir>/models/"
        "<model_name>.keras (each at its best epoch, with a JSON of what it needs "
        "beside it), for predict.py; a model that falls out of the K best is "
        "deleted; 0 keeps none")
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
        "asha", "--prune", "HKS_PRUNE", prune_rule,
        "stop hopeless trials early: asha (asynchronous successive halving as Ray Tune "
        "defines it: at rungs of --asha-grace x --asha-reduction^k epochs, stop a trial "
        "below the top 1/reduction of the earlier trials there), median (stop a trial "
        "whose best validation fine accuracy so far is below the median of the earlier "
        "completed trials at that epoch), learned (stop a trial further behind the "
        "leading completed trial than good trials of other searches ever were: fastest "
        "on CIFAR-like searches, not safe where the learning rate drops late) or none. "
        "The default was chosen on six searches' curves; on the original search's 42 it "
        "reaches the best trial 2.3x sooner than none, learned 3.4x (docs/pruning.md)")
    prune_startup: int = setting(
        8, "--prune-startup", "HKS_PRUNE_STARTUP", positive_int,
        "median: prune only at epochs that at least N completed (not pruned) trials "
        "reached (learned acts from the first completed trial)")
    prune_warmup: int | float = setting(
        0.3, "--prune-warmup", "HKS_PRUNE_WARMUP", warmup_setting,
        "median: never prune at or before this epoch; a share of --epochs (0.3 or 30%%: "
        "epoch 30 of 100, 6 of 20) or a number of epochs")
    asha_grace: int | float = setting(
        0.2, "--asha-grace", "HKS_ASHA_GRACE", grace_setting,
        "asha: the first rung, a share of --epochs (0.2 or 20%%: epoch 20 of 100, 4 of 20) "
        "or a number of epochs (Ray Tune's grace_period, whose default of 1 loses the "
        "original's best trial in 92%% of orders)")
    asha_reduction: int = setting(
        4, "--asha-reduction", "HKS_ASHA_REDUCTION", reduction_factor,
        "asha: rungs at grace x N^k epochs; at a rung, the trials below the top 1/N "
        "of the earlier trials there stop (Ray Tune's reduction_factor)")


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
                metavar = ("N" if option.parse in (positive_int, non_negative_int, image_size,
                                                   reduction_factor)
                           else "E" if option.parse in (warmup_setting, grace_setting) else None)
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
