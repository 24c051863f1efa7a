"""The table of a search's trials that analyze_results.py prints and
writes: the result files read (oldest first, unusable ones skipped with the
reason), one row per trial with its hyperparameters, their encoding as
numbers for the plots, the leaderboard and the summary line. Imports no
Keras."""

import math
from pathlib import Path

import numpy as np
import pandas as pd

from hks.core import console, storage
from hks.reports import tensorboard_hparams

LEADERBOARD_HPARAMS = 6  # hyperparameter columns shown in the leaderboard
SCATTER_HPARAMS = 10  # hyperparameter columns in the scatter matrix (+ 2 accuracies)
TIE_SECONDS = 0.1  # result files written closer than this were copied together

# What a result says about its trial, in the order of the CSV's columns.
RESULT_COLUMNS = [
    "fine_best_accuracy", "coarse_best_accuracy", "fine_end_accuracy",
    "coarse_end_accuracy", "fine_best_loss", "coarse_best_loss", "fine_end_loss",
    "coarse_end_loss", "loss", "real_loss", "test_fine_accuracy", "test_coarse_accuracy",
    "epochs", "pruned_at_epoch", "training_seconds", "nb_params", "train_images",
    "validation_images",
]


def read_results(results_dir):
    """Every *.txt.json of the folder, oldest first (see trial_order).
    Returns (trials, skipped): trials are dicts with the file's `path`,
    `mtime` and `result`; skipped are (path, reason) of unusable files."""
    read, skipped = [], []
    for name in storage.result_files(results_dir):
        path = Path(name)
        try:
            read.append((storage.load_json_result(path), path.stat().st_mtime, path))
        except (OSError, ValueError) as err:  # ValueError: bad JSON or bad UTF-8
            skipped.append((path, f"not readable JSON ({err})"))
    return usable(read, skipped)


def results_as_trials(results):
    """read_results' (trials, skipped) for results that are no files (an
    experiment's in MongoDB): [(result, seconds since the epoch it finished)];
    each trial's `path` is the name its result file has."""
    return usable([(result, when, Path(f"{result.get('model_name')}{storage.RESULT_SUFFIX}"))
                   for result, when in results], [])


def usable(read, skipped):
    """(trials, skipped) of [(result, mtime, path)]: the trial results in
    the order trial_order gives, the others added to `skipped` with why."""
    trials = []
    for result, mtime, path in read:
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
