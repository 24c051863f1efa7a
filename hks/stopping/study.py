"""The stopping rules judged across searches: every candidate rule (its
epoch settings as shares of training, so one rule serves 20 and 500 epochs)
replayed on every set of learning curves, the default chosen on some sets
and judged on the one left out, and the figures the README gives.

    python3 -m hks.stopping.study --out docs/pruning_study.json

reads the original search's 42 curves (tests/fixtures/original-results/)
and the public curve files (tests/fixtures/curves/), and takes about an
hour on 2 cores. A rule meets the bar when it gets within half a point of
the best in 99% of simulated searches on every set whose learning rate does
not drop late, and keeps the original's exact best in 99% of orders; the
default is the fastest rule that does (the geometric mean of its speed-ups
to within half a point, over those sets). Nothing here imports Keras."""

import argparse
import concurrent.futures
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

from hks.core import storage
from hks.stopping import curve_files, learned, pruning, pruning_replay

ROOT = Path(__file__).resolve().parents[2]
ORIGINAL = "original"  # the original search's 42 curves, CIFAR-100, 100 epochs
ORIGINAL_DIR = ROOT / "tests" / "fixtures" / "original-results"
CURVES_DIR = ROOT / "tests" / "fixtures" / "curves"
PUBLIC = {  # name: (file, whether its learning rate drops late in training)
    "metaqnn_cifar10": ("baker2018_metaqnn_cifar10.csv", False),
    "metaqnn_svhn": ("baker2018_metaqnn_svhn.csv", False),
    "resnets_cifar10": ("baker2018_deep_resnets_cifar10.csv", True),
    "resnets_tinyimagenet": ("baker2018_deep_resnets_tinyimagenet.csv", True),
    "alexnet_imagenet": ("baker2018_alexnet_imagenet.csv", True),
}
SAMPLE = 42  # curves a simulated search of a public set draws from: the original's count
NEAR_NEEDED = 0.99  # within half a point in 99% of searches, on every set without a late drop
KEPT_NEEDED = 0.99  # and the original's exact best kept in 99% of orders
CANDIDATES = ([pruning.MedianRule(startup, warmup) for startup in (3, 5, 8)
               for warmup in (0.1, 0.2, 0.3, 0.4)]
              + [pruning.AshaRule(grace, reduction) for grace in (0.05, 0.1, 0.15, 0.2, 0.3)
                 for reduction in (2, 3, 4)]
              + [learned.LearnedRule.shipped(startup) for startup in (1, 3, 5)])
ANCHORS = [rule for _, rule in pruning_replay.ANCHORS.values()]


def load_sets():
    """{name: curves} of the original's results and the public files."""
    results = [storage.load_json_result(p) for p in sorted(ORIGINAL_DIR.glob("*.txt.json"))]
    sets = {ORIGINAL: [np.asarray(c, dtype=float) for c in pruning.completed_curves(results)]}
    for name, (file, _) in PUBLIC.items():
        curves, _ = curve_files.read_curves(CURVES_DIR / file)
        sets[name] = list(curves)
    return sets


def late_drop(name):
    return name != ORIGINAL and PUBLIC[name][1]


def judge(curves, rule, name, plan, baseline=None):
    """Both replays of `rule` on one set (the public ones 42 curves at a time)."""
    sample = None if name == ORIGINAL else SAMPLE
    return pruning_replay.judge(curves, rule, plan.orders, plan.searches, plan.seed,
                                baseline, plan.within, sample)


def meets_bar(figures, names):
    """Whether a rule's figures ({set: figures}) on the sets `names` meet the bar."""
    for name in names:
        f = figures[name]
        if not late_drop(name) and f["searches_without_within_fraction"] > 1 - NEAR_NEEDED:
            return False
        if name == ORIGINAL and f["best_kept_fraction"] < KEPT_NEEDED:
            return False
    return True


def speed(figures, names):
    """The geometric mean of the speed-ups to within half a point over the
    sets `names` without a late drop (the sets the bar holds the rule to)."""
    ups = [figures[n]["time_within_speedup"] for n in names if not late_drop(n)]
    return math.exp(np.mean(np.log(ups))) if ups else 0.0


def choose(table, names):
    """The fastest rule of `table` ({label: {set: figures}}) meeting the bar on `names`."""
    passing = [label for label, figures in table.items() if meets_bar(figures, names)]
    return max(passing, key=lambda label: speed(table[label], names), default=None)


_work = {}  # in each process of the pool: the sets, their baselines, the plan


def prepare(plan):
    sets = load_sets()
    baselines = {name: pruning_replay.baseline_times(
        curves, plan.searches, plan.seed, plan.within, None if name == ORIGINAL else SAMPLE)
        for name, curves in sets.items()}
    _work.update(sets=sets, baselines=baselines, plan=plan)


def judge_everywhere(rule):
    """(rule's label, {set: figures}, seconds) in a process of the pool."""
    started = time.perf_counter()
    sets, baselines, plan = _work["sets"], _work["baselines"], _work["plan"]
    figures = {name: judge(curves, rule, name, plan, baselines[name])
               for name, curves in sets.items()}
    return rule.label(), figures, time.perf_counter() - started


def run(plan, log=print, jobs=1):
    """Every candidate and anchor on every set (in `jobs` processes), the
    leave-one-out choices and the default: the study's JSON."""
    prepare(plan)
    sets, baselines = _work["sets"], _work["baselines"]
    rules = {rule.label(): rule for rule in CANDIDATES + ANCHORS}
    table = {}
    with concurrent.futures.ProcessPoolExecutor(jobs, initializer=prepare,
                                                initargs=(plan,)) as pool:
        for label, figures, seconds in pool.map(judge_everywhere, rules.values()):
            table[label] = figures
            log(f"{label}: {seconds:.0f} s")
    candidates = {rule.label(): table[rule.label()] for rule in CANDIDATES}
    held_out = {name: choose(candidates, [n for n in sets if n != name]) for name in sets}
    default = choose(candidates, list(sets))
    return {"plan": plan._asdict(), "sample": SAMPLE, "sets": {
                name: {"curves": len(curves), "epochs": len(curves[0]),
                       "late_drop": late_drop(name)} for name, curves in sets.items()},
            "rules": {label: rule.describe() for label, rule in rules.items()},
            "figures": table, "chosen_leaving_out": held_out, "default": default,
            "learned_fitted_without": learned_held_out(sets, plan, baselines)}


def learned_held_out(sets, plan, baselines):
    """The learned rule refitted on its files less one, judged on that one:
    its figures on a set it was not fitted on ({set: figures}); the sets it
    never was fitted on (the original, the late drops) need no refit."""
    shipped = learned.shipped_table()
    rows = {}
    for name, (file, _) in PUBLIC.items():
        if file not in shipped["fitted_on"]:
            continue
        table = learned.refit([CURVES_DIR / f for f in shipped["fitted_on"] if f != file],
                              like=shipped)
        rows[name] = judge(sets[name], learned.LearnedRule.of(table), name, plan,
                           baselines[name])
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python3 -m hks.stopping.study",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="the study's JSON")
    parser.add_argument("--orders", type=int, default=pruning_replay.REPLAY_ORDERS)
    parser.add_argument("--searches", type=int, default=pruning_replay.SEARCHES)
    parser.add_argument("--jobs", type=int, default=2, help="processes (default: %(default)s)")
    args = parser.parse_args(argv)
    plan = pruning_replay.Plan(args.orders, args.searches)
    study = run(plan, log=lambda line: print(line, file=sys.stderr, flush=True), jobs=args.jobs)
    storage.atomic_write(args.out, json.dumps(study, indent=1) + "\n")
    print(f"default: {study['default']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
