"""benchmark.py runs and writes JSON a later commit can be compared with.
(The benchmark is not a timed test: no speed is asserted here.)"""

import json
import statistics
import subprocess
import sys

import pytest

from conftest import ROOT

# --quick (its 5 pairs per ratio), shrunk to a small model and few trials to
# keep the suite short.
QUICK_AND_SMALL = ["--quick", "--models", "small", "--steps", "1",
                   "--archive-images", "600", "--tpe-trials", "10,20", "--memory-trials", "2",
                   "--folder-images", "40"]


@pytest.mark.slow
def test_quick_benchmark_writes_well_formed_json(tmp_path, clean_env):
    out = tmp_path / "bench.json"
    run = subprocess.run([sys.executable, str(ROOT / "benchmark.py"), *QUICK_AND_SMALL,
                          "--out", str(out)], cwd=tmp_path, env=clean_env,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    report = json.loads(out.read_text())

    assert {"cpu", "cpu_cores", "backend", "keras", "device"} <= set(report["machine"])
    rows = report["throughput"]
    assert {(r["model"], r["variant"]) for r in rows} == {
        ("small", "project"), ("small", "reference"), ("small", "map_fn"), ("small", "one_head")}
    for row in rows:  # a variant runs in every pair it is part of
        assert row["runs"] >= 5 and row["batch_size"] == 64
        assert 0 < row["min"] <= row["images_per_second"] <= row["max"]
        assert row["first_step_seconds"] > 0
    assert report["small_vs_reference_ratio"] > 0
    assert report["vectorised_flip_vs_map_fn_ratio"] > 0
    ratios = [k for k in report if k.endswith("_ratio")]
    assert set(report["ratio_pairs"]) == set(ratios) and len(ratios) == 3
    for key in ratios:  # each ratio: the median of its own interleaved pairs
        pairs = report["ratio_pairs"][key]
        assert pairs["pairs"] == report["settings"]["repeats"] >= 5  # --quick's
        assert 0 < pairs["pair_ratio_min"] <= report[key] <= pairs["pair_ratio_max"]
        assert len(pairs["per_pair"]) == pairs["pairs"]
        assert report[key] == pytest.approx(statistics.median(pairs["per_pair"]), abs=1e-3)

    assert set(report["overhead_seconds"]) == {
        "in_process_from_archive", "in_process_from_disk_cache", "in_process_data_in_memory",
        "new_trial_process", "prestarted_trial_process"}
    assert all(v > 0 for v in report["overhead_seconds"].values())
    assert set(report["tpe_suggest_seconds"]) == {"10", "20"}

    memory = report["memory"]
    assert len(memory["search_process_mb_after_each_trial"]) == 2
    assert all(peak > 0 for peak in memory["trial_process_peak_mb"])
    assert report["small_b64_one_head_vs_two_heads_ratio"] > 0
    folder = report["folder"]
    assert folder["images"] == 40 and folder["cache_mb"] > 0
    assert set(folder["seconds"]) == {"decode_and_cache", "from_cache"}
    assert "small_vs_reference_ratio" in run.stdout  # the printed table
    assert "median of 5 paired runs" in run.stdout
    assert "A folder of 40 images" in run.stdout
    kept = report["models"]["small"]  # keeping a model, predict.py's speed
    assert kept["file_mb"] > 0 and 0 < kept["save_seconds"] <= max(kept["save_seconds_each"])
    assert len(kept["save_seconds_each"]) == 3 and kept["predict_images_per_second"] > 0
    assert "Keeping the small model" in run.stdout


def test_bad_flags_get_one_line(tmp_path, clean_env):
    run = subprocess.run([sys.executable, str(ROOT / "benchmark.py"), "--models", "huge"],
                         cwd=tmp_path, env=clean_env, capture_output=True, text=True)
    assert run.returncode == 2
    assert "choose among best,demo,small" in run.stderr
    assert "Traceback" not in run.stderr
