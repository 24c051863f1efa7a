"""TensorBoard's HParams dashboard for the search's trials: one run folder per
successful trial (its hyperparameters and final metrics) and the experiment
(each hyperparameter's domain, the metrics), written by the search after
every trial (--tensorboard) and by `analyze_results.py --to-tensorboard` for
finished results alike.

Only the `tensorboard` package is used, never TensorFlow (whose import takes
seconds); then `tensorboard --logdir DIR` and the HPARAMS tab.

A conditional hyperparameter (a part of the model the space may leave out:
an hp.choice with a None option, see `conditional_hparams`) is written as a
string, its value or 'none', so that it has one type in every run, as the
dashboard needs.
"""

import io
import os
import socket
import time
from pathlib import Path

from hks.core import storage

NONE = "none"  # a conditional hyperparameter's value when unused
# Final metrics written to TensorBoard, when a result has them.
METRIC_TAGS = ["fine_best_accuracy", "coarse_best_accuracy", "fine_end_accuracy",
               "coarse_end_accuracy", "fine_best_loss", "coarse_best_loss",
               "test_fine_accuracy", "test_coarse_accuracy", "training_seconds"]
EVENTS_SUFFIX = ".hks-hparams"  # marks the event files written here (and replaced)


def conditional_hparams(space):
    """The keys of a hyperopt search space that can be None: those drawn by an
    hp.choice with a None option (first_conv, residual, one_more_fc in
    hyperopt_optimize.space)."""
    from hyperopt import pyll
    keys = []
    for key, expression in space.items():
        node = pyll.as_apply(expression)
        if node.name == "switch" and any(option.name == "literal" and option.obj is None
                                         for option in node.pos_args[1:]):
            keys.append(key)
    return tuple(keys)


def hparams_of(space, conditional=()):
    """A result's `space` as the flat dict of HParams values: bool and str as
    they are, numbers as float. A `conditional` hyperparameter is always a str
    (its value, e.g. '3', or 'none' when unused); any other null becomes
    'none' too."""
    values = {}
    for name, value in space.items():
        if value is None:
            values[name] = NONE
        elif name in conditional:
            values[name] = f"{value:g}" if storage.is_number(value) else str(value)
        elif isinstance(value, (bool, str)):
            values[name] = value
        elif storage.is_number(value):
            values[name] = float(value)
        else:
            values[name] = str(value)
    return values


def final_metrics(result):
    """{tag: value} of the METRIC_TAGS the result has."""
    return {tag: float(result[tag]) for tag in METRIC_TAGS if storage.is_number(result.get(tag))}


def write_hparams_run(result, log_dir, conditional=()):
    """Write one successful trial to log_dir/<model_name>/ for TensorBoard's
    HParams dashboard: its hyperparameters (hparams_of) and its final metrics
    as scalars. Writing the same trial again replaces its file. Returns the
    run folder, or None for a failed trial or one without a `space` (nothing
    is written)."""
    from tensorboard.plugins.hparams import summary_v2
    if result.get("status") != "ok" or not isinstance(result.get("space"), dict):
        return None
    run_dir = Path(log_dir) / Path(str(result["model_name"])).name
    epochs = result.get("epochs")
    step = int(epochs) if storage.is_number(epochs) else len(storage.val_fine_curve(result))
    summaries = [(0, summary_v2.hparams_pb(hparams_of(result["space"], conditional),
                                           trial_id=str(result["model_name"])))]
    summaries += [(step, scalar_summary(tag, value))
                  for tag, value in final_metrics(result).items()]
    write_events(run_dir, summaries)
    return run_dir


def write_hparams_experiment(log_dir, results, conditional=()):
    """Write the experiment in log_dir itself: each hyperparameter's domain
    over the successful `results` (the values seen: an interval for numbers,
    the set for str and bool) and the metrics they have. Replaces the one
    written before; a running TensorBoard shows new domains after a restart.
    Returns the number of hyperparameters. Without a successful result it
    writes nothing (an empty experiment would hide the runs' hyperparameters)."""
    from tensorboard.plugins.hparams import summary_v2 as hp
    results = [r for r in results if r.get("status") == "ok" and isinstance(r.get("space"), dict)]
    if not results:
        return 0
    seen = {}
    for result in results:
        for name, value in hparams_of(result["space"], conditional).items():
            seen.setdefault(name, []).append(value)
    hparams = []
    for name, values in sorted(seen.items()):
        kinds = {type(v) for v in values}
        if kinds == {float}:
            domain = hp.RealInterval(min(values), max(values))
        elif len(kinds) == 1:
            domain = hp.Discrete(sorted(set(values)))
        else:
            domain = None  # mixed types: only possible with an unlisted conditional
        description = f"'{NONE}' when not used" if name in conditional else None
        hparams.append(hp.HParam(name, domain, description=description))
    tags = [tag for tag in METRIC_TAGS if any(storage.is_number(r.get(tag)) for r in results)]
    metrics = [hp.Metric(tag, display_name=tag.replace("_", " ")) for tag in tags]
    write_events(Path(log_dir), [(0, hp.hparams_config_pb(hparams, metrics))])
    return len(hparams)


def log_trial(result, log_dir, results_dir, conditional):
    """The search's --tensorboard after each trial: the trial's run, then the
    experiment over every result in `results_dir`. Best effort: the trial is
    saved already, so a failure here is one warning and the search goes on."""
    try:
        write_hparams_run(result, log_dir, conditional)
        write_hparams_experiment(log_dir, storage.load_results(results_dir), conditional)
    except Exception as err:
        print(f"warning: could not write {result['model_name']} to TensorBoard's "
              f"HParams ({type(err).__name__}: {err}); the search goes on.")


def scalar_summary(tag, value):
    from tensorboard.compat.proto import summary_pb2
    return summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=tag, simple_value=value)])


def write_events(folder, summaries):
    """One event file of (step, Summary) in `folder`, replacing the one written
    there before. tensorboard's EventFileWriter is not used: it imports
    TensorFlow when installed (seconds) for its file access."""
    from tensorboard.compat.proto import event_pb2
    from tensorboard.summary.writer.record_writer import RecordWriter
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob(f"events.out.tfevents.*{EVENTS_SUFFIX}"):
        old.unlink()
    now = time.time()
    buffer = io.BytesIO()
    records = RecordWriter(buffer)
    records.write(event_pb2.Event(wall_time=now, file_version="brain.Event:2")
                  .SerializeToString())
    for step, summary in summaries:
        records.write(event_pb2.Event(wall_time=now, step=step, summary=summary)
                      .SerializeToString())
    name = f"events.out.tfevents.{int(now):010d}.{socket.gethostname()}.{os.getpid()}"
    # A plain write, not storage.atomic_write: TensorBoard would read its
    # temporary file (the name holds "tfevents"), and it copes with a file
    # that is still being written.
    (folder / (name + EVENTS_SUFFIX)).write_bytes(buffer.getvalue())
