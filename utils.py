"""Shared helpers: configuration from flags and environment, atomic file
writes, and printing/saving/loading the JSON result of each trial.

Every setting a user can change is listed once in `OPTIONS` below, with its
command-line flag and its environment variable; `read_config` is the only
place that reads them.
"""

import argparse
import dataclasses
import functools
import glob
import json
import math
import os
import pickle
import tempfile
import urllib.parse
from pathlib import Path

import numpy as np

RESULTS_DIR = "results"
RESULT_SUFFIX = ".txt.json"
FAILED_PREFIX = "failed_"  # sorts before "model_", so the best result stays last
ACCURACY_DECIMALS = 6
FILE_MODE = 0o644  # results and results.pkl: readable by others, like any file
PRECISIONS = ("auto", "float32", "mixed_bfloat16", "mixed_float16")


class UsageError(Exception):
    """A flag or an environment variable holds a value that cannot be used."""


@dataclasses.dataclass
class Config:
    """Everything a search or a training run can be told from outside."""

    epochs: int = 100
    max_evals: int | None = None
    dataset_size: int | None = None
    data_dir: str = "ml_req"
    results_dir: str = RESULTS_DIR
    trials_file: str = "results.pkl"
    val_split: float = 0.0
    tensorboard: bool = False
    seed: int | None = None
    offline: bool = False
    plots: bool = True
    in_process: bool = False
    precision: str = "auto"
    keras_home: str = os.path.join("~", ".keras")
    warm_start: str | None = None
    # The search over MongoDB (hyperopt_optimize.py --mongo ...):
    mongo: str | None = None
    exp_key: str = "hyperopt_keras_cifar100"
    queue_len: int = 4
    stale_after: float = 120.0
    max_requeues: int = 2
    # MongoDB workers (hyperopt_mongo_worker.py):
    poll_interval: float = 2.0
    reserve_timeout: float | None = None
    last_job_timeout: float | None = None
    max_consecutive_failures: int = 4
    max_jobs: int | None = None
    workdir: str | None = None
    heartbeat: float = 10.0


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


def existing_dir(text):
    if not os.path.isdir(os.path.expanduser(text)):
        raise ValueError(f"folder {text!r} does not exist")
    return text


MONGO_DEFAULT_PORT = 27017
MONGO_DEFAULT_DB = "hyperopt"
MONGO_JOBS_COLLECTION = "jobs"


def mongo_url(text):
    """A MongoDB address as hyperopt's MongoTrials wants it:
    `mongo://[user:password@]host:port/db/jobs[?authSource=db]`. Accepts
    `HOST[:PORT][/DB]` (port 27017 and database `hyperopt` by default), `mongodb://[user:password@]HOST[:PORT]/DB[?authSource=db]`
    (user and password percent-encoded, as in any MongoDB URL) and hyperopt's
    own `mongo://HOST:PORT/DB/jobs`."""
    text = str(text).strip()
    shown = repr(redact(text))  # never print a password
    example = "expected HOST:PORT/DB or mongodb://USER:PASSWORD@HOST:PORT/DB?authSource=admin"
    scheme, sep, rest = text.partition("://")
    if not sep:
        scheme, rest = "mongodb", text
    if scheme not in ("mongodb", "mongo"):
        raise ValueError(f"{shown}: scheme {scheme}:// is not supported ({example}; "
                         "mongodb+srv:// and ssh tunnels are not)")
    parts = urllib.parse.urlsplit("//" + rest)
    if "," in parts.netloc:
        raise ValueError(f"{shown}: one host only; hyperopt cannot use a replica-set list")
    try:
        port = parts.port or MONGO_DEFAULT_PORT
    except ValueError:
        raise ValueError(f"{shown}: the port is not a number from 1 to 65535") from None
    path = [p for p in parts.path.split("/") if p]
    if path[1:] == [MONGO_JOBS_COLLECTION]:
        path = path[:1]
    path = path or [MONGO_DEFAULT_DB]
    if not parts.hostname or len(path) != 1:
        raise ValueError(f"{shown}: {example}")
    database = path[0]
    if any(c in database for c in ' ."$\\') or len(database) > 63:
        raise ValueError(f"{shown}: {database!r} is not a valid MongoDB database name")
    query = urllib.parse.parse_qs(parts.query, keep_blank_values=True)
    unknown = sorted(set(query) - {"authSource"})
    if unknown:
        raise ValueError(f"{shown}: unsupported option(s) {', '.join(unknown)}; only "
                         "authSource is understood")
    if parts.password is not None and not parts.username:
        raise ValueError(f"{shown}: a password needs a user name")
    auth = ""
    if parts.username:
        auth = parts.username + (f":{parts.password}" if parts.password is not None else "") + "@"
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    tail = f"?authSource={query['authSource'][-1]}" if query.get("authSource") else ""
    return f"mongo://{auth}{host}:{port}/{database}/{MONGO_JOBS_COLLECTION}{tail}"


def mongo_url_from_parts(environ):
    """The original's variables: MONGO_DB_HOST (and MONGO_DB_PORT, MONGO_DB_NAME,
    MONGO_DB_USER, MONGO_DB_PASSWORD, MONGO_DB_AUTH_SOURCE) make a --mongo URL."""
    host = environ.get("MONGO_DB_HOST", "").strip()
    if not host:
        return None
    port = environ.get("MONGO_DB_PORT", "").strip() or MONGO_DEFAULT_PORT
    database = environ.get("MONGO_DB_NAME", "").strip() or MONGO_DEFAULT_DB
    user = environ.get("MONGO_DB_USER", "")
    auth, tail = "", ""
    if user:
        password = environ.get("MONGO_DB_PASSWORD", "")
        quote = functools.partial(urllib.parse.quote, safe="")
        auth = quote(user) + (f":{quote(password)}" if password else "") + "@"
        tail = "?authSource=" + (environ.get("MONGO_DB_AUTH_SOURCE", "") or "admin")
    return f"mongodb://{auth}{host}:{port}/{database}{tail}"


def redact(url):
    """A MongoDB URL fit to print: the password replaced by ***."""
    parts = urllib.parse.urlsplit(url if "://" in url else "//" + url)
    if parts.password is None:
        return url
    return url.replace(f":{parts.password}@", ":***@", 1)


# name -> (flag, environment variable, parser, help). Boolean options are
# switches: the flag turns them on, the variable may say 1 or 0.
OPTIONS = {
    "epochs": ("--epochs", "HKS_EPOCHS", positive_int,
               "training epochs per trial"),
    "max_evals": ("--max-evals", "HKS_MAX_EVALS", positive_int,
                  "stop once this many trials exist in total, counting those "
                  "of earlier runs (default: run until interrupted)"),
    "dataset_size": ("--dataset-size", "DATASET_SIZE", positive_int,
                     "use only N images, 80%% for training and 20%% for "
                     "testing (the variable counts only with CODE_TESTING=1)"),
    "data_dir": ("--data-dir", "HKS_DATA_DIR", existing_dir,
                 "folder holding cifar-100-python.tar.gz"),
    "results_dir": ("--results-dir", "HKS_RESULTS_DIR", str,
                    "folder where every trial's result JSON is written"),
    "trials_file": ("--trials-file", "HKS_TRIALS_FILE", str,
                    "pickle of hyperopt's Trials, rewritten after every trial; "
                    "the search resumes from it"),
    "val_split": ("--val-split", "HKS_VAL_SPLIT", fraction,
                  "hold out this fraction of the training images for "
                  "validation and report test accuracy separately (default 0: "
                  "validate on the test split, as the original did)"),
    "tensorboard": ("--tensorboard", "HKS_TENSORBOARD", flag_value,
                    "write each trial's per-epoch scalars to TensorBoard/<model_name>/"),
    "seed": ("--seed", "HKS_SEED", non_negative_int,
             "seed for hyperopt's suggestions (default: random)"),
    "offline": ("--offline", "HKS_OFFLINE", flag_value,
                "never try to download CIFAR-100"),
    "plots": ("--no-plots", "HKS_PLOTS", flag_value,
              "do not draw model_demo.png and model_best.png"),
    "in_process": ("--in-process", "HKS_IN_PROCESS", flag_value,
                   "train each trial inside the search process instead of a fresh "
                   "child process: starts faster, but TensorFlow then keeps about 15 MB "
                   "of graphs per trial and an out-of-memory kill ends the search"),
    "precision": ("--precision", "HKS_PRECISION", precision_name,
                  "what the model computes in: auto (mixed_bfloat16 on a GPU of "
                  "compute capability 8.0 and up, mixed_float16 on an older GPU, float32 "
                  "on a CPU), float32, mixed_bfloat16 or mixed_float16; the output "
                  "heads stay float32"),
    "warm_start": ("--warm-start", "HKS_WARM_START", existing_dir,
                   "first add the trials of the result JSON files in this folder "
                   "(e.g. results/, after losing results.pkl) so TPE goes on from them; "
                   "files already in the search are not added twice"),
    # --- the search over MongoDB ---
    "mongo": ("--mongo", "HKS_MONGO", mongo_url,
              "the search's MongoDB (the driver then queues trials for workers): HOST:PORT/DB or mongodb://USER:PASSWORD@"
              "HOST:PORT/DB?authSource=admin; without HKS_MONGO, MONGO_DB_HOST "
              "(+ MONGO_DB_PORT, MONGO_DB_NAME, MONGO_DB_USER, MONGO_DB_PASSWORD) "
              "make one"),
    "exp_key": ("--exp-key", "EXPERIMENT_NAME", str,
                "name of the experiment in MongoDB; the same name resumes it"),
    "queue_len": ("--queue-len", "HKS_QUEUE_LEN", positive_int,
                  "trials kept queued for idle workers (about the number of workers; "
                  "more makes TPE suggest with less feedback)"),
    "stale_after": ("--stale-after", "HKS_STALE_AFTER", positive_number,
                    "seconds without a worker heartbeat after which a running trial "
                    "is put back in the queue (several worker heartbeats)"),
    "max_requeues": ("--max-requeues", "HKS_MAX_REQUEUES", non_negative_int,
                     "a trial whose worker died this many times more is given up "
                     "(marked as an error) instead of being queued again"),
    # --- MongoDB workers ---
    "poll_interval": ("--poll-interval", "HKS_POLL_INTERVAL", positive_number,
                      "seconds between looks for a queued trial (randomised below this)"),
    "reserve_timeout": ("--reserve-timeout", "HKS_RESERVE_TIMEOUT", seconds_or_forever,
                        "exit after this many seconds without a queued trial "
                        "(0: wait forever)"),
    "last_job_timeout": ("--last-job-timeout", "HKS_LAST_JOB_TIMEOUT", seconds_or_forever,
                         "take no new trial once this many seconds have passed"),
    "max_consecutive_failures": ("--max-consecutive-failures",
                                 "HKS_MAX_CONSECUTIVE_FAILURES", positive_int,
                                 "exit after this many trials in a row could not run"),
    "max_jobs": ("--max-jobs", "HKS_MAX_JOBS", positive_int,
                 "exit after running this many trials (default: no limit)"),
    "workdir": ("--workdir", "HKS_WORKDIR", str,
                "folder trials run in (TensorBoard/ and weights/ land there; "
                "default: the current folder)"),
    "heartbeat": ("--heartbeat", "HKS_HEARTBEAT", positive_number,
                  "seconds between the worker's signs of life for its running trial"),
}

# The single-machine search's options, and those the MongoDB driver adds.
SEARCH_OPTIONS = ["epochs", "max_evals", "dataset_size", "data_dir", "results_dir",
                  "trials_file", "val_split", "tensorboard", "seed", "offline", "plots",
                  "in_process", "precision", "warm_start"]
DRIVER_OPTIONS = ["mongo", "exp_key", "queue_len", "stale_after", "max_requeues"]
# What a worker decides for itself; everything else about a trial comes from the driver.
WORKER_OPTIONS = ["mongo", "exp_key", "data_dir", "results_dir", "offline",
                  "poll_interval", "reserve_timeout", "last_job_timeout",
                  "max_consecutive_failures", "max_jobs", "workdir", "heartbeat"]


def add_options(parser, names):
    """Add the named options to an argparse parser (defaults stay None, so
    `read_config` can tell a flag given from a flag left out)."""
    defaults = Config()
    for name in names:
        flag, env_var, _, text = OPTIONS[name]
        default = getattr(defaults, name)
        help_text = f"{text} [env {env_var}; default {default}]"
        if isinstance(default, bool):
            const = not default  # --tensorboard turns on, --no-plots turns off
            parser.add_argument(flag, dest=name, action="store_const", const=const,
                                default=None, help=help_text)
        else:
            parser.add_argument(flag, dest=name, default=None, metavar="N" if
                                OPTIONS[name][2] in (positive_int, non_negative_int)
                                else None, help=help_text)


def read_config(args=None, environ=None, names=OPTIONS):
    """The one place where settings are read: a flag wins over its environment
    variable, which wins over the default. Raises UsageError on a bad value."""
    environ = os.environ if environ is None else environ
    values = {}
    for name in names:
        flag, env_var, parse, _ = OPTIONS[name]
        given = getattr(args, name, None) if args is not None else None
        if given is not None:
            source, raw = flag, given
        elif environ.get(env_var, "") != "":
            if name == "dataset_size" and not code_testing(environ):
                continue  # the seed's rule: DATASET_SIZE only counts when testing code
            source, raw = env_var, environ[env_var]
        elif name == "mongo" and mongo_url_from_parts(environ):
            source, raw = "MONGO_DB_HOST/MONGO_DB_PORT/MONGO_DB_NAME", mongo_url_from_parts(environ)
        else:
            continue
        if isinstance(raw, bool):
            values[name] = raw
            continue
        try:
            values[name] = parse(raw)
        except ValueError as err:
            raise UsageError(f"{source}: {err}") from None
    values["keras_home"] = environ.get("KERAS_HOME") or os.path.join(
        os.path.expanduser("~"), ".keras")
    return Config(**values)


def code_testing(environ):
    try:
        return flag_value(environ.get("CODE_TESTING", "0"))
    except ValueError as err:
        raise UsageError(f"CODE_TESTING: {err}") from None


def config_from_env():
    """Settings for code called without a command line (notebooks, workers)."""
    return read_config()


class OneLineErrorParser(argparse.ArgumentParser):
    """argparse that refuses a bad flag with one line and exit code 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


# --- files that must never be half-written ---

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


def load_best_result(results_dir=RESULTS_DIR):
    """The successful result with the lowest loss (highest fine accuracy), or
    None when the folder holds none. Unreadable files are skipped."""
    best = None
    for path in result_files(results_dir):
        try:
            result = load_json_result(path)
        except (OSError, ValueError):
            continue
        if not isinstance(result, dict) or result.get("status") != "ok":
            continue
        loss = result.get("loss")
        if isinstance(loss, (int, float)) and (best is None or loss < best["loss"]):
            best = result
    return best


def load_best_hyperspace(results_dir=RESULTS_DIR):
    """The `space` of the best trial in `results_dir`, or None if there is none."""
    best = load_best_result(results_dir)
    return None if best is None else best["space"]
