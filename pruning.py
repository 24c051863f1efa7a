"""Stop hopeless trials early: the median stopping rule of Google Vizier
(Golovin et al., 2017), as Optuna's MedianPruner applies it.

After epoch e of a trial, the trial stops when its best validation fine
accuracy so far is below the median of the validation fine accuracy at epoch
e of the search's earlier trials that completed (were not pruned) and reached
epoch e. Nothing is pruned at or before epoch `warmup`, nor at an epoch that
fewer than `startup` completed trials reached (so nothing before `startup`
trials have completed), nor at the trial's last epoch (that saves nothing,
and a trial that ran every epoch counts as completed). NaN values are left
out on both sides.

One copy of the rule serves both its users: the trials' Keras callback
(training_callbacks.MedianStopping, fed with the earlier trials' curves by the search
or, on a MongoDB worker, by `MongoCurves`) and analyze_results.py
--replay-pruning (`replay`, on the curves stored in result files). Nothing
here imports Keras.

    rule = MedianRule(startup=4, warmup=25)
    medians = rule.thresholds(completed_curves(results), epochs=100)
    rule.below(curve_so_far, medians)[-1]    # True: stop the trial now
"""

import dataclasses
import math
import warnings

import numpy as np

import utils

REFRESH_EPOCHS = 3  # a MongoDB worker rereads the other trials' curves this often
REPLAY_ORDERS = 500  # analyze_results.py --replay-pruning


@dataclasses.dataclass(frozen=True)
class MedianRule:
    """The median stopping rule with its two settings (see the module's doc)."""
    startup: int
    warmup: int

    def describe(self):
        return {"name": "median", "startup": self.startup, "warmup": self.warmup}

    def thresholds(self, curves, epochs):
        """For epochs 1..`epochs` (a trial's length): the median of the
        completed `curves` at that epoch, NaN where the rule does not prune
        (warm-up, too few curves, the last epoch)."""
        table = np.full((len(curves), epochs), np.nan)
        for row, curve in zip(table, curves):
            values = np.asarray(curve[:epochs], dtype=float)
            row[:len(values)] = values
        counts = np.isfinite(table).sum(axis=0)
        medians = np.full(epochs, np.nan)
        enough = counts >= max(self.startup, 1)
        if enough.any():
            used = table[:, enough]
            if np.isfinite(used).all():  # the usual case, and np.median is much faster
                medians[enough] = np.median(used, axis=0)
            else:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns
                    medians[enough] = np.nanmedian(used, axis=0)
        medians[:self.warmup] = np.nan
        medians[-1:] = np.nan  # stopping after the last epoch saves nothing
        return medians

    def below(self, curve, thresholds):
        """Per epoch of `curve`: whether its best so far is below that epoch's
        threshold (False where the threshold or every value so far is NaN;
        a tie is not below)."""
        curve = np.asarray(curve, dtype=float)
        best_so_far = np.fmax.accumulate(curve) if len(curve) else curve
        limits = np.full(len(curve), np.nan)
        shown = min(len(curve), len(thresholds))
        limits[:shown] = thresholds[:shown]
        with np.errstate(invalid="ignore"):
            return best_so_far < limits

    def first_stop(self, curve, thresholds):
        """The epoch (1-based) at which `curve` would have been stopped, or None."""
        stops = np.flatnonzero(self.below(curve, thresholds))
        return int(stops[0]) + 1 if stops.size else None


def rule_of(settings):
    """The rule that settings' --prune names (a flags.TrialSettings), or None."""
    if settings.prune == "median":
        return MedianRule(settings.prune_startup, settings.prune_warmup)
    return None


# ------------------------------------------- the earlier trials' curves ----

def completed_curves(results):
    """The validation fine accuracy curves of the results that count for the
    rule: successful and not pruned."""
    return [utils.val_fine_curve(r) for r in results
            if r.get("status") == "ok" and not r.get("pruned")]


def trials_curves(trials):
    """completed_curves of a hyperopt Trials' finished trials."""
    return completed_curves([t["result"] for t in trials.trials
                             if isinstance(t.get("result"), dict)])


@dataclasses.dataclass(frozen=True)
class MongoCurves:
    """The completed curves of an experiment's finished trials in MongoDB,
    which a worker's trial reads again every REFRESH_EPOCHS epochs (other
    workers finish trials meanwhile). Picklable: the trial's own process
    connects by itself."""
    url: str  # mongo://[user:password@]host:port/db/jobs, as hyperopt takes it
    exp_key: str

    def __call__(self):
        """The curves, or None when MongoDB cannot be read: the trial trains on."""
        import pymongo.errors
        from hyperopt import JOB_STATE_DONE
        import mongo_compat
        try:
            jobs = mongo_compat.open_jobs(self.url)
        except mongo_compat.MongoUnavailable:
            return None
        try:
            docs = jobs.jobs.find({"exp_key": self.exp_key, "state": JOB_STATE_DONE,
                                   "result.status": "ok", "result.pruned": {"$ne": True}},
                                  projection=["result.status"] + [
                                      f"result.history.{key}" for key in utils.VAL_FINE_KEYS])
            return completed_curves([doc["result"] for doc in docs])
        except pymongo.errors.PyMongoError:
            return None
        finally:
            jobs.conn.close()


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
    return (f"Pruned {len(pruned)} of {len(results)} trials, saving {saved} "
            f"epochs{share}.")


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
        if utils.is_number(loss) and (best is None or loss < best):
            best, since = loss, 0
        else:
            since += 1
    return since


# ----------------------------------------------------------- replay ----

def replay(curves, rule, orders=REPLAY_ORDERS, seed=0, epochs=None):
    """Replay `rule` on complete learning curves (one per trial of a finished
    search) taken in `orders` random orders: for each, the epochs that would
    have been trained and the best accuracy the pruned search would have
    found. Returns the figures analyze_results.py --replay-pruning writes."""
    curves = [np.asarray(c, dtype=float) for c in curves]
    epochs = epochs or max(len(c) for c in curves)
    full_best = max(np.nanmax(c) for c in curves)
    rng = np.random.default_rng(seed)
    trained, bests, pruned = [], [], []
    for _ in range(orders):
        completed, total, best, stopped = [], 0, -math.inf, 0
        thresholds = rule.thresholds(completed, epochs)
        for index in rng.permutation(len(curves)):
            curve = curves[index][:epochs]
            stop = rule.first_stop(curve, thresholds)
            ran = curve if stop is None else curve[:stop]
            total += len(ran)
            best = max(best, np.nanmax(ran) if np.isfinite(ran).any() else -math.inf)
            if stop is None:
                completed.append(curve)
                thresholds = rule.thresholds(completed, epochs)
            else:
                stopped += 1
        trained.append(total)
        bests.append(best)
        pruned.append(stopped)
    full = sum(len(c[:epochs]) for c in curves)
    bests = np.asarray(bests)
    return {
        "rule": rule.describe(),
        "trials": len(curves),
        "orders": orders,
        "seed": seed,
        "epochs_full": int(full),
        "epochs_with_pruning_mean": float(np.mean(trained)),
        "epochs_saved_fraction": float(1 - np.mean(trained) / full),
        "pruned_trials_mean": float(np.mean(pruned)),
        "best_accuracy_full": float(full_best),
        "best_kept_fraction": float(np.mean(bests >= full_best)),
        "worst_best_accuracy": float(bests.min()),
    }
