"""Replay the stopping rules of pruning.py on complete learning curves (one
per trial of a search that trained every epoch), through the rules' own
code, to judge them:

- `replay`: the curves in random orders, without replacement, as one
  search: the epochs the rule would have saved, and whether the pruned
  search still finds the full search's best trial.
- `time_to_best`: the question a user asks, how many epochs until the search
  holds its best model. A simulated search draws trials at random, WITH
  replacement (standing in for TPE proposing more trials in the time that
  stopping saves), and runs them one after another under the rule; it ends
  when a trial reaches the set's best accuracy (a best trial stopped before
  it got there does not count, and may be drawn again). Each trial sees what
  a real search would: its own curve so far, and the earlier trials
  (complete ones whole, stopped ones as far as they ran).

- `split_half`: how the default was chosen. On one seeded random half of
  the curves, the candidate fastest to the best among those that keep it in
  99% of orders (`choose`), judged on the other half; and the other way
  round.

Nothing here imports Keras. analyze_results.py --replay-pruning prints them.
"""

import dataclasses
import math
import typing

import numpy as np

from hks.core import storage
from hks.stopping import pruning

REPLAY_ORDERS = 500  # analyze_results.py --replay-pruning
SEARCHES = 1000  # simulated searches for the time to best
MAX_DRAWS_PER_CURVE = 10  # a search that never finds the best ends after 10 x N trials
WITHIN = 0.005  # "as good as the best": half a point of accuracy below it (--within)


class Plan(typing.NamedTuple):
    """How the rules are replayed: random orders, simulated searches, their
    seed, the margin of "as good as the best" and the curves each search
    draws from (None: all of them)."""
    orders: int = REPLAY_ORDERS
    searches: int = SEARCHES
    seed: int = 0
    within: float = WITHIN
    sample: int | None = None


class Run:
    """The trials of one replayed search so far, as the table the rules read."""

    def __init__(self, rule, epochs, capacity):
        self.rule, self.epochs = rule, epochs
        self.table = np.full((capacity, epochs), np.nan)
        self.stopped = np.zeros(capacity, dtype=bool)
        self.count = 0
        self.thresholds = rule.from_table(self.table[:0], self.stopped[:0])

    def train(self, curve):
        """Run one trial of `curve` under the rule: the epochs it ran."""
        stop = self.rule.first_stop(curve, self.thresholds)
        ran = curve if stop is None else curve[:stop]
        if self.count == len(self.table):  # grow: a long simulated search
            self.table = np.vstack([self.table, np.full_like(self.table, np.nan)])
            self.stopped = np.concatenate([self.stopped, np.zeros_like(self.stopped)])
        self.table[self.count, :len(ran)] = ran
        self.stopped[self.count] = stop is not None
        self.count += 1
        if stop is None or self.rule.reads_stopped:  # else the thresholds stay as they are
            self.thresholds = self.rule.from_table(self.table[:self.count],
                                                   self.stopped[:self.count])
        return ran


def prepared(curves, epochs):
    curves = [np.asarray(c, dtype=float) for c in curves]
    epochs = epochs or max(len(c) for c in curves)
    return [c[:epochs] for c in curves], epochs


def pool_of(count, sample, rng):
    """The curves one replayed search draws from: all of them, or `sample`
    drawn at random (a set of hundreds, searched 42 at a time)."""
    if sample is None or sample >= count:
        return np.arange(count)
    return rng.choice(count, size=sample, replace=False)


def replay(curves, rule, orders=REPLAY_ORDERS, seed=0, epochs=None, sample=None):
    """`rule` on `curves` taken in `orders` random orders (of `sample` of
    them each, when given): for each, the epochs that would have been
    trained and the best accuracy the pruned search would have found, beside
    the best of its curves. Returns the figures of pruning_replay.json."""
    curves, epochs = prepared(curves, epochs)
    bests_of = np.array([storage.best_of(c) for c in curves])
    rng = np.random.default_rng(seed)
    trained, full, found, targets, pruned = [], [], [], [], []
    for _ in range(orders):
        pool = pool_of(len(curves), sample, rng)
        run, total, best = Run(rule, epochs, len(pool)), 0, -math.inf
        for index in pool[rng.permutation(len(pool))]:
            ran = run.train(curves[index])
            total += len(ran)
            best = max(best, storage.best_of(ran))
        trained.append(total)
        full.append(sum(len(curves[i]) for i in pool))
        found.append(best)
        targets.append(bests_of[pool].max())
        pruned.append(int(run.stopped[:run.count].sum()))
    found, targets = np.asarray(found), np.asarray(targets)
    return {
        "rule": rule.describe(),
        "trials": len(curves) if sample is None else min(sample, len(curves)),
        "orders": orders,
        "seed": seed,
        "epochs_full": int(round(np.mean(full))),
        "epochs_with_pruning_mean": float(np.mean(trained)),
        "epochs_saved_fraction": float(1 - np.mean(trained) / np.mean(full)),
        "pruned_trials_mean": float(np.mean(pruned)),
        "best_accuracy_full": float(bests_of.max()),
        "best_kept_fraction": float(np.mean(found >= targets)),
        "worst_best_accuracy": float(found.min()),
    }


class Times(typing.NamedTuple):
    """search_times' answer: per simulated search, the epochs until it held
    the best trial of its curves (`exact`) and until it held one within
    `within` of it (`near`), and how many searches never got there."""
    exact: np.ndarray
    near: np.ndarray
    without_exact: int
    without_near: int


def search_times(curves, rule, searches, seed, epochs, within=WITHIN, sample=None):
    """Epochs until each of `searches` simulated searches holds the best
    trial (see the module's doc), and a trial within `within` of it; a
    search that has not found the best after MAX_DRAWS_PER_CURVE x (its)
    curves trials counts what it trained so far (and is counted in
    `without_exact`, and in `without_near` if it never came within)."""
    bests_of = np.array([storage.best_of(c) for c in curves])
    rng = np.random.default_rng(seed)
    exact, near, without_exact, without_near = [], [], 0, 0
    for _ in range(searches):
        pool = pool_of(len(curves), sample, rng)
        target = bests_of[pool].max()
        run, total, near_at = Run(rule, epochs, 4 * len(pool)), 0, None
        for index in pool[rng.integers(len(pool), size=MAX_DRAWS_PER_CURVE * len(pool))]:
            ran = run.train(curves[index])
            total += len(ran)
            best = storage.best_of(ran)
            if near_at is None and best >= target - within:
                near_at = total
            if best >= target:
                break
        else:
            without_exact += 1
        if near_at is None:
            without_near += 1
        exact.append(total)
        near.append(total if near_at is None else near_at)
    return Times(np.asarray(exact, dtype=float), np.asarray(near, dtype=float),
                 without_exact, without_near)


class NoRule(pruning.Rule):
    """Trains every epoch: the baseline of the time to best."""
    name = "none"

    def describe(self):
        return {"name": "none"}

    def label(self):
        return "none"

    def from_table(self, table, stopped):
        return np.full(table.shape[1], np.nan)


def time_to_best(curves, rule, searches=SEARCHES, seed=0, epochs=None, baseline=None,
                 within=WITHIN, sample=None):
    """Time to best under `rule` and without stopping (the same draws: the
    same seed), in epochs: {time_to_best_epochs_mean, ..._median,
    time_to_best_no_pruning_epochs_mean, time_to_best_speedup, searches},
    and the same to a trial within `within` of the best (time_within_...).
    `baseline`: the no-stopping Times when already computed."""
    curves, epochs = prepared(curves, epochs)
    mine = search_times(curves, rule, searches, seed, epochs, within, sample)
    if baseline is None:
        baseline = search_times(curves, NoRule(), searches, seed, epochs, within, sample)
    return {
        "time_to_best_epochs_mean": float(mine.exact.mean()),
        "time_to_best_epochs_median": float(np.median(mine.exact)),
        "time_to_best_no_pruning_epochs_mean": float(baseline.exact.mean()),
        "time_to_best_no_pruning_epochs_median": float(np.median(baseline.exact)),
        "time_to_best_speedup": float(baseline.exact.mean() / mine.exact.mean()),
        "searches": searches,
        "searches_without_best_fraction": mine.without_exact / searches,
        "within": within,
        "time_within_epochs_mean": float(mine.near.mean()),
        "time_within_no_pruning_epochs_mean": float(baseline.near.mean()),
        "time_within_speedup": float(baseline.near.mean() / mine.near.mean()),
        "searches_without_within_fraction": mine.without_near / searches,
    }


def judge(curves, rule, orders=REPLAY_ORDERS, searches=SEARCHES, seed=0, baseline=None,
          within=WITHIN, sample=None):
    """Both replays of `rule`: the keys of pruning_replay.json."""
    return {**replay(curves, rule, orders, seed, sample=sample),
            **time_to_best(curves, rule, searches, seed, baseline=baseline, within=within,
                           sample=sample)}


# Measured the same way beside the project's rules: what users of Optuna and
# Ray Tune get by default (Optuna's MedianPruner: n_startup_trials 5,
# n_warmup_steps 0; Ray Tune's ASHAScheduler: grace_period 1, reduction_factor 4).
ANCHORS = {"optuna_median_default": ("Optuna's default median", pruning.MedianRule(5, 0)),
           "ray_asha_default": ("Ray Tune's default ASHA", pruning.AshaRule(1, 4))}


def rules_to_compare(chosen, defaults):
    """(key, label, rule) rows: the chosen rule, no stopping, the anchors and
    each of the project's rules at its defaults (`defaults`: a flags
    TrialSettings), each rule once."""
    own = [pruning.rule_of(dataclasses.replace(defaults, prune=name)) for name in pruning.RULES]
    chosen_label = f"{chosen.label()}{': default' if chosen in own else ''} (chosen)"
    rows = [("chosen", chosen_label, chosen), ("none", "none", NoRule())]
    rows += [(key, f"{label}: {rule.label()}", rule) for key, (label, rule) in ANCHORS.items()]
    rows += [(f"{rule.name}_default", f"{rule.label()}: default", rule) for rule in own]
    seen, unique = set(), []
    for key, label, rule in rows:
        if repr(rule.describe()) not in seen:
            seen.add(repr(rule.describe()))
            unique.append((key, label, rule))
    return unique


def baseline_times(curves, searches=SEARCHES, seed=0, within=WITHIN, sample=None):
    """The no-stopping search Times that every rule's speed-up divides: the
    same for every rule replayed with the same searches and seed."""
    prepared_curves, epochs = prepared(curves, None)
    return search_times(prepared_curves, NoRule(), searches, seed, epochs, within, sample)


def compare(curves, chosen, defaults, orders=REPLAY_ORDERS, searches=SEARCHES, seed=0,
            baseline=None, within=WITHIN, sample=None):
    """judge() of every row of rules_to_compare, with one shared baseline:
    [(key, label, figures)]."""
    if baseline is None:
        baseline = baseline_times(curves, searches, seed, within, sample)
    return [(key, label, judge(curves, rule, orders, searches, seed, baseline, within, sample))
            for key, label, rule in rules_to_compare(chosen, defaults)]


# ------------------------------------------- choosing the default ----

BEST_KEPT_NEEDED = 0.99  # a default keeps the best trial in 99% of orders
NEVER_FOUND_ALLOWED = 0.01  # and lets at most 1% of simulated searches miss it
CANDIDATES = ([pruning.MedianRule(startup, warmup) for startup in (3, 4, 5, 8)
               for warmup in (5, 10, 15, 20, 25, 30)]
              + [pruning.AshaRule(grace, reduction)
                 for grace in (1, 5, 10, 15, 20, 25, 30) for reduction in (2, 3, 4)])


def keeps_the_best(figures):
    """Whether a rule's figures (judge's) keep the best trial: in
    BEST_KEPT_NEEDED of orders and all but NEVER_FOUND_ALLOWED of searches."""
    return (figures["best_kept_fraction"] >= BEST_KEPT_NEEDED
            and figures["searches_without_best_fraction"] <= NEVER_FOUND_ALLOWED)


def judged_if_kept(curves, rule, orders, searches, seed, baseline):
    """judge(), or only the replay's figures when it loses the best there
    (the time to best of such a rule is the slow one to simulate)."""
    figures = replay(curves, rule, orders, seed)
    if figures["best_kept_fraction"] >= BEST_KEPT_NEEDED:
        figures.update(time_to_best(curves, rule, searches, seed, baseline=baseline))
    return figures


def fastest(rows):
    """(rule, figures) of the fastest to the best of `rows` whose figures on
    every set keep the best (the last set's speed-up decides); (None, None)."""
    passing = [(rule, sets) for rule, sets in rows if all(
        "time_to_best_speedup" in f and keeps_the_best(f) for f in sets)]
    if not passing:
        return None, None
    rule, sets = max(passing, key=lambda pair: pair[1][-1]["time_to_best_speedup"])
    return rule, sets[-1]


def halves_of(count, seed):
    """A seeded random split of range(count) into two sorted halves."""
    order = np.random.default_rng(seed).permutation(count)
    return sorted(order[:count // 2]), sorted(order[count // 2:])


def choose(curves, candidates=CANDIDATES, orders=REPLAY_ORDERS, searches=SEARCHES, seed=0):
    """The candidate fastest to the best on `curves` among those that keep it
    (keeps_the_best), with its figures; (None, None) when none does."""
    baseline = baseline_times(curves, searches, seed)
    return fastest([(rule, [judged_if_kept(curves, rule, orders, searches, seed, baseline)])
                    for rule in candidates])


def split_half(curves, candidates=CANDIDATES, orders=REPLAY_ORDERS, searches=SEARCHES, seed=0):
    """Choose on one seeded random half of `curves`, judge on the other, and
    the other way round: [{chosen_on, curves (indices), rule, label,
    chosen_figures, held_out_figures}].
    Settings tuned on all the curves flatter themselves; these do not."""
    first, second = halves_of(len(curves), seed)
    rows = []
    for name, mine, other in (("first half", first, second), ("second half", second, first)):
        rule, figures = choose([curves[i] for i in mine], candidates, orders, searches, seed)
        held_out = None if rule is None else judge([curves[i] for i in other], rule, orders,
                                                   searches, seed)
        rows.append({"chosen_on": name, "curves": [int(i) for i in mine],
                     "rule": None if rule is None else rule.describe(),
                     "label": None if rule is None else rule.label(),
                     "chosen_figures": figures, "held_out_figures": held_out})
    return rows


def choose_default(curves, candidates=CANDIDATES, orders=REPLAY_ORDERS, searches=SEARCHES,
                   seed=0):
    """The project's default: the candidate fastest to the best on all
    `curves` among those that keep the best on each half (halves_of) and on
    all of them. Returns (rule, figures on all, [figures on each half])."""
    sets = [[curves[i] for i in half] for half in halves_of(len(curves), seed)] + [curves]
    baselines = [baseline_times(c, searches, seed) for c in sets]
    rows = [(rule, [judged_if_kept(c, rule, orders, searches, seed, b)
                    for c, b in zip(sets, baselines)]) for rule in candidates]
    rule, figures = fastest(rows)
    halves = [] if rule is None else dict(rows)[rule][:2]
    return rule, figures, halves
