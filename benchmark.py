"""Measure what one trial of the search costs, and print it as a table.

In one run, on a synthetic data set in the real CIFAR-100 format
(synthetic_data.write_synthetic_archive, so it runs anywhere):

1. training throughput (images/s) of the seed's best and demo hyperspaces
   through this project's training path (neural_net.build_model + fit_model,
   what a trial runs), against the plain Keras reference of
   hks/bench/reference_model.py: the same architecture, float32 NumPy arrays and
   one-hot labels, fitted the simplest way; and with one head (CIFAR-10 or
   a folder of class folders) against two, for what the second head costs.
   A timed run is one epoch, from its first step to its end (loop_clock).
   Each ratio comes from its own interleaved pairs of runs (project then
   reference, reference then project, ...): the median of the pairs'
   ratios, so a machine whose speed jumps between levels still compares
   like with like;
2. the original design's augmentation (a per-image map_fn flip) against
   Keras' vectorised RandomFlip, from pairs too;
3. trial overhead: seconds from the objective being called to the end of the
   first training step, with the data already in memory, from the decoded
   copy on disk, from the tar.gz archive, and in a trial process;
4. how long TPE takes to suggest a trial with 10, 100 and 1000 finished ones;
5. memory over consecutive small trials: the search process must stay flat;
6. a folder of photo-sized image files (--dataset DIR): the time to decode
   and cache it, and to load it again from the cache (hks/bench/bench_files.py);
7. keeping a trial's model (--keep-models): the seconds a save adds to a
   trial and the .keras file's size, and predict.py's images per second;
   with --mongo, the seconds to store it in GridFS (a worker) and to copy it
   from there into a folder (the driver) (hks/bench/bench_files.py).

    python3 benchmark.py --quick              # a few minutes on a 2-core CPU
    python3 benchmark.py --out bench.json     # larger; JSON to compare commits
    KERAS_BACKEND=jax python3 benchmark.py --steps 50 --batch-sizes 320,1024 \\
        --precisions float32,mixed_bfloat16   # on a GPU

Every ratio is stored under a key ending in `_ratio`, above 1 when the first
named is faster (e.g. `best_vs_reference_ratio`): the median of its pairs.
Beside them, `ratio_pairs` holds per ratio key {"pairs": N,
"pair_ratio_min": x, "pair_ratio_max": y, "per_pair": [each pair's ratio]}.
"""

import argparse
import dataclasses
import datetime
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import hyperopt_optimize  # the spaces
from hks.bench import bench_files, reference_model
from hks.core import flags, storage
from hks.data import cifar_archives, dataset, synthetic_data
from hks.mongo import mongo_settings
from hks.trials import trial_process

# Keras (TensorFlow or JAX: seconds) is imported where it is used, after the
# flags are checked: a bad flag is refused at once. main() imports neural_net
# first, which quiets TensorFlow's start-up.

SECTIONS = ("throughput", "overhead", "tpe", "memory", "folder", "models")
MODELS = ("best", "demo", "small")  # small: to check the benchmark itself in seconds
# --quick: a few minutes on a 2-core CPU; the default: steadier numbers.
PRESETS = {
    "quick": {"models": ["best"], "steps": 2, "repeats": 5, "batch_sizes": [64],
              "archive_images": 5000, "tpe_trials": [10, 100, 1000], "memory_trials": 10,
              "folder_images": 1000},
    "default": {"models": ["best", "demo"], "steps": 2, "repeats": 5, "batch_sizes": None,
                "archive_images": 50000, "tpe_trials": [10, 100, 1000], "memory_trials": 10,
                "folder_images": 3000},
}
TEST_FRACTION = 0.2  # the archive holds this many test images per training image
# A small model for the overhead and memory sections: there the cost around
# training is measured, not the training.
SMALL_SPACE = {
    "lr_rate_mult": 1.0, "l2_weight_reg_mult": 1.0, "batch_size": 100.0,
    "optimizer": "Adam", "coarse_labels_weight": 0.3, "conv_dropout_drop_proba": 0.1,
    "fc_dropout_drop_proba": 0.2, "use_BN": False, "first_conv": None, "residual": None,
    "conv_hiddn_units_mult": 0.55, "nb_conv_pool_layers": 2, "conv_pool_res_start_idx": 0.0,
    "pooling_type": "max", "conv_kernel_size": 3.0, "res_conv_kernel_size": 2.0,
    "fc_units_1_mult": 0.55, "one_more_fc": None, "activation": "relu",
}
SMALL_TRIAL_IMAGES = 500  # images a small trial trains on (DATASET_SIZE)
HOURS = 3600.0
FULL_TRAINING_IMAGES = 50000  # one epoch of the real CIFAR-100 training split


def parse_args(argv=None):
    positive = flags.argparse_type(flags.positive_int)
    numbers = flags.argparse_type(positive_ints)
    parser = flags.OneLineErrorParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Sizes left out come from --quick or the default preset.")
    parser.add_argument("--quick", action="store_true",
                        help="small sizes: finishes within 5 minutes on a 2-core CPU")
    parser.add_argument("--out", metavar="FILE", help="also write the results as JSON")
    parser.add_argument("--only", type=names_of(SECTIONS), default=list(SECTIONS),
                        help=f"comma-separated sections to run, of {','.join(SECTIONS)}")
    parser.add_argument("--models", type=names_of(MODELS),
                        help="comma-separated hyperspaces to time: best,demo (the seed's; "
                             "--quick: best), small (a small model, to check the benchmark runs)")
    parser.add_argument("--steps", type=positive,
                        help="training steps (batches) per timed run")
    parser.add_argument("--repeats", type=positive,
                        help="interleaved pairs of timed runs per ratio (--quick: 5)")
    parser.add_argument("--batch-sizes", type=numbers, metavar="N,N",
                        help="batch sizes to time (default: each hyperspace's own, "
                             "320 for best, 300 for demo; --quick: 64)")
    parser.add_argument("--precisions", default="auto",
                        type=names_of(flags.PRECISIONS),
                        help="the project's precisions to time; the first is compared "
                             "with the reference, the others with float32 (default: auto, "
                             "mixed_bfloat16 on a recent GPU, else float32)")
    parser.add_argument("--archive-images", type=positive,
                        help="training images in the synthetic archive that the overhead "
                             "section loads (50000 like the real one; --quick: 5000)")
    parser.add_argument("--tpe-trials", type=numbers, metavar="N,N",
                        help="finished trials in the store when TPE is timed (10,100,1000)")
    parser.add_argument("--memory-trials", type=positive,
                        help="consecutive small trials watched for memory growth (10)")
    parser.add_argument("--mongo", metavar="ADDRESS",
                        type=flags.argparse_type(mongo_settings.mongo_url),
                        help="models section: also time storing the model in this "
                             "MongoDB's GridFS and copying it back (HOST:PORT/DB; an "
                             "experiment of its own, removed afterwards)")
    parser.add_argument("--folder-images", type=positive,
                        help="image files in the folder decoded by the folder section "
                             "(3000; --quick: 1000)")
    args = parser.parse_args(argv)
    preset = PRESETS["quick" if args.quick else "default"]
    for name, value in preset.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    return args


def names_of(allowed):
    """An argparse type: comma-separated names, each one of `allowed`."""
    def names(text):
        chosen = [n.strip() for n in text.split(",") if n.strip()]
        if not chosen or any(n not in allowed for n in chosen):
            raise ValueError(f"{text!r}: choose among {','.join(allowed)}")
        return chosen
    return flags.argparse_type(names)


def positive_ints(text):
    """Comma-separated whole numbers above 0 (ValueError otherwise)."""
    return [flags.positive_int(n) for n in text.split(",") if n.strip()]


# ------------------------------------------------------------- throughput ----

@dataclasses.dataclass
class Variant:
    """One model timed in the throughput section."""
    model: str       # best, demo
    kind: str        # project, one_head, reference, map_fn
    precision: str   # the dtype policy it computes in
    batch_size: int
    fit: object = None
    first_step_seconds: float = 0.0
    seconds: list = dataclasses.field(default_factory=list)

    @property
    def label(self):
        return f"{self.model} {self.kind} {self.precision} b{self.batch_size}"

    def images_per_second(self, images):
        return [images / s for s in self.seconds]


def spaces():
    return {"best": hyperopt_optimize.SPACE_BEST_ORIGINAL, "demo": hyperopt_optimize.SPACE_DEMO,
            "small": SMALL_SPACE}


def throughput_variants(args):
    """What to time: per hyperspace and batch size, the project at each
    precision and the reference; the map_fn flip for the first model."""
    from hks.training import device
    precisions = [device.resolve_precision(p) for p in args.precisions]
    variants = []
    for model in args.models:
        for batch_size in args.batch_sizes or [int(spaces()[model]["batch_size"])]:
            variants += [Variant(model, "project", p, batch_size) for p in precisions]
            if "float32" not in precisions:
                variants.append(Variant(model, "project", "float32", batch_size))
            variants.append(Variant(model, "reference", "float32", batch_size))
            variants.append(Variant(model, "one_head", "float32", batch_size))
    first = variants[0]
    variants.append(Variant(first.model, "map_fn", "float32", first.batch_size))
    return variants


def prepare(variant, data, steps):
    """Build the variant's model and its one-epoch fit; the first call
    (tracing and compiling) is timed apart and left out of the throughput."""
    import keras
    import neural_net
    hs = dict(spaces()[variant.model], batch_size=variant.batch_size)
    n = variant.batch_size * steps
    x, fine, coarse = (a[:n] for a in data)
    if variant.kind in ("project", "one_head"):
        one = variant.kind == "one_head"  # 100 classes, no coarse head
        model = neural_net.build_model(hs, precision=variant.precision,
                                       nb_groups=None if one else dataset.NB_CLASSES_COARSE)
        variant.fit = lambda k=n, callbacks=(): neural_net.fit_model(
            model, (x[:k], fine[:k], None if one else coarse[:k]), None, variant.batch_size,
            epochs=1, callbacks=callbacks)
    else:
        model = reference_model.reference_model(hs, flip="layer" if variant.kind == "reference" else "map_fn")
        project_params = neural_net.build_model(hs).count_params()
        if model.count_params() != project_params:
            raise SystemExit(f"benchmark error: the reference {variant.model} model has "
                             f"{model.count_params()} parameters, the project's {project_params}:"
                             " hks/bench/reference_model.py no longer matches"
                             " neural_net.build_model()")
        x_float = x.astype("float32") / 255.0
        y = [keras.utils.to_categorical(fine, 100), keras.utils.to_categorical(coarse, 20)]
        variant.fit = lambda k=n, callbacks=(): model.fit(
            x_float[:k], [y[0][:k], y[1][:k]], batch_size=variant.batch_size, epochs=1,
            shuffle=True, verbose=0, callbacks=list(callbacks))
    started = time.perf_counter()
    variant.fit(variant.batch_size)  # one step: traces and compiles
    variant.first_step_seconds = time.perf_counter() - started


def loop_clock():
    """A callback noting when the epoch's first step begins (`.started`) and
    when the epoch ends (`.stopped`: its logs are numbers by then, so every
    batch has finished, on any backend). Left out: fit's set-up and
    tear-down, paid once in a 100-epoch trial. Under TensorFlow fit often
    returns only at the next of the moments 1.27, 2.55, 5.11, 10.23 s ...
    after its loop began, which made runs jump between two speeds."""
    import keras

    class LoopClock(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            if batch == 0:
                self.started = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.stopped = time.perf_counter()
    return LoopClock()


def run_throughput(args, data):
    """Every ratio from its own interleaved pairs: the two variants run back
    to back (which goes first alternates), `args.repeats` times; the ratio
    of each pair, and their median. A machine whose speed jumps between
    levels then still compares like with like."""
    variants = throughput_variants(args)
    for variant in variants:
        print(f"  compiling {variant.label} ...", flush=True)
        prepare(variant, data, args.steps)
    pairs = {}
    for key, faster, slower in comparisons(variants):
        ratios, started = [], time.perf_counter()
        for rep in range(args.repeats):
            first, second = (faster, slower) if rep % 2 == 0 else (slower, faster)
            timed_run(first)
            timed_run(second)
            ratios.append(slower.seconds[-1] / faster.seconds[-1])
        pairs[key] = ratios
        print(f"  {key}: {len(ratios)} pairs in {time.perf_counter() - started:.0f} s, "
              f"{' '.join(f'{r:.2f}' for r in ratios)}", flush=True)
    return throughput_report(variants, args.steps, pairs)


def timed_run(variant):
    clock = loop_clock()
    variant.fit(callbacks=[clock])
    variant.seconds.append(clock.stopped - clock.started)


def comparisons(variants):
    """(ratio name, faster, slower): the project against the reference (its
    first precision), other precisions against float32, one head against
    two, the vectorised flip against the map_fn flip."""
    def find(model, kind, batch_size, precision=None):
        return next((v for v in variants if (v.model, v.kind, v.batch_size) ==
                     (model, kind, batch_size) and precision in (None, v.precision)), None)

    found = []
    for v in variants:
        if v.kind != "project":
            continue
        if v is find(v.model, "project", v.batch_size):  # the first precision asked for
            key = f"{v.model}_vs_reference_ratio"
            if any(key == k for k, _, _ in found):  # further batch sizes get their own key
                key = f"{v.model}_b{v.batch_size}_vs_reference_ratio"
            found.append((key, v, find(v.model, "reference", v.batch_size)))
        fp32 = find(v.model, "project", v.batch_size, "float32")
        if v.precision != "float32" and fp32:
            found.append((f"{v.model}_b{v.batch_size}_{short(v.precision)}_vs_fp32_ratio", v, fp32))
        one = find(v.model, "one_head", v.batch_size)
        if v.precision == "float32" and one:
            found.append((f"{v.model}_b{v.batch_size}_one_head_vs_two_heads_ratio", one, v))
    map_fn = next(v for v in variants if v.kind == "map_fn")
    found.append(("vectorised_flip_vs_map_fn_ratio",
                  find(map_fn.model, "reference", map_fn.batch_size), map_fn))
    return found


def throughput_report(variants, steps, pairs):
    """Rows of images/s per variant (over every run it took part in), each
    ratio (the median of its pairs) and `ratio_pairs`: per ratio the count,
    min and max of its pairs' ratios, and each pair's (in the order run)."""
    rows = []
    for v in variants:
        ips = v.images_per_second(v.batch_size * steps)
        rows.append({"model": v.model, "variant": v.kind, "precision": v.precision,
                     "batch_size": v.batch_size, "images_per_second": statistics.median(ips),
                     "min": min(ips), "max": max(ips), "runs": len(ips),
                     "per_run": [round(v, 2) for v in ips],
                     "first_step_seconds": v.first_step_seconds})
    ratios = {key: statistics.median(values) for key, values in pairs.items()}
    ratios["ratio_pairs"] = {key: {"pairs": len(values), "pair_ratio_min": min(values),
                                   "pair_ratio_max": max(values),
                                   "per_pair": [round(v, 3) for v in values]}
                             for key, values in pairs.items()}
    return rows, ratios


def short(precision):
    return {"mixed_bfloat16": "bf16", "mixed_float16": "fp16", "float32": "fp32"}[precision]


# --------------------------------------------------------------- overhead ----

def small_trial_config(data_dir, work, **changes):
    return flags.TrialSettings(epochs=1, dataset_size=SMALL_TRIAL_IMAGES, data_dir=str(data_dir),
                               offline=True, results_dir=str(work / "results"),
                               keras_home=str(work / "keras_home"), **changes)


def run_overhead(data_dir, work):
    """Seconds from the objective being called to the end of the first
    training step of a trial trained in this process (--in-process), with the
    data set read from the archive, from its decoded copy, and from memory."""
    archive = data_dir / cifar_archives.CIFAR100_ARCHIVE
    config = small_trial_config(data_dir, work, in_process=True)

    def first_step():
        result = trial_process.train_here(SMALL_SPACE, config, called_at=time.time())
        return result["seconds_to_first_step"]

    seconds = {}
    cifar_archives.decoded_cache_path(archive).unlink(missing_ok=True)
    dataset.unload_cifar100()
    seconds["in_process_from_archive"] = first_step()
    dataset.unload_cifar100()
    seconds["in_process_from_disk_cache"] = first_step()
    seconds["in_process_data_in_memory"] = first_step()
    return seconds


# -------------------------------------------------------------------- TPE ----

def run_tpe(counts, repeats):
    """Median seconds of one tpe.suggest call with N finished trials stored."""
    from hyperopt import JOB_STATE_DONE, STATUS_OK, Domain, Trials, rand, tpe
    domain = Domain(lambda hype_space: 0.0, hyperopt_optimize.space)
    rng = np.random.default_rng(0)
    seconds = {}
    for count in counts:
        trials = Trials()
        docs = rand.suggest(list(range(count)), domain, trials, seed=0)
        for doc in docs:
            doc["state"] = JOB_STATE_DONE
            doc["result"] = {"status": STATUS_OK, "loss": -float(rng.uniform(0.05, 0.65))}
        trials.insert_trial_docs(docs)
        trials.refresh()
        times = []
        for rep in range(repeats):
            started = time.perf_counter()
            tpe.suggest([count + rep], domain, trials, seed=rep)
            times.append(time.perf_counter() - started)
        seconds[str(count)] = statistics.median(times)
    return seconds


# ----------------------------------------------------------------- memory ----

def run_trial_processes(data_dir, work, n_trials):
    """Consecutive small trials as the search runs them, each in a process of
    its own: the first in a process started when the objective is called,
    the others in the one started during the trial before (waited for, as
    after a trial of minutes). Returns (first-step seconds, memory): this
    process's memory after each trial, and each trial process's peak."""
    import neural_net
    config = small_trial_config(data_dir, work)
    trial_process.stop_spare()
    after, trial_peaks, first_steps = [], [], []
    for i in range(n_trials):
        if i:
            trial_process.wait_for_spare()
        result = trial_process.train_in_child(SMALL_SPACE, config, called_at=time.time())
        after.append(neural_net.memory_mb())
        trial_peaks.append(result.get("peak_memory_mb"))
        first_steps.append(result.get("seconds_to_first_step"))
        print(f"  trial {i + 1}/{n_trials}: first step after {first_steps[-1]} s; search process "
              f"{after[-1]:.0f} MiB, trial process peak {trial_peaks[-1]} MiB", flush=True)
    trial_process.stop_spare()
    overhead = {"new_trial_process": first_steps[0],
                "prestarted_trial_process": statistics.median(first_steps[1:] or first_steps)}
    settled = after[1:] or after  # the first trial loads libraries for good
    memory = {"search_process_mb_after_each_trial": after,
              "search_process_peak_mb": neural_net.peak_memory_mb(),
              "search_process_growth_mb": settled[-1] - settled[0],
              "search_process_growth_mb_per_trial":
                  float(np.polyfit(range(len(settled)), settled, 1)[0]) if len(settled) > 1 else 0.0,
              "trial_process_peak_mb": trial_peaks}
    return overhead, memory


# ----------------------------------------------------------------- folder ----

# ------------------------------------------------------------------ report ----

def machine():
    import keras
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"cpu": cpu, "cpu_cores": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version(), "keras": keras.__version__,
            "backend": keras.backend.backend()}
    if info["backend"] == "jax":
        import jax
        info["jax"] = jax.__version__
        info["device"] = str(jax.devices()[0].device_kind)
    else:
        import tensorflow as tf
        info["tensorflow"] = tf.__version__
        gpus = tf.config.list_physical_devices("GPU")
        info["device"] = (tf.config.experimental.get_device_details(gpus[0]).get("device_name", "GPU")
                          if gpus else "CPU")
    return info


def print_report(report):
    import pandas as pd
    m = report["machine"]
    print(f"\nBenchmark of {report['date']} on {m['cpu']} ({m['cpu_cores']} cores), "
          f"device {m['device']}, Keras {m['keras']} on {m['backend']}")
    if "throughput" in report:
        table = pd.DataFrame(report["throughput"]).drop(columns="per_run")
        print("\nTraining throughput, images/s (median, min, max over runs):")
        print(table.to_string(index=False, float_format=lambda v: f"{v:.1f}"))
    ratios = {k: v for k, v in report.items() if k.endswith("_ratio")}
    if ratios:
        print("\nRatios (above 1: the first named is faster), each the median of N paired runs:")
    for key, value in ratios.items():
        pair = report["ratio_pairs"][key]
        print(f"  {key}: {value:.3f}, median of {pair['pairs']} paired runs "
              f"(pairs {pair['pair_ratio_min']:.3f} to {pair['pair_ratio_max']:.3f})")
    if "best_100_epoch_trial_hours" in report:
        print(f"  one 100-epoch trial of the best model (50000 images, training only): "
              f"{report['best_100_epoch_trial_hours']:.2f} h")
    if "overhead_seconds" in report:
        print("\nTrial overhead, seconds from the objective's call to the end of the first step:")
        for key, value in report["overhead_seconds"].items():
            print(f"  {key}: {value:.2f}")
    if "tpe_suggest_seconds" in report:
        print("\nTPE, seconds to suggest one trial with N finished trials:")
        for key, value in report["tpe_suggest_seconds"].items():
            print(f"  {key}: {value:.3f}")
    if "memory" in report:
        mem = report["memory"]
        print(f"\nMemory over {len(mem['search_process_mb_after_each_trial'])} small trials: "
              f"search process peak {mem['search_process_peak_mb']:.0f} MiB, growth after "
              f"the first trial {mem['search_process_growth_mb']:+.1f} MiB "
              f"({mem['search_process_growth_mb_per_trial']:+.2f} MiB/trial); trial processes "
              f"peaked at {max(p or 0 for p in mem['trial_process_peak_mb']):.0f} MiB")
    for name, m in report.get("models", {}).items():
        print(f"\nKeeping the {name} model ({m['params']:,} parameters): {m['save_seconds']:.2f} s "
              f"a save, {m['file_mb']:.1f} MB on disk; predict.py "
              f"{m['predict_images_per_second']:.0f} images/s")
        if "gridfs" in m:
            g = m["gridfs"]
            print(f"  through MongoDB: stored in GridFS in {g['store_seconds']:.2f} s, copied to "
                  f"a folder in {g['copy_seconds']:.2f} s; GridFS holds {g['stored_mb']:.1f} MB")
    if "folder" in report:
        f = report["folder"]
        print(f"\nA folder of {f['images']} images ({f['sides_px'][0]}-{f['sides_px'][1]} px a "
              f"side, {f['files_mb']:.0f} MB): decoded and cached at 32 px in "
              f"{f['seconds']['decode_and_cache']:.1f} s ({f['decoded_images_per_second']:.0f} "
              f"images/s), loaded from the cache ({f['cache_mb']:.1f} MB) in "
              f"{f['seconds']['from_cache']:.2f} s")


def main(argv=None):
    args = parse_args(argv)
    if args.out:  # found out now, not after the whole run
        try:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            if Path(args.out).is_dir():
                raise IsADirectoryError(21, "Is a directory", args.out)
        except OSError as err:
            print(f"error: --out: {storage.os_error_text(err)}", file=sys.stderr)
            return 1
    import neural_net  # Keras: see the imports above
    started = time.perf_counter()
    report = {"date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
              "machine": machine(), "settings": {k: v for k, v in vars(args).items() if k != "out"}}
    with tempfile.TemporaryDirectory(prefix="hks-bench-") as tmp:
        work = Path(tmp)
        n_test = max(1, int(args.archive_images * TEST_FRACTION))
        print(f"Writing a synthetic archive of {args.archive_images} + {n_test} images ...",
              flush=True)
        data_dir = work / "ml_req"
        data_dir.mkdir()
        archive = data_dir / "cifar-100-python.tar.gz"
        synthetic_data.write_synthetic_archive(archive, args.archive_images, n_test)
        if "throughput" in args.only:
            print("Throughput:", flush=True)
            data = throughput_data(args, data_dir, work)
            rows, ratios = run_throughput(args, data)
            report["throughput"] = rows
            report.update(ratios)
            best = next((r for r in rows if r["model"] == "best" and r["variant"] == "project"), None)
            if best:
                report["best_100_epoch_trial_hours"] = (
                    100 * FULL_TRAINING_IMAGES / best["images_per_second"] / HOURS)
        if "overhead" in args.only:
            print("Trial overhead:", flush=True)
            report["overhead_seconds"] = run_overhead(data_dir, work)
        if "tpe" in args.only:
            print("TPE suggestion latency:", flush=True)
            report["tpe_suggest_seconds"] = run_tpe(args.tpe_trials, args.repeats)
        if "memory" in args.only or "overhead" in args.only:
            print("Trials in their own processes (memory, overhead):", flush=True)
            n_trials = args.memory_trials if "memory" in args.only else 2
            overhead, memory = run_trial_processes(data_dir, work, n_trials)
            if "overhead" in args.only:
                report["overhead_seconds"].update(overhead)
            if "memory" in args.only:
                report["memory"] = memory
        if "folder" in args.only:
            print("A folder of images:", flush=True)
            report["folder"] = bench_files.run_folder(args.folder_images, work)
        if "models" in args.only:
            print("Keeping a model, predict.py:", flush=True)
            report["models"] = {
                name: bench_files.run_model(neural_net.build_model(spaces()[name]), work / name,
                                            args.mongo)
                for name in args.models}
    report["benchmark_seconds"] = time.perf_counter() - started
    print_report(report)
    print(f"\nBenchmark took {report['benchmark_seconds']:.0f} s.")
    if args.out:
        storage.atomic_write(args.out, (json.dumps(report, indent=2) + "\n").encode())
        print(f"Wrote {args.out}")
    return 0


def throughput_data(args, data_dir, work):
    """The synthetic archive's training images and labels, repeated if the
    largest timed run needs more."""
    sizes = args.batch_sizes or [int(spaces()[m]["batch_size"]) for m in args.models]
    needed = max(sizes) * args.steps
    (x, fine, coarse), _ = dataset.load_cifar100(data_dir, small_trial_config(data_dir, work))
    take = np.arange(needed) % len(x)
    return x[take], fine[take], coarse[take]


if __name__ == "__main__":
    sys.exit(main())
