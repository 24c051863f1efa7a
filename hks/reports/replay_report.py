"""What analyze_results.py --replay-pruning prints and writes: the stopping
rules replayed on complete learning curves (a results folder's, or a curve
file's), as a table, pruning_replay.json and pruning_replay.png; with
--split-half, the default chosen on one half of the curves and judged on
the other. The replays themselves are hks/stopping/pruning_replay.py.
Returns what to write; the caller writes it. Imports no Keras."""

import json

import numpy as np
import pandas as pd

from hks.core import flags
from hks.reports import analysis_plots
from hks.stopping import pruning, pruning_replay

REPLAY_JSON = "pruning_replay.json"
REPLAY_PNG = "pruning_replay.png"
# More settings of the rules, drawn in pruning_replay.png beside the rules of the table.
REPLAY_SWEEPS = [pruning.MedianRule(3, 25), pruning.MedianRule(8, 12), pruning.MedianRule(4, 40),
                 pruning.AshaRule(10, 3), pruning.AshaRule(5, 3), pruning.AshaRule(10, 2),
                 pruning.AshaRule(20, 2), pruning.AshaRule(20, 3), pruning.AshaRule(30, 3)]


def curves_of_results(trials):
    """The complete learning curves of analyze_results' trials, in the order
    of their names (so the figures do not depend on how files were listed),
    and how many results had none (failed, pruned, no history)."""
    results = sorted((t["result"] for t in trials), key=lambda r: r["model_name"])
    curves = [c for c in pruning.completed_curves(results) if np.isfinite(c).any()]
    return curves, len(results) - len(curves)


def replay(curves, rule, plan, what):
    """Replay `rule`, no stopping, Optuna's and Ray Tune's defaults and each
    of the project's rules at its defaults (and, in the picture,
    REPLAY_SWEEPS) on `curves` (described by `what`): print the table and
    return (figures, {file name: bytes to write})."""
    print(f"Replaying stopping rules on {what}: {plan.orders} random orders, {plan.searches} "
          f"simulated searches to the best (seed {plan.seed})"
          + (f", each of {plan.sample} curves drawn at random" if plan.sample else "") + ".")
    baseline = pruning_replay.baseline_times(curves, plan.searches, plan.seed, plan.within,
                                             plan.sample)  # once, for every rule
    rows = pruning_replay.compare(curves, rule, flags.TrialSettings(), plan.orders,
                                  plan.searches, plan.seed, baseline, plan.within, plan.sample)
    print(replay_table(rows).to_string(index=False))
    figures = rows[0][2]
    drawn = plan.sample or len(curves)
    print(f"Full search: {figures['epochs_full']} epochs, best {figures['best_accuracy_full']:.4f}."
          " Speed-up: mean epochs to the best without stopping / with the rule; 'within': to "
          f"a trial within {plan.within:g} of the best; a search that never finds the best "
          f"stops after {pruning_replay.MAX_DRAWS_PER_CURVE} x {drawn} trials.")
    anchors = {key: f for key, _, f in rows if key in pruning_replay.ANCHORS}
    figures = {**figures, "anchors": anchors, "compared": {key: f for key, _, f in rows}}
    compared = [r for _, _, r in pruning_replay.rules_to_compare(rule, flags.TrialSettings())]
    sweeps = [pruning_replay.judge(curves, other, plan.orders, plan.searches, plan.seed,
                                   baseline, plan.within, plan.sample)
              for other in REPLAY_SWEEPS if other not in compared]
    points = [(label, f) for _, label, f in rows] + [(None, f) for f in sweeps]
    return figures, {REPLAY_JSON: as_json(figures), REPLAY_PNG: analysis_plots.replay(points)}


def split_half(curves, figures, plan):
    """--split-half: the default chosen on one seeded half of the curves and
    judged on the other, both ways (pruning_replay.split_half), printed;
    returns the new REPLAY_JSON, with "split_half" and "default_choice"."""
    orders, searches, seed = plan.orders, plan.searches, plan.seed
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
    return as_json({**figures, "split_half": rows, "default_choice": default})


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
        "within: speed-up": [f"{f['time_within_speedup']:.2f}x" for _, _, f in rows],
        "never within": [f"{f['searches_without_within_fraction']:.1%}" for _, _, f in rows],
    })


def as_json(figures):
    return (json.dumps(figures, indent=2) + "\n").encode()
