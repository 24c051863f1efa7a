"""Stop hopeless trials early: the stopping rules (--prune), the earlier
trials' learning curves they compare a trial with, and what they did.

A rule looks at a trial after each epoch: its validation fine accuracy so
far, and the search's earlier trials (complete ones whole, stopped ones as
far as they ran). It never stops a trial at its last epoch (that saves
nothing, and a trial that ran every epoch counts as completed). NaN values
are left out on both sides, and a tie goes on. The rules:

- `asha` (asynchronous successive halving, as Ray Tune's ASHAScheduler
  defines it; the default): at the rungs, epochs `grace` x `reduction`^k,
  stop a trial whose accuracy there is below the (1 - 1/reduction) quantile
  of the accuracies there of every earlier trial that reached the rung
  (stopped ones included).
- `median` (Google Vizier's median stopping rule, as Optuna's MedianPruner
  applies it): after epoch e, stop when the trial's best so far is below the
  median at epoch e of the earlier trials that completed and reached e; not
  at or before epoch `warmup`, nor where fewer than `startup` completed
  trials reached e.
- `learned` (learned.py): stop a trial further behind the leading completed
  trial than good trials of other searches ever were.

An epoch setting (`warmup`, `grace`) is a number of epochs or a share of
the trial's epochs (0.3: epoch 30 of 100, 6 of 20). One copy of each rule
serves all its users: the trials' Keras callback
(training_callbacks.PruningCallback, fed with the earlier trials by the
search or, on a MongoDB worker, by hks/mongo/mongo_curves.py) and the
replays of pruning_replay.py (analyze_results.py --replay-pruning). Nothing
here imports Keras.

    rule = MedianRule(startup=8, warmup=0.3)
    thresholds = rule.thresholds(earlier_trials(results), epochs=100)
    rule.below(curve_so_far, thresholds)[-1]    # True: stop the trial now
"""

import dataclasses
import typing
import warnings

import numpy as np

from hks.core import flags, storage

REFRESH_EPOCHS = 3  # a MongoDB worker's trial rereads the other trials' curves this often


class Earlier(typing.NamedTuple):
    """One earlier trial as a rule sees it: its validation fine accuracy per
    epoch as far as it ran, and whether it was stopped by a rule. A plain
    list of values given where an Earlier is expected is a completed trial."""
    curve: list
    stopped: bool = False


def as_earlier(trials):
    """`trials` (Earlier, or plain curves: completed trials) as Earlier."""
    return [t if isinstance(t, Earlier) else Earlier(list(t)) for t in trials]


def table_of(curves, epochs):
    """The curves as rows of a len(curves) x epochs array, NaN past their end."""
    table = np.full((len(curves), epochs), np.nan)
    for row, curve in zip(table, curves):
        values = np.asarray(curve[:epochs], dtype=float)
        row[:len(values)] = values
    return table


def best_so_far(curve):
    curve = np.asarray(curve, dtype=float)
    return np.fmax.accumulate(curve) if len(curve) else curve


def compare(values, thresholds):
    """Per epoch of `values`: whether it is below that epoch's threshold
    (False where either is NaN; a tie is not below)."""
    limits = np.full(len(values), np.nan)
    shown = min(len(values), len(thresholds))
    limits[:shown] = thresholds[:shown]
    with np.errstate(invalid="ignore"):
        return values < limits


class Rule:
    """What every rule offers: `thresholds(earlier, epochs)`, one value per
    epoch 1..epochs (NaN where it does not stop), and `below(curve,
    thresholds)`, per epoch of a trial's curve whether it would stop there.
    A rule computes its thresholds in `from_table(table, stopped)`: the
    earlier trials as rows of an array (NaN past where they ran) and which
    of them were stopped; the replays build that table as they go.
    `reads_stopped`: whether stopped trials change the thresholds."""
    name = ""
    reads_stopped = True

    def thresholds(self, earlier, epochs):
        earlier = as_earlier(earlier)
        return self.from_table(table_of([t.curve for t in earlier], epochs),
                               np.array([t.stopped for t in earlier], dtype=bool))

    def describe(self):
        return {"name": self.name, **dataclasses.asdict(self)}

    def label(self):
        """`median (startup 8, warmup 30%)`, for tables and pictures: a
        setting given as a share of the epochs shows as a percentage."""
        settings = ", ".join(f"{k.replace('_', ' ')} {flags.share_text(v)}"
                             for k, v in dataclasses.asdict(self).items())
        return f"{self.name} ({settings})"

    def acts_within(self, epochs):
        """Whether the rule can stop a trial of `epochs` epochs at all."""
        return True

    def never_acts(self, epochs):
        """One line when the rule can never stop a trial of `epochs` epochs, else ""."""
        if self.acts_within(epochs):
            return ""
        return (f"note: --prune {self.name} never stops a trial at --epochs {epochs}: "
                f"{self.why_idle(epochs)} Give the setting as a share of --epochs (0.3 or "
                "30%), or a smaller number.")

    def below(self, curve, thresholds):
        return compare(best_so_far(curve), thresholds)

    def first_stop(self, curve, thresholds):
        """The epoch (1-based) at which `curve` would have been stopped, or None."""
        stops = np.flatnonzero(self.below(curve, thresholds))
        return int(stops[0]) + 1 if stops.size else None


def linear_quantile(values, q):
    """np.quantile(values, q) of its default (linear) method, to the last
    bit, in a tenth of its time: the replays call it for every trial."""
    ordered = np.sort(values)
    position = q * (len(ordered) - 1)
    low = int(position)
    if low + 1 >= len(ordered):
        return float(ordered[-1])
    a, b, t = ordered[low], ordered[low + 1], position - low
    difference = b - a
    return float(b - difference * (1 - t) if t >= 0.5 else a + difference * t)


def column_statistic(table, enough, statistic):
    """`statistic(values, axis=0)` of each column of `table` where `enough`,
    NaN-aware (np.median and friends are much faster without NaN)."""
    out = np.full(table.shape[1], np.nan)
    if enough.any():
        used = table[:, enough]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns
            out[enough] = statistic(used, np.isfinite(used).all())
    return out


@dataclasses.dataclass(frozen=True)
class MedianRule(Rule):
    """The median stopping rule with its two settings (see the module's doc)."""
    startup: int
    warmup: int | float  # epochs, or a share of the trial's epochs (flags.epochs_or_share)
    name: typing.ClassVar[str] = "median"
    reads_stopped: typing.ClassVar[bool] = False

    def warmup_epochs(self, epochs):
        return flags.epochs_of(self.warmup, epochs)

    def acts_within(self, epochs):
        return self.warmup_epochs(epochs) < epochs - 1  # never after the last epoch

    def why_idle(self, epochs):
        return (f"its warm-up is {self.warmup_epochs(epochs)} epochs (--prune-warmup "
                f"{flags.share_text(self.warmup)}) and it never stops at the last.")

    def from_table(self, table, stopped):
        """For each epoch of `table` (a trial's length): the median of the
        completed trials at that epoch, NaN where the rule does not prune
        (warm-up, too few curves, the last epoch)."""
        table = table[~stopped]
        enough = np.isfinite(table).sum(axis=0) >= max(self.startup, 1)
        medians = column_statistic(table, enough, lambda used, whole: (
            np.median(used, axis=0) if whole else np.nanmedian(used, axis=0)))
        medians[:self.warmup_epochs(table.shape[1])] = np.nan
        medians[-1:] = np.nan  # stopping after the last epoch saves nothing
        return medians


@dataclasses.dataclass(frozen=True)
class AshaRule(Rule):
    """Asynchronous successive halving with Ray Tune's two settings."""
    grace: int | float  # epochs, or a share of the trial's epochs (flags.epochs_or_share)
    reduction: int
    name: typing.ClassVar[str] = "asha"

    def acts_within(self, epochs):
        return bool(self.rungs(epochs))

    def why_idle(self, epochs):
        return (f"its first rung is at epoch {flags.epochs_of(self.grace, epochs, 1)} "
                f"(--asha-grace {flags.share_text(self.grace)}), not before the last.")

    def rungs(self, epochs):
        """The rung epochs below the last: grace x reduction^k."""
        rungs, rung = [], flags.epochs_of(self.grace, epochs, minimum=1)
        while rung < epochs:
            rungs.append(rung)
            rung *= self.reduction
        return rungs

    def from_table(self, table, stopped):
        """At each rung: the (1 - 1/reduction) quantile of every earlier
        trial's accuracy at that epoch; NaN elsewhere and where no earlier
        trial reached the rung."""
        epochs = table.shape[1]
        cutoffs = np.full(epochs, np.nan)
        quantile = 1 - 1 / self.reduction
        for rung in self.rungs(epochs):
            values = table[:, rung - 1]
            values = values[np.isfinite(values)]
            if values.size:
                cutoffs[rung - 1] = linear_quantile(values, quantile)
        return cutoffs

    def below(self, curve, thresholds):
        """A trial's accuracy at the rung itself, not its best so far (Ray's)."""
        return compare(np.asarray(curve, dtype=float), thresholds)


RULES = ("asha", "median", "learned")  # --prune names a rule (learned: learned.py)


def rule_of(settings):
    """The rule that settings' --prune names (a flags.TrialSettings), or None."""
    if settings.prune == "median":
        return MedianRule(settings.prune_startup, settings.prune_warmup)
    if settings.prune == "asha":
        return AshaRule(settings.asha_grace, settings.asha_reduction)
    if settings.prune == "learned":
        from hks.stopping import learned  # it builds on this module's Rule
        return learned.LearnedRule.shipped()
    return None


# ------------------------------------------- the earlier trials' curves ----

def earlier_trials(results):
    """The trials a rule compares with: successful results, each with its
    validation fine accuracy curve and whether a rule stopped it."""
    return [Earlier(storage.val_fine_curve(r), bool(r.get("pruned"))) for r in results
            if r.get("status") == "ok"]


def completed_curves(results):
    """The curves of the results that ran every epoch: successful and not pruned."""
    return [t.curve for t in earlier_trials(results) if not t.stopped]


def trials_curves(trials):
    """earlier_trials of a hyperopt Trials' finished trials."""
    return earlier_trials([t["result"] for t in trials.trials
                           if isinstance(t.get("result"), dict)])


# ------------------------------------------------- what it did ----

def summary(results, epochs):
    """One line: how many of `results` were pruned and the epochs that saved
    (each pruned trial would have run `epochs`), or "" when none was."""
    pruned = [r for r in results if r.get("pruned")]
    if not pruned:
        return ""
    saved = sum(max(epochs - int(r.get("pruned_at_epoch") or epochs), 0) for r in pruned)
    total = epochs * len([r for r in results if r.get("status") == "ok"])
    share = f" ({saved / total:.0%} of {total})" if total else ""
    rules = sorted({r.get("pruned_by") or "median" for r in pruned})
    return (f"Pruned {len(pruned)} of {len(results)} trials, saving {saved} "
            f"epochs{share}, by {' and '.join(rules)}.")


def stalled(results, stop_after):
    """--stop-after-no-improvement N: the line that ends the search when the
    last N of `results` (in the order they finished) found no new best, else ""."""
    if stop_after is None or trials_without_improvement(results) < stop_after:
        return ""
    return (f"No new best fine accuracy in the last {stop_after} trials "
            f"(--stop-after-no-improvement {stop_after}): the search ends here. Run it "
            "again with a larger value, or without it, to go on.")


def trials_without_improvement(results):
    """How many of `results` (in the order they finished) came after the last
    new best fine accuracy: all of them when none succeeded. hyperopt's
    no_progress_loss, which --stop-after-no-improvement compares with."""
    best, since = None, 0
    for result in results:
        loss = result.get("loss") if result.get("status") == "ok" else None
        if storage.is_number(loss) and (best is None or loss < best):
            best, since = loss, 0
        else:
            since += 1
    return since
