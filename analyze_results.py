"""Analyse the trials of a finished (or running) search: a leaderboard, three
plots, one CSV, and optionally TensorBoard's HParams dashboard.

    python3 analyze_results.py [--results-dir results/] [--out-dir DIR] [--top N]
                               [--to-tensorboard DIR]

Reads every results/*.txt.json: this project's results (Keras 3 metric names,
`epochs`, `training_seconds`, ...), failed trials (`failed_<id>.txt.json`) and
the original project's results (Keras 2 names, `fine_outputs_acc`). Other files
are ignored; a *.txt.json that is not valid JSON, or not a trial result, is
skipped with a warning naming it.

Prints the top N trials by best fine accuracy, with the hyperparameters that
differ most among them, and a summary line. Writes, in --out-dir (default: the
results folder):

- results.csv: one row per readable trial (failed ones included), with its
  accuracies, losses, epochs and hyperparameters; a conditional
  hyperparameter (`first_conv`, `residual`, `one_more_fc`: null when the
  choice was "none") is an empty cell where it was not used.
- hyperparameters_scatter_matrix.png: the successful trials, coloured by fine
  accuracy. All ~20 hyperparameters would make 500 unreadable panels, so it
  shows the SCATTER_HPARAMS encoded hyperparameters most related to fine
  accuracy (largest |Spearman correlation|), plus the fine and coarse
  accuracies. Encoding: a boolean is 0/1, a string a category code with its
  labels on the axis, a conditional hyperparameter two columns: "<name> used"
  (0/1) and "<name>" (its value where used, left out of that panel elsewhere).
- optimization_history.png: each trial's fine accuracy in the order the files
  were written (modification time), the running best as a step line, failed
  trials as red crosses. Files written within 0.1 s of each other
  (results_table.TIE_SECONDS) were copied together (a checkout, `cp -r`, the
  original results), so their real order is lost: they are ordered by the
  random id in their name, which is stable and, unlike the name itself, says
  nothing of the accuracy.
- learning_curves.png: the validation fine accuracy per epoch of the top N.

--to-tensorboard DIR writes each successful trial as one run folder of
TensorBoard's HParams dashboard (DIR/<model_name>/: its hyperparameters and
final metrics), and the experiment (the hyperparameters' domains and the
metrics) in DIR itself: `tensorboard --logdir DIR`, then the HPARAMS tab
(hks/reports/tensorboard_hparams.py, which the search uses too). A conditional
hyperparameter (one the search space may leave out, or one null in some
trial) is written as a string there: its value or 'none'.

Exit codes: 0 done (also for a folder without results), 1 missing results
folder or an output that cannot be written, 2 bad flags.
"""

import sys
from pathlib import Path

import pandas as pd

from hks.core import flags, storage
from hks.mongo import mongo_settings
from hks.reports import analysis_plots, replay_report, results_table, tensorboard_hparams
from hks.stopping import curve_files, pruning, pruning_replay
from hks.trials import kept_models

# matplotlib and the tensorboard protos are imported by the functions that use
# them, so that --help, bad flags and a missing folder are answered at once.

TOP_N = 10
CSV_NAME = "results.csv"
SCATTER_PNG = "hyperparameters_scatter_matrix.png"
HISTORY_PNG = "optimization_history.png"
CURVES_PNG = "learning_curves.png"

REPLAY_JSON, REPLAY_PNG = replay_report.REPLAY_JSON, replay_report.REPLAY_PNG
DEFAULT_CURVE_SAMPLE = 42  # curves a replayed search of a curve file draws from: the original's


class OutputError(Exception):
    """An output file or folder cannot be written."""


def write_output(path, data):
    try:
        storage.atomic_write(path, data)
    except OSError as err:
        raise OutputError(f"cannot write {path}: {err}") from None


# ------------------------------------------------- TensorBoard HParams ----

def tensorboard_conditionals(frame, hparams):
    """The hyperparameters to write as conditional: those of the search space
    (hyperopt_optimize.space, which imports no Keras), and any other that is
    null in some trial of this folder (results of a changed space)."""
    import hyperopt_optimize
    nullable = {name for name in hparams if frame[name].isna().any()}
    conditional = tensorboard_hparams.conditional_hparams(hyperopt_optimize.space)
    return tuple(sorted(set(conditional) | nullable))


def write_tensorboard(trials, log_dir, conditional):
    """--to-tensorboard: every successful trial, then the experiment."""
    results = [t["result"] for t in trials if t["result"].get("status") == "ok"]
    if not results:
        print("TensorBoard: no successful trial to write.")
        return
    try:
        for result in results:
            tensorboard_hparams.write_hparams_run(result, log_dir, conditional)
        count = tensorboard_hparams.write_hparams_experiment(log_dir, results, conditional)
    except OSError as err:
        raise OutputError(f"cannot write to --to-tensorboard {log_dir}: {err}") from None
    print(f"TensorBoard: {len(results)} runs with {count} hyperparameters in {log_dir}/ "
          f"(tensorboard --logdir {log_dir}, then the HPARAMS tab)")


# ------------------------------------------------------------------ main ----

def build_parser():
    parser = flags.OneLineErrorParser(
        description=__doc__.split("\n\n")[0],
        epilog="Writes results.csv, hyperparameters_scatter_matrix.png, "
               "optimization_history.png and learning_curves.png in --out-dir.")
    parser.add_argument("--results-dir", default=None,
                        help=f"folder of the trials' *.txt.json (default: {flags.RESULTS_DIR}); "
                             "with --mongo, where the experiment's result files and kept "
                             "models are copied (none without it)")
    live = parser.add_argument_group(
        "an experiment in MongoDB", "--mongo reads the experiment straight from MongoDB, "
        "while it runs or after, from any machine: the analysis of its finished trials, "
        "plus the trials running now and the queue")
    live.add_argument("--mongo", default=None, metavar="ADDRESS",
                      type=flags.argparse_type(mongo_settings.mongo_url),
                      help="HOST:PORT/DB or mongodb://USER:PASSWORD@HOST:PORT/DB?authSource=admin, "
                           "as the driver's")
    live.add_argument("--exp-key", default=mongo_settings.DEFAULT_EXP_KEY, metavar="NAME",
                      help="the experiment (default: %(default)s)")
    parser.add_argument("--out-dir", default=None,
                        help="where the CSV and the plots go (default: the results folder)")
    parser.add_argument("--top", type=flags.argparse_type(flags.positive_int),
                        default=TOP_N, metavar="N",
                        help="trials in the leaderboard and the learning curves "
                             "(default: %(default)s)")
    parser.add_argument("--to-tensorboard", default=None, metavar="DIR",
                        help="also write every successful trial to TensorBoard's "
                             "HParams dashboard in DIR")
    replay = parser.add_argument_group(
        "pruning replay", "--replay-pruning replays the stopping rules on the complete "
        "learning curves of these results (or of --curves FILE), instead of the analysis: "
        "the epochs a rule would have saved, how often the best trial survives, and the "
        "epochs until a search holds the best trial, and a trial within --within of it "
        "(time to best), for the rule chosen below, no stopping, Optuna's and Ray Tune's "
        f"defaults and each rule at its defaults; writes {REPLAY_JSON} and {REPLAY_PNG}")
    replay.add_argument("--replay-pruning", action="store_true", help="replay, see above")
    replay.add_argument("--curves", default=None, metavar="FILE.csv",
                        help="replay on a learning-curve file instead: one row per trial, "
                             "columns acc_1 .. acc_T (the validation accuracy after each "
                             "epoch; other columns ignored, rows with a missing value left "
                             "out); the outputs go to --out-dir (default: this folder)")
    replay.add_argument("--sample", type=flags.argparse_type(flags.positive_int), default=None,
                        metavar="N", help="curves each replayed search draws from, at random "
                        "(default: all of a results folder's; "
                        f"{DEFAULT_CURVE_SAMPLE} of a --curves file's, as many as the "
                        "original search had)")
    replay.add_argument("--within", type=flags.argparse_type(flags.fraction),
                        default=pruning_replay.WITHIN, metavar="POINTS",
                        help="the time to a trial this close to the best is reported too "
                             "(default: %(default)s, half a point of accuracy)")
    replay.add_argument("--orders", type=flags.argparse_type(flags.positive_int),
                        default=pruning_replay.REPLAY_ORDERS, metavar="N",
                        help="random orders of the trials to replay (default: %(default)s)")
    replay.add_argument("--searches", type=flags.argparse_type(flags.positive_int),
                        default=pruning_replay.SEARCHES, metavar="N",
                        help="simulated searches for the time to best (default: %(default)s)")
    replay.add_argument("--seed", type=flags.argparse_type(flags.non_negative_int),
                        default=0, metavar="S", help="seed of the orders (default: %(default)s)")
    replay.add_argument("--split-half", action="store_true",
                        help="also choose the default honestly: the fastest to the best "
                             "among pruning_replay.CANDIDATES on one seeded half of the "
                             "curves, judged on the other half, both ways (minutes)")
    flags.add_options(replay, flags.TrialSettings, only=REPLAY_SETTINGS)
    return parser


REPLAY_SETTINGS = ("prune", "prune_startup", "prune_warmup", "asha_grace", "asha_reduction")


def main(argv=None):
    args, (settings,) = flags.parse_or_exit(build_parser(), [flags.TrialSettings], argv,
                                            only=REPLAY_SETTINGS)
    if args.mongo:
        return from_mongo(args)
    if args.curves:
        return replay_curve_file(args, settings)
    args.results_dir = args.results_dir or flags.RESULTS_DIR
    results_dir = Path(args.results_dir)
    if not results_dir.is_dir():
        print(f"error: results folder {results_dir} does not exist (see --results-dir)",
              file=sys.stderr)
        return 1
    trials, skipped = results_table.read_results(results_dir)
    for path, reason in skipped:
        print(f"warning: skipped {path.name}: {reason}", file=sys.stderr)
    if not trials:
        print(f"No trial results (*{storage.RESULT_SUFFIX}) to analyse in {results_dir}/"
              + (f" ({len(skipped)} skipped)." if skipped else "."))
        return 0
    try:
        if args.replay_pruning:
            curves, left_out = replay_report.curves_of_results(trials)
            what = f"{len(curves)} complete learning curves" + (
                f" ({left_out} failed, pruned or curve-less results left out)" if left_out else "")
            return replay_pruning(curves, what, settings, args,
                                  args.out_dir or args.results_dir, args.sample)
        analyse(trials, skipped, args)
    except OutputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


def replay_curve_file(args, settings):
    """--replay-pruning --curves FILE: the replay on a learning-curve file."""
    if not args.replay_pruning:
        print("error: --curves goes with --replay-pruning", file=sys.stderr)
        return 2
    try:
        curves, left_out = curve_files.read_curves(args.curves)
    except curve_files.CurveFileError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    what = (f"{len(curves)} curves of {curves.shape[1]} epochs from {args.curves}"
            + (f" ({left_out} rows with a missing value left out)" if left_out else ""))
    try:
        return replay_pruning(list(curves), what, settings, args, args.out_dir or ".",
                              args.sample or DEFAULT_CURVE_SAMPLE)
    except OutputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1


def replay_pruning(curves, what, settings, args, out_dir, sample):
    """--replay-pruning on `curves`: the table, REPLAY_JSON and REPLAY_PNG in
    `out_dir`, and with --split-half the default chosen on halves."""
    rule = pruning.rule_of(settings)
    if rule is None:
        print("error: --replay-pruning needs a rule: --prune none replays nothing "
              f"(give one of {', '.join(flags.PRUNE_RULES[:-1])})", file=sys.stderr)
        return 2
    if len(curves) < 2:
        print(f"Cannot replay pruning: {len(curves)} complete learning curve(s) in these "
              "results; it needs at least 2 successful trials that were not pruned.")
        return 0
    out_dir = make_out_dir(out_dir)
    plan = pruning_replay.Plan(args.orders, args.searches, args.seed, args.within, sample)
    figures, files = replay_report.replay(curves, rule, plan, what)
    for name, data in files.items():
        write_output(out_dir / name, data)
    print(f"Wrote {', '.join(files)} in {out_dir}/")
    if args.split_half:
        if len(curves) < 4:
            print("--split-half needs at least 4 complete curves, 2 on each half.")
        else:
            write_output(out_dir / REPLAY_JSON, replay_report.split_half(curves, figures, plan))
    return 0


def make_out_dir(folder):
    out_dir = Path(folder)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputError(f"cannot use --out-dir {out_dir}: {storage.os_error_text(err)}") from None
    return out_dir


def from_mongo(args):
    """--mongo: the experiment's queue and running trials, then the analysis
    of its finished trials (copied into --results-dir first, when given)."""
    from hks.mongo import mongo_files, mongo_view
    try:
        handle = mongo_view.open_experiment(args.mongo, args.exp_key)
    except mongo_view.ViewError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        jobs = handle.jobs
        print(f"Experiment {args.exp_key!r}: "
              f"{mongo_view.describe_queue(mongo_view.queue(jobs, args.exp_key))}.")
        rows = mongo_view.running(jobs, args.exp_key)
        if rows:
            print(f"Running now:\n{running_table(rows)}\n")
        if args.results_dir:
            results = mongo_files.bring_results(jobs, args.exp_key, args.results_dir, set())
            copied, _ = mongo_files.bring_models(handle, args.exp_key, args.results_dir,
                                                 keep=len(mongo_view.stored_models(
                                                     jobs, args.exp_key)), prune=False)
            print(f"Copied {len(results)} result files and {len(copied)} models into "
                  f"{args.results_dir}/.")
            trials, skipped = results_table.read_results(Path(args.results_dir))
            kept = kept_models.kept_names(args.results_dir)
        else:
            trials, skipped = results_table.results_as_trials(
                mongo_view.finished(jobs, args.exp_key))
            kept = mongo_view.stored_models(jobs, args.exp_key)
    except OSError as err:
        print(f"error: cannot write into --results-dir {args.results_dir}: "
              f"{storage.os_error_text(err)}", file=sys.stderr)
        return 1
    finally:
        handle.conn.close()
    for path, reason in skipped:
        print(f"warning: skipped {path.name}: {reason}", file=sys.stderr)
    if not trials:
        print("No finished trial yet.")
        return 0
    try:
        analyse(trials, skipped, args, kept, args.out_dir or args.results_dir or ".")
    except OutputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


def running_table(rows):
    """The running trials as a printable table."""
    return pd.DataFrame({
        "trial": [r["trial"] for r in rows], "worker": [r["worker"] for r in rows],
        "epoch": [f"{r['epoch']}/{r['epochs']}" if r["epoch"] else "-" for r in rows],
        "accuracy so far": [f"{r['accuracy']:.4f}" if storage.is_number(r["accuracy"]) else "-"
                            for r in rows],
        "last heartbeat": [f"{r['heartbeat_s']:.0f} s ago" if r["heartbeat_s"] is not None
                           else "-" for r in rows],
    }).to_string(index=False)


def analyse(trials, skipped, args, kept=None, out_dir=None):
    """Print the failed trials and the leaderboard, write the CSV, the plots
    and the TensorBoard runs, print the summary. `kept`: the names of the
    trials whose model is kept (default: those in --results-dir/models/)."""
    out_dir = make_out_dir(out_dir or args.out_dir or args.results_dir)
    frame, hparams = results_table.trials_frame(trials)
    if kept is None:
        kept = kept_models.kept_names(args.results_dir)  # --keep-models: which are in models/
    frame.insert(frame.columns.get_loc("pruned") + 1, "kept_model", frame["model_name"].isin(kept))
    ok = frame["status"].eq("ok")

    if not ok.all():
        print(f"Failed trials ({(~ok).sum()}):")
        for _, row in frame[~ok].iterrows():
            print(f"  {row['file']}: {row['error'] or 'status ' + repr(row['status'])}")
        print()
    if ok.any():
        print(f"Top {min(args.top, ok.sum())} of {ok.sum()} successful trials, "
              "by best fine accuracy:")
        print(results_table.leaderboard(frame, hparams, ok, args.top) + "\n")
    else:
        print("No successful trial: no leaderboard, scatter matrix or learning curves.")

    write_output(out_dir / CSV_NAME, frame.convert_dtypes().to_csv(index=False))
    written = [CSV_NAME]
    if ok.any():
        write_output(out_dir / SCATTER_PNG, analysis_plots.scatter_matrix(
            *results_table.scatter_data(frame, hparams, ok)))
        write_output(out_dir / CURVES_PNG,
                     analysis_plots.learning_curves(trials, frame, ok, args.top))
        written += [SCATTER_PNG, CURVES_PNG]
    ordered_by_id = any(b["mtime"] - a["mtime"] < results_table.TIE_SECONDS
                        for a, b in zip(trials, trials[1:]))
    write_output(out_dir / HISTORY_PNG, analysis_plots.history(frame, ok, ordered_by_id))
    written.append(HISTORY_PNG)
    print(f"Wrote {', '.join(written)} in {out_dir}/")

    if args.to_tensorboard:
        write_tensorboard(trials, args.to_tensorboard, tensorboard_conditionals(frame, hparams))
    print(results_table.summary_line(frame, ok, skipped))


if __name__ == "__main__":
    sys.exit(main())
