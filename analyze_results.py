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
  trials as red crosses. Files written within TIE_SECONDS of each other were
  copied together (a checkout, `cp -r`, the original results), so their real
  order is lost: they are ordered by the random id in their name, which is
  stable and, unlike the name itself, says nothing of the accuracy.
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

import json
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from hks.core import console, flags, storage
from hks.reports import analysis_plots, tensorboard_hparams
from hks.stopping import pruning, pruning_replay
from hks.trials import kept_models

# matplotlib and the tensorboard protos are imported by the functions that use
# them, so that --help, bad flags and a missing folder are answered at once.

TOP_N = 10
LEADERBOARD_HPARAMS = 6  # hyperparameter columns shown in the leaderboard
SCATTER_HPARAMS = 10  # hyperparameter columns in the scatter matrix (+ 2 accuracies)
TIE_SECONDS = 0.1  # result files written closer than this were copied together
CSV_NAME = "results.csv"
SCATTER_PNG = "hyperparameters_scatter_matrix.png"
HISTORY_PNG = "optimization_history.png"
CURVES_PNG = "learning_curves.png"

# What a result says about its trial, in the order of the CSV's columns.
RESULT_COLUMNS = [
    "fine_best_accuracy", "coarse_best_accuracy", "fine_end_accuracy",
    "coarse_end_accuracy", "fine_best_loss", "coarse_best_loss", "fine_end_loss",
    "coarse_end_loss", "loss", "real_loss", "test_fine_accuracy", "test_coarse_accuracy",
    "epochs", "pruned_at_epoch", "training_seconds", "nb_params", "train_images",
    "validation_images",
]
# --replay-pruning: more settings of the rules, drawn in pruning_replay.png
# beside the rules of the table.
REPLAY_SWEEPS = [pruning.MedianRule(3, 25), pruning.MedianRule(8, 12), pruning.MedianRule(4, 40),
                 pruning.AshaRule(10, 3), pruning.AshaRule(5, 3), pruning.AshaRule(10, 2),
                 pruning.AshaRule(20, 2), pruning.AshaRule(20, 3), pruning.AshaRule(30, 3)]
REPLAY_JSON = "pruning_replay.json"
REPLAY_PNG = "pruning_replay.png"


class OutputError(Exception):
    """An output file or folder cannot be written."""


# ------------------------------------------------------------ reading ----

def read_results(results_dir):
    """Every *.txt.json of the folder, oldest first (see trial_order).
    Returns (trials, skipped): trials are dicts with the file's `path`,
    `mtime` and `result`; skipped are (path, reason) of unusable files."""
    trials, skipped = [], []
    for name in storage.result_files(results_dir):
        path = Path(name)
        try:
            result = storage.load_json_result(path)
            mtime = path.stat().st_mtime
        except (OSError, ValueError) as err:  # ValueError: bad JSON or bad UTF-8
            skipped.append((path, f"not readable JSON ({err})"))
            continue
        problem = result_problem(result)
        if problem:
            skipped.append((path, problem))
        else:
            trials.append({"path": path, "mtime": mtime, "result": result})
    return trial_order(trials), skipped


def result_problem(result):
    """Why a JSON value is not a usable trial result, or None."""
    if not isinstance(result, dict):
        return f"a JSON {type(result).__name__}, not a trial result"
    if not isinstance(result.get("space"), dict):
        return "no 'space' (hyperparameters) in it"
    if not isinstance(result.get("model_name"), str):
        return "no 'model_name' in it"
    if result.get("status") == "ok" and not storage.is_number(result.get("fine_best_accuracy")):
        return "status 'ok' but no fine_best_accuracy"
    return None


def trial_order(trials):
    """Sort by modification time; files less than TIE_SECONDS apart (copied
    together, so their real order is lost) by their id instead."""
    trials = sorted(trials, key=lambda t: (t["mtime"], t["path"].name))
    group, groups = [], []
    for trial in trials:
        if group and trial["mtime"] - group[-1]["mtime"] >= TIE_SECONDS:
            groups.append(group)
            group = []
        group.append(trial)
    groups.append(group)
    return [t for g in groups for t in sorted(g, key=lambda t: (storage.model_id(t["path"].name),
                                                                  t["path"].name))]


def trials_frame(trials):
    """One row per trial: file, status, RESULT_COLUMNS, error, then one column
    per hyperparameter (NaN where a conditional one is null)."""
    rows = []
    for number, trial in enumerate(trials, 1):
        result = trial["result"]
        row = {"trial": number, "file": trial["path"].name, "status": result.get("status"),
               "model_name": result.get("model_name"), "pruned": bool(result.get("pruned")),
               # results written before --dataset existed are all CIFAR-100's
               "dataset": console.data_line(result) if result.get("dataset") else
               "cifar100, 100 classes in 20 groups, 32 px"}
        row.update({key: result.get(key) for key in RESULT_COLUMNS})
        if row["epochs"] is None:  # the original's results: the history says
            row["epochs"] = len(storage.val_fine_curve(result)) or None
        row["error"] = str(result.get("error") or "").strip().split("\n")[0] or None
        rows.append(row)
    info = pd.DataFrame(rows, columns=["trial", "file", "status", "model_name", "pruned",
                                       "dataset", *RESULT_COLUMNS, "error"])
    for key in RESULT_COLUMNS:
        info[key] = pd.to_numeric(info[key], errors="coerce")
    space = pd.DataFrame([t["result"]["space"] for t in trials], index=info.index)
    space = space.rename(columns=lambda c: f"space.{c}" if c in info.columns else c)
    return pd.concat([info, space], axis=1), list(space.columns)


# ------------------------------------------------------------ encoding ----

def encode_hyperparameters(frame, names):
    """Numbers for plotting: (DataFrame of floats, {column: tick labels}).
    bool -> 0/1; strings -> category codes (labels kept for the axis); a
    hyperparameter that is null in some trials -> '<name> used' (0/1) and
    '<name>' (its value where used, NaN elsewhere)."""
    columns, labels = {}, {}
    for name in names:
        values = frame[name]
        used = values.notna()
        if not used.any():
            continue
        if not used.all():
            columns[f"{name} used"] = used.astype(float)
            labels[f"{name} used"] = ["no", "yes"]
        present = values[used]
        if present.map(lambda v: isinstance(v, (bool, np.bool_))).all():
            columns[name] = values.map({True: 1.0, False: 0.0}).astype(float)
            labels[name] = ["False", "True"]
        elif present.map(storage.is_number).all():
            columns[name] = pd.to_numeric(values, errors="coerce").astype(float)
        else:  # strings, or mixed: categories
            text = present.astype(str)
            categories = sorted(text.unique())
            codes = pd.Categorical(text, categories=categories).codes
            columns[name] = pd.Series(codes, index=text.index, dtype=float).reindex(frame.index)
            labels[name] = categories
    return pd.DataFrame(columns, index=frame.index), labels


def varying_columns(encoded, rows, count):
    """The `count` hyperparameters (names without ' used') that differ most
    among `rows`: spread (std) of each column scaled to [0, 1] over all trials."""
    span = (encoded.max() - encoded.min()).replace(0, np.nan)
    scaled = (encoded - encoded.min()) / span
    spread = scaled.loc[rows].std(ddof=0).fillna(0)
    spread = spread.groupby(lambda c: c.removesuffix(" used")).max()
    spread = spread[spread > 0].sort_values(ascending=False, kind="stable")
    return list(spread.index[:count])


def scatter_columns(encoded, fine, count):
    """The `count` non-constant encoded columns most related to fine accuracy
    (largest |Spearman correlation|, over the trials where they are known)."""
    strength = {}
    for name, values in encoded.items():
        known = values.notna() & fine.notna()
        if values[known].nunique() > 1:
            # Spearman = Pearson on ranks (pandas' own Spearman imports scipy: seconds)
            strength[name] = abs(values[known].rank().corr(fine[known].rank()))
    strength = pd.Series(strength, dtype=float).fillna(0)
    return list(strength.sort_values(ascending=False, kind="stable").index[:count])


# ---------------------------------------------------------- leaderboard ----

def leaderboard(frame, hparams, ok, top):
    """The top trials as a printable table: accuracies, epochs, time, and the
    hyperparameters that differ most among them."""
    best = frame[ok].sort_values("fine_best_accuracy", ascending=False, kind="stable").head(top)
    encoded, _ = encode_hyperparameters(frame, hparams)
    shown = varying_columns(encoded, best.index, LEADERBOARD_HPARAMS)
    table = pd.DataFrame({
        "rank": range(1, len(best) + 1),
        "fine": best["fine_best_accuracy"].map("{:.4f}".format),
        "coarse": best["coarse_best_accuracy"].map(lambda v: "-" if pd.isna(v) else f"{v:.4f}"),
        "epochs": [epochs_text(row) for _, row in best.iterrows()],
        "time": best["training_seconds"].map(lambda v: "-" if pd.isna(v) else f"{v:.0f} s"),
        "model": best["kept_model"].map({True: "kept", False: "-"}),
    })
    for name in shown:
        table[name] = best[name].map(short_value)
    table["file"] = best["file"]
    return table.to_string(index=False)


def epochs_text(row):
    """The epochs a trial ran, and whether pruning stopped it there."""
    if pd.isna(row["epochs"]):
        return "-"
    return f"{row['epochs']:.0f} pruned" if row["pruned"] else f"{row['epochs']:.0f}"


def short_value(value):
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return tensorboard_hparams.NONE
    if storage.is_number(value):
        return f"{value:.4g}"
    return str(value)


def summary_line(frame, ok, skipped):
    failed = (~ok).sum()
    pruned = (ok & frame["pruned"]).sum()
    line = (f"Summary: {len(frame)} trials read ({ok.sum()} successful"
            + (f", {pruned} of them pruned" if pruned else "")
            + f", {failed} failed), {len(skipped)} skipped")
    if ok.any():
        best = frame.loc[frame.loc[ok, "fine_best_accuracy"].idxmax()]
        line += f"; best fine accuracy {best['fine_best_accuracy']:.4f} in {best['file']}"
    data_sets = frame["dataset"].dropna().unique()
    if len(data_sets) > 1:
        line += (f". warning: the folder mixes results of {len(data_sets)} data sets "
                 f"({'; '.join(data_sets)}), whose accuracies do not compare")
    return line


def scatter_data(frame, hparams, ok):
    """What the scatter matrix draws: the SCATTER_HPARAMS encoded
    hyperparameters most related to fine accuracy, then the fine and coarse
    accuracies, one row per successful trial; and the category labels."""
    trials = frame[ok]
    encoded, labels = encode_hyperparameters(trials, hparams)
    fine = trials["fine_best_accuracy"]
    columns = scatter_columns(encoded, fine, SCATTER_HPARAMS)
    data = encoded[columns].assign(fine_best_accuracy=fine,
                                   coarse_best_accuracy=trials["coarse_best_accuracy"])
    return data.loc[:, data.notna().any()], labels


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


# ------------------------------------------------------ pruning replay ----

def replay_pruning(trials, rule, orders, searches, seed, out_dir):
    """--replay-pruning: replay `rule`, no stopping, Optuna's and Ray Tune's
    defaults and each of the project's rules at its defaults (and, in the
    picture, REPLAY_SWEEPS) on the complete curves of these results: print
    the table, write REPLAY_JSON (for `rule`, with the anchors) and REPLAY_PNG."""
    # By name, so that the figures do not depend on the order the files were listed in.
    results = sorted((t["result"] for t in trials), key=lambda r: r["model_name"])
    curves = [c for c in pruning.completed_curves(results) if np.isfinite(c).any()]
    left_out = len(results) - len(curves)
    if len(curves) < 2:
        print(f"Cannot replay pruning: {len(curves)} complete learning curve(s) in these "
              "results; it needs at least 2 successful trials that were not pruned.")
        return curves, None
    print(f"Replaying stopping rules on {len(curves)} complete learning curves: "
          f"{orders} random orders, {searches} simulated searches to the best (seed {seed})"
          + (f"; {left_out} failed, pruned or curve-less results left out." if left_out else "."))
    baseline = pruning_replay.baseline_times(curves, searches, seed)  # once, for every rule
    rows = pruning_replay.compare(curves, rule, flags.TrialSettings(), orders, searches, seed,
                                  baseline)
    print(replay_table(rows).to_string(index=False))
    figures = rows[0][2]
    print(f"Full search: {figures['epochs_full']} epochs, best {figures['best_accuracy_full']:.4f}."
          " Speed-up: mean epochs to the best without stopping / with the rule; a search that"
          " never finds the best stops after "
          f"{pruning_replay.MAX_DRAWS_PER_CURVE} x {len(curves)} trials.")
    anchors = {key: f for key, _, f in rows if key in pruning_replay.ANCHORS}
    write_output(out_dir / REPLAY_JSON, json.dumps(
        {**figures, "anchors": anchors, "compared": {key: f for key, _, f in rows}},
        indent=2) + "\n")
    compared = [r for _, _, r in pruning_replay.rules_to_compare(rule, flags.TrialSettings())]
    sweeps = [pruning_replay.judge(curves, other, orders, searches, seed, baseline)
              for other in REPLAY_SWEEPS if other not in compared]
    points = [(label, f) for _, label, f in rows] + [(None, f) for f in sweeps]
    write_output(out_dir / REPLAY_PNG, analysis_plots.replay(points))
    print(f"Wrote {REPLAY_JSON}, {REPLAY_PNG} in {out_dir}/")
    return curves, {**figures, "anchors": anchors, "compared": {key: f for key, _, f in rows}}


def replay_split_half(curves, figures, orders, searches, seed, out_dir):
    """--split-half: the default chosen on one seeded half of the curves and
    judged on the other, both ways (pruning_replay.split_half), printed and
    added to REPLAY_JSON under "split_half"."""
    print(f"Choosing among {len(pruning_replay.CANDIDATES)} rules and settings on each half "
          f"of the {len(curves)} curves (the fastest to the best that keeps it in "
          f"{pruning_replay.BEST_KEPT_NEEDED:.0%} of orders and "
          f"{1 - pruning_replay.NEVER_FOUND_ALLOWED:.0%} of searches), judged on the other half:")
    rows = pruning_replay.split_half(curves, orders=orders, searches=searches, seed=seed)
    for row in rows:
        if row["rule"] is None:
            print(f"  chosen on the {row['chosen_on']}: no rule keeps the best there")
            continue
        mine, held = row["chosen_figures"], row["held_out_figures"]
        print(f"  chosen on the {row['chosen_on']}: {row['label']}; there "
              f"{mine['time_to_best_speedup']:.2f}x, best kept {mine['best_kept_fraction']:.1%}; "
              f"held out: {held['time_to_best_speedup']:.2f}x, best kept "
              f"{held['best_kept_fraction']:.1%}, epochs saved {held['epochs_saved_fraction']:.1%}")
    rule, on_all, on_halves = pruning_replay.choose_default(curves, orders=orders,
                                                            searches=searches, seed=seed)
    if rule is None:
        print("No candidate keeps the best on each half and on all the curves.")
    else:
        print(f"The fastest to the best on all {len(curves)} curves that keeps it on each half "
              f"and on all: {rule.label()}: " + ", ".join(
                  f"{name} {f['time_to_best_speedup']:.2f}x (best kept "
                  f"{f['best_kept_fraction']:.1%}, never found "
                  f"{f['searches_without_best_fraction']:.1%})" for name, f in
                  zip(("first half", "second half", "all"), [*on_halves, on_all])))
    default = None if rule is None else {"rule": rule.describe(), "figures": on_all,
                                         "halves": on_halves}
    write_output(out_dir / REPLAY_JSON, json.dumps(
        {**figures, "split_half": rows, "default_choice": default}, indent=2) + "\n")


def replay_table(rows):
    """The replay's printed table: one row per rule."""
    return pd.DataFrame({
        "rule": [label for _, label, _ in rows],
        "epochs saved": [f"{f['epochs_saved_fraction']:.1%}" for _, _, f in rows],
        "best kept": [f"{f['best_kept_fraction']:.1%}" for _, _, f in rows],
        "worst best": [f"{f['worst_best_accuracy']:.4f}" for _, _, f in rows],
        "to best (mean)": [f"{f['time_to_best_epochs_mean']:.0f}" for _, _, f in rows],
        "(median)": [f"{f['time_to_best_epochs_median']:.0f}" for _, _, f in rows],
        "speed-up": [f"{f['time_to_best_speedup']:.2f}x" for _, _, f in rows],
        "never found": [f"{f['searches_without_best_fraction']:.1%}" for _, _, f in rows],
    })


# ------------------------------------------------------------------ main ----

def build_parser():
    parser = flags.OneLineErrorParser(
        description=__doc__.split("\n\n")[0],
        epilog="Writes results.csv, hyperparameters_scatter_matrix.png, "
               "optimization_history.png and learning_curves.png in --out-dir.")
    parser.add_argument("--results-dir", default=flags.RESULTS_DIR,
                        help="folder of the trials' *.txt.json (default: %(default)s)")
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
        "learning curves of these results, instead of the analysis: the epochs a rule "
        "would have saved, how often the best trial survives, and the epochs until a "
        "search holds the best trial (time to best), for the rule chosen below, no "
        "stopping, Optuna's and Ray Tune's defaults and each rule at its defaults; "
        f"writes {REPLAY_JSON} and {REPLAY_PNG}")
    replay.add_argument("--replay-pruning", action="store_true", help="replay, see above")
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
    results_dir = Path(args.results_dir)
    if not results_dir.is_dir():
        print(f"error: results folder {results_dir} does not exist (see --results-dir)",
              file=sys.stderr)
        return 1
    trials, skipped = read_results(results_dir)
    for path, reason in skipped:
        print(f"warning: skipped {path.name}: {reason}", file=sys.stderr)
    if not trials:
        print(f"No trial results (*{storage.RESULT_SUFFIX}) to analyse in {results_dir}/"
              + (f" ({len(skipped)} skipped)." if skipped else "."))
        return 0
    try:
        if args.replay_pruning:
            rule = pruning.rule_of(settings)
            if rule is None:
                print("error: --replay-pruning needs a rule: --prune none replays nothing "
                      f"(give one of {', '.join(flags.PRUNE_RULES[:-1])})", file=sys.stderr)
                return 2
            out_dir = make_out_dir(args.out_dir or args.results_dir)
            curves, figures = replay_pruning(trials, rule, args.orders, args.searches,
                                             args.seed, out_dir)
            if args.split_half and figures is not None:
                if len(curves) < 4:
                    print("--split-half needs at least 4 complete curves, 2 on each half.")
                else:
                    replay_split_half(curves, figures, args.orders, args.searches,
                                      args.seed, out_dir)
        else:
            analyse(trials, skipped, args)
    except OutputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


def make_out_dir(folder):
    out_dir = Path(folder)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputError(f"cannot use --out-dir {out_dir}: {storage.os_error_text(err)}") from None
    return out_dir


def analyse(trials, skipped, args):
    """Print the failed trials and the leaderboard, write the CSV, the plots
    and the TensorBoard runs, print the summary."""
    out_dir = make_out_dir(args.out_dir or args.results_dir)
    frame, hparams = trials_frame(trials)
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
        print(leaderboard(frame, hparams, ok, args.top) + "\n")
    else:
        print("No successful trial: no leaderboard, scatter matrix or learning curves.")

    write_output(out_dir / CSV_NAME, frame.convert_dtypes().to_csv(index=False))
    written = [CSV_NAME]
    if ok.any():
        write_output(out_dir / SCATTER_PNG, analysis_plots.scatter_matrix(
            *scatter_data(frame, hparams, ok)))
        write_output(out_dir / CURVES_PNG,
                     analysis_plots.learning_curves(trials, frame, ok, args.top))
        written += [SCATTER_PNG, CURVES_PNG]
    ordered_by_id = any(b["mtime"] - a["mtime"] < TIE_SECONDS
                        for a, b in zip(trials, trials[1:]))
    write_output(out_dir / HISTORY_PNG, analysis_plots.history(frame, ok, ordered_by_id))
    written.append(HISTORY_PNG)
    print(f"Wrote {', '.join(written)} in {out_dir}/")

    if args.to_tensorboard:
        write_tensorboard(trials, args.to_tensorboard, tensorboard_conditionals(frame, hparams))
    print(summary_line(frame, ok, skipped))


if __name__ == "__main__":
    sys.exit(main())
