"""Stopping rules that carry to other searches: epoch settings as shares of
--epochs, the replay of published learning-curve files, the time to a trial
as good as the best, the rule learned from other searches' curves, and the
figures of the study across sets that the README gives."""

import json
import subprocess
import sys

import numpy as np
import pytest

import analyze_results
from conftest import ROOT
from hks.core import flags
from hks.stopping import curve_files, learned, pruning, pruning_replay, study

CURVES = ROOT / "tests" / "fixtures" / "curves"
NAN = float("nan")


# ------------------------------------------- settings that follow --epochs ----

@pytest.mark.parametrize("epochs, warmup, rungs", [(10, 3, [2, 8]), (20, 6, [4, 16]),
                                                   (100, 30, [20, 80])])
def test_the_default_settings_are_shares_of_the_epochs(epochs, warmup, rungs):
    """The median waits 30% of the epochs by default, asha's first rung is
    at 20%: the same defaults act on a 10-, 20- and 100-epoch search."""
    median = pruning.rule_of(flags.TrialSettings(epochs=epochs, prune="median"))
    earlier = [[0.5] * epochs] * 8
    thresholds = median.thresholds(earlier, epochs)
    assert np.isnan(thresholds[:warmup]).all() and not np.isnan(thresholds[warmup:-1]).any()
    assert np.isnan(thresholds[-1])
    curve = [0.1] * epochs
    assert median.first_stop(curve, thresholds) == warmup + 1
    asha = pruning.rule_of(flags.TrialSettings(epochs=epochs))  # the default rule
    assert asha.rungs(epochs) == rungs
    cutoffs = asha.thresholds([[0.5] * epochs] * 4, epochs)
    assert list(np.flatnonzero(np.isfinite(cutoffs)) + 1) == rungs


def test_an_epoch_setting_is_a_whole_number_or_a_share():
    assert [flags.warmup_setting(t) for t in ("0", "12", "0.3", "30%")] == [0, 12, 0.3, 0.3]
    assert flags.epochs_of(0.3, 20) == 6 and flags.epochs_of(12, 20) == 12
    assert flags.epochs_of(0.2, 3, minimum=1) == 1  # a rung is never at epoch 0
    for bad in ("1.5", "-1", "abc", "100%"):
        with pytest.raises(ValueError):
            flags.warmup_setting(bad)
    with pytest.raises(ValueError):
        flags.grace_setting("0")


def test_a_rule_that_can_never_act_at_these_epochs_says_so():
    assert pruning.MedianRule(8, 30).never_acts(20).startswith(
        "note: --prune median never stops a trial at --epochs 20: its warm-up is 30 epochs")
    assert "first rung is at epoch 20" in pruning.AshaRule(20, 4).never_acts(20)
    assert pruning.MedianRule(8, 0.3).never_acts(20) == ""
    assert pruning.AshaRule(0.2, 4).never_acts(3) == ""  # a rung at epoch 1 of 3


def test_the_search_says_in_one_line_when_its_rule_never_acts(tmp_path, clean_env):
    from conftest import free_port
    done = subprocess.run(
        [sys.executable, str(ROOT / "hyperopt_optimize.py"), "--epochs", "20", "--prune",
         "median", "--prune-warmup", "30", "--mongo", f"127.0.0.1:{free_port()}/db"],
        cwd=tmp_path, env=clean_env, capture_output=True, text=True, timeout=120)
    notes = [line for line in done.stdout.splitlines() if line.startswith("note: --prune")]
    assert len(notes) == 1 and "never stops a trial at --epochs 20" in notes[0], done.stdout


# ------------------------------------------------ the curve file reader ----

def write_csv(path, text):
    path.write_text(text)
    return path


def test_a_curve_file_is_read_as_published(tmp_path):
    path = write_csv(tmp_path / "c.csv", "net,acc_0,acc_2,acc_1,lr\n"
                                         "a,0.1,0.5,0.4,0.01\n"
                                         "b,0.1,,0.3,0.01\n"
                                         "c,0.1,0.7,0.6,0.02\n")
    curves, left_out = curve_files.read_curves(path)
    assert curves.tolist() == [[0.4, 0.5], [0.6, 0.7]] and left_out == 1
    published, _ = curve_files.read_curves(CURVES / "baker2018_deep_resnets_cifar10.csv")
    assert published.shape == (486, 49)


@pytest.mark.parametrize("text, expected", [
    ("net,lr\na,1\n", "no columns acc_1, acc_2, ..."),
    ("acc_1,acc_3\n0.1,0.2\n", "column acc_2 is missing"),
    ("acc_1,acc_2\n0.1,high\n", "line 2, column acc_2: 'high' is not a number"),
    ("acc_1,acc_2\n0.1,0.2\n0.3\n", "line 3: 1 cells, the header has 2"),
    ("acc_1,acc_2\n0.1,\n", "no row without a missing value (1 left out)"),
])
def test_a_broken_curve_file_is_one_line_and_exit_2(tmp_path, capsys, text, expected):
    path = write_csv(tmp_path / "broken.csv", text)
    code = analyze_results.main(["--replay-pruning", "--curves", str(path), "--out-dir",
                                 str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and expected in err[0], err


def test_the_replay_reads_a_published_curve_file(tmp_path, capsys):
    assert analyze_results.main([
        "--replay-pruning", "--curves", str(CURVES / "baker2018_metaqnn_cifar10.csv"),
        "--orders", "5", "--searches", "5", "--out-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "1000 curves of 20 epochs from" in out and "each of 42 curves drawn at random" in out
    figures = json.loads((tmp_path / analyze_results.REPLAY_JSON).read_text())
    assert figures["trials"] == 42 and figures["within"] == 0.005
    assert figures["rule"] == {"name": "asha", "grace": 0.2, "reduction": 4}
    assert {"time_within_speedup", "searches_without_within_fraction"} <= set(figures)


# ------------------------------------------------ as good as the best ----

def test_the_time_within_a_tolerance_is_counted_by_hand():
    """Two curves: the best (0.90) and one within 0.01 of it (0.895).
    Without stopping and drawing with replacement, the first draw is within
    0.01 always: 3 epochs; the exact best takes 2 draws on average: 6 epochs.
    With a tolerance of 0.001 only the best itself counts."""
    curves = [[0.5, 0.8, 0.9], [0.5, 0.8, 0.895]]
    wide = pruning_replay.time_to_best(curves, pruning_replay.NoRule(), searches=4000,
                                       within=0.01)
    assert wide["time_within_epochs_mean"] == 3.0
    assert wide["time_to_best_epochs_mean"] == pytest.approx(6.0, abs=0.3)
    assert wide["searches_without_within_fraction"] == 0
    narrow = pruning_replay.time_to_best(curves, pruning_replay.NoRule(), searches=4000,
                                         within=0.001)
    assert narrow["time_within_epochs_mean"] == narrow["time_to_best_epochs_mean"]


def test_searches_of_a_sample_draw_their_own_best():
    """Each simulated search of 2 of these 3 curves looks for the best of its
    own two: without stopping it is found within 10 x 2 trials."""
    curves = [[0.1, 0.2], [0.3, 0.4], [0.5, 0.6]]
    times = pruning_replay.search_times([np.array(c) for c in curves], pruning_replay.NoRule(),
                                        300, 0, 2, within=0.0, sample=2)
    assert times.without_exact == 0 and set(times.exact) <= {2.0 * k for k in range(1, 21)}
    assert times.exact.mean() == pytest.approx(4.0, abs=0.4)


# ------------------------------------------------ the learned rule ----

def test_the_learned_rules_table_is_recomputed_from_the_fixtures():
    shipped = json.loads(learned.TABLE_FILE.read_text())
    again = learned.refit([CURVES / name for name in shipped["fitted_on"]], like=shipped)
    assert again == shipped
    assert not set(shipped["fitted_on"]) & {"original-results"}  # never the original's 42


def test_the_learned_rule_stops_a_trial_further_behind_the_leader_than_allowed():
    rule = learned.LearnedRule(shares=(0.5,), gaps=(0.1,), startup=1)
    leader = [0.2, 0.6, 0.8, 0.9]  # its best so far: 0.2, 0.6, 0.8, 0.9
    thresholds = rule.thresholds([leader, [0.1, 0.2, 0.3, 0.4]], 4)
    assert np.isnan(thresholds[0]) and np.isnan(thresholds[-1])  # before 50%; the last epoch
    assert thresholds[1:3].tolist() == pytest.approx([0.5, 0.7])
    assert rule.first_stop([0.1, 0.55, 0.9, 0.9], thresholds) is None  # 0.05 behind: goes on
    assert rule.first_stop([0.1, 0.45, 0.9, 0.9], thresholds) == 2
    assert np.isnan(rule.thresholds([], 4)).all()  # no completed trial yet


# ------------------------------------------------ the study and the README ----

def test_the_readme_gives_the_studys_figures_per_set():
    figures = json.loads((ROOT / "docs" / "pruning_study.json").read_text())
    readme = " ".join((ROOT / "README.md").read_text().split())
    default = figures["default"]
    assert default in figures["figures"]
    for label in (default, learned.LearnedRule.shipped().label()):
        for name in figures["sets"]:
            f = figures["figures"][label][name]
            cell = f"{f['time_to_best_speedup']:.2f}x"
            assert cell in readme, (label, name, cell)


def test_one_cell_of_the_study_is_recomputed_the_same():
    """The study is deterministic (seeded): the learned rule on the original
    curves, recomputed, gives the figures the study JSON holds."""
    figures = json.loads((ROOT / "docs" / "pruning_study.json").read_text())
    plan = pruning_replay.Plan(**figures["plan"])
    sets = study.load_sets()
    rule = learned.LearnedRule.shipped()
    again = study.judge(sets[study.ORIGINAL], rule, study.ORIGINAL, plan)
    stored = figures["figures"][rule.label()][study.ORIGINAL]
    assert again["rule"] == stored["rule"]
    numbers = {key: value for key, value in stored.items() if key != "rule"}
    assert {key: again[key] for key in numbers} == pytest.approx(numbers)
