"""What the scripts say and how they start: the one line printed per
finished trial, notices said once per process, TensorFlow's start-up noise
kept out of sight, and SIGTERM handled like Ctrl-C. Imports no Keras."""

import contextlib
import os
import sys
import tempfile

from hks.core.storage import is_number

EXIT_INTERRUPTED = 130  # Ctrl-C or SIGTERM, as a shell reports it

_said = set()  # notices already said in this process (say_once)


def say_once(key, text, notices=True):
    """Print `text` the first time `key` comes up in this process (the
    synthetic warning, skipped files, where trials train)."""
    if notices and key not in _said:
        _said.add(key)
        print(text, flush=True)


def raise_interrupt(signum, frame):
    """SIGTERM (kill, docker stop) stops like Ctrl-C: install with
    signal.signal(signal.SIGTERM, console.raise_interrupt)."""
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


def progress_line(result, number, seconds, of="", where="", best=None):
    """The one line printed for a finished trial, by the search, the MongoDB
    driver and the workers alike: `Trial <number><of> (<data set>): <accuracies
    or FAILED>, <seconds><where>`, then the best so far when `best` (a
    best_trial pair, or False for none yet) is given."""
    data = f" ({data_line(result)})" if result.get("dataset") else ""
    if result.get("status") == "ok":
        pruned = f", {pruned_text(result)}" if result.get("pruned") else ""
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


def pruned_text(result):
    """`pruned at epoch 30 (asha: below 0.4123)`: when and why a rule stopped a trial."""
    threshold = result.get("pruned_below", result.get("pruned_below_median"))
    threshold = f"{threshold:.4f}" if is_number(threshold) else "?"
    return (f"pruned at epoch {result.get('pruned_at_epoch')} "
            f"({result.get('pruned_by') or 'median'}: below {threshold})")


def data_line(result):
    """`cifar10, 10 classes, 32 px`: the data set a result was trained on."""
    name = os.path.basename(str(result["dataset"]).rstrip("/")) or result["dataset"]
    groups = f" in {result['nb_groups']} groups" if result.get("nb_groups") else ""
    return f"{name}, {result.get('nb_classes')} classes{groups}, {result.get('image_size')} px"
