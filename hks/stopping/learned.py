"""A stopping rule learned from other searches' learning curves (--prune
learned): stop a trial that has fallen further behind the leading completed
trial than, in those searches, a trial that ended as good as its leader ever
was at that share of training.

How far behind is measured in accuracy points of the best-so-far curves,
at shares of training (epoch / epochs), so one table serves any --epochs.
The table (learned_gaps.json beside this file) is fitted on public curve
files only (Baker et al. 2018, tests/fixtures/curves/), never on the
original search's 42: they are what the rule is judged on. `fit` recomputes
it from the files:

    python3 -m hks.stopping.learned tests/fixtures/curves/baker2018_metaqnn_*.csv

It does not hold where the learning rate drops late in training (the
ResNets of those files: a trial far behind at 60% of training catches up
after the drop): docs/pruning.md gives its figures there. Nothing here
imports Keras."""

import argparse
import dataclasses
import json
import math
import sys
import typing
from pathlib import Path

import numpy as np

from hks.core import storage
from hks.stopping import curve_files, pruning

TABLE_FILE = Path(__file__).with_name("learned_gaps.json")
SHARES = tuple(round(0.05 * k, 2) for k in range(1, 20))  # 5% .. 95% of training
AS_GOOD = 0.005  # "as good as its leader": ended within half a point of it
PEERS = float("inf")  # ... and at most this much better than it
QUANTILE = 99.0  # of the gaps such trials had: 1% of them would be stopped
PAIRS_PER_SET = 200_000  # leader/trial pairs sampled from each file when fitting
SEED = 0


@dataclasses.dataclass(frozen=True)
class LearnedRule(pruning.Rule):
    """The learned rule: `gaps` are the largest gaps allowed at each of
    `shares` of training (interpolated between them, none before the first:
    the rule waits until then). It acts once `startup` trials completed."""
    shares: tuple
    gaps: tuple
    startup: int = 1
    name: typing.ClassVar[str] = "learned"
    reads_stopped: typing.ClassVar[bool] = False

    @classmethod
    def of(cls, table, startup=1):
        """The rule of a fitted table (fit's JSON)."""
        return cls(tuple(table["shares"]), tuple(table["gaps"]), startup)

    @classmethod
    def shipped(cls, startup=1):
        return cls.of(shipped_table(), startup)

    def describe(self):
        return {"name": self.name, "startup": self.startup,
                "first_share": self.shares[0], "table": TABLE_FILE.name}

    def label(self):
        return f"learned (startup {self.startup}, gaps from {TABLE_FILE.name})"

    def allowed(self, epochs):
        """The gap allowed after each epoch 1..epochs (NaN before the first share)."""
        share = np.arange(1, epochs + 1) / epochs
        gaps = np.interp(share, self.shares, self.gaps)
        gaps[share < self.shares[0]] = np.nan
        return gaps

    def acts_within(self, epochs):
        return bool(np.isfinite(self.allowed(epochs)[:-1]).any())

    def why_idle(self, epochs):
        return f"it waits until {self.shares[0]:.0%} of training."

    def from_table(self, table, stopped):
        """The leading completed trial's best so far, less the gap allowed
        there; NaN where the rule does not stop (too few completed trials,
        before the first share, the last epoch)."""
        done = table[~stopped]
        epochs = table.shape[1]
        if len(done) < max(self.startup, 1):
            return np.full(epochs, np.nan)
        leader = done[int(np.argmax([storage.best_of(row) for row in done]))]
        thresholds = pruning.best_so_far(leader) - self.allowed(epochs)
        thresholds[-1] = np.nan
        return thresholds


# ------------------------------------------------------------ fitting ----

def share_columns(epochs):
    """The epoch (0-based column) that stands for each of SHARES."""
    return np.clip(np.ceil(np.array(SHARES) * epochs).astype(int) - 1, 0, epochs - 1)


def gaps_of(curves, rng, pairs=PAIRS_PER_SET, peers=PEERS):
    """For pairs of curves (a leader, and a trial that ended within AS_GOOD
    of it: as good as it, at most `peers` better), how far the trial's best
    so far was behind the leader's at each of SHARES: pairs x shares."""
    best_so_far = np.fmax.accumulate(np.asarray(curves, dtype=float), axis=1)
    at = best_so_far[:, share_columns(best_so_far.shape[1])]
    finals = best_so_far[:, -1]
    leaders = rng.integers(len(curves), size=pairs)
    trials = rng.integers(len(curves), size=pairs)
    difference = finals[trials] - finals[leaders]
    good = (difference >= -AS_GOOD) & (difference <= peers) & (leaders != trials)
    return at[leaders[good]] - at[trials[good]]


def fit(files, quantile=QUANTILE, seed=SEED, peers=None):
    """The table of gaps fitted on the curve files: at each share, the
    `quantile` of every file's gaps (the files weigh the same), never below
    zero. Returns the JSON-ready table."""
    rng = np.random.default_rng(seed)
    per_file, sources = [], []
    peers = PEERS if peers is None else peers
    for path in files:
        curves, _ = curve_files.read_curves(path)
        per_file.append(gaps_of(curves, rng, peers=peers))
        sources.append(Path(path).name)
    weights = np.concatenate([np.full(len(g), 1 / len(g)) for g in per_file])
    gaps = np.concatenate(per_file)
    table = [max(0.0, weighted_quantile(gaps[:, k], weights, quantile / 100))
             for k in range(len(SHARES))]
    table = np.maximum.accumulate(table[::-1])[::-1]  # never tighter earlier than later
    return {"shares": list(SHARES), "gaps": [round(float(g), 4) for g in table],
            "as_good": AS_GOOD, "peers": None if math.isinf(peers) else peers,
            "quantile": quantile, "seed": seed,
            "pairs_per_file": PAIRS_PER_SET, "fitted_on": sources}


def shipped_table():
    return json.loads(TABLE_FILE.read_text())


def refit(files, like):
    """The table fitted again on `files`, with the settings of table `like`
    (its quantile, seed and peers): the shipped table's check, and its
    refits without one of its files."""
    peers = math.inf if like["peers"] is None else like["peers"]
    return fit(files, quantile=like["quantile"], seed=like["seed"], peers=peers)


def weighted_quantile(values, weights, q):
    order = np.argsort(values)
    cumulative = np.cumsum(weights[order])
    return float(values[order][np.searchsorted(cumulative, q * cumulative[-1])])


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python3 -m hks.stopping.learned",
        description="Fit the learned stopping rule's table on learning-curve files and "
                    f"print it (--write: into {TABLE_FILE.name}).")
    parser.add_argument("files", nargs="+", help="curve files (acc_1 .. acc_T columns)")
    parser.add_argument("--write", action="store_true", help=f"write {TABLE_FILE}")
    args = parser.parse_args(argv)
    try:
        table = fit(args.files)
    except curve_files.CurveFileError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    text = json.dumps(table, indent=1) + "\n"
    if args.write:
        storage.atomic_write(TABLE_FILE, text)
    print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
