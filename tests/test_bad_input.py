"""Bad input, as a user meets it, for every script: a number that is not one,
negative or zero, a file where a folder is wanted (and the other way round),
an empty or truncated results.pkl, a result JSON that is not JSON. Each gives
one line on stderr, no traceback, exit code 2 for a bad flag and 1 for a
failure, and leaves every file that was there before as it was."""

import hashlib
import shutil
import subprocess
import sys

import pytest

from conftest import ROOT

ORIGINAL_BEST = ROOT / "tests" / "fixtures" / "original-results" / "model_0.676100010872_6066e.txt.json"

# (script, arguments, exit code, words the line must hold). In the arguments,
# DATA is a folder holding a tiny archive; the others are made in the test's folder.
CASES = [
    ("hyperopt_optimize.py", ["--epochs", "ten"], 2, "--epochs: 'ten' is not a whole number"),
    ("hyperopt_optimize.py", ["--epochs", "-3"], 2, "--epochs: '-3' must be at least 1"),
    ("hyperopt_optimize.py", ["--max-evals", "0"], 2, "--max-evals: '0' must be at least 1"),
    ("hyperopt_optimize.py", ["--val-split", "1.5"], 2, "--val-split: '1.5' must be at least 0"),
    ("hyperopt_optimize.py", ["--data-dir", "a_file"], 2, "--data-dir: folder 'a_file' does not"),
    ("hyperopt_optimize.py", ["--warm-start", "a_file"], 2, "--warm-start: folder 'a_file'"),
    ("hyperopt_optimize.py", ["--data-dir", "DATA", "--results-dir", "a_file"], 1,
     "a_file: a file is in the way where a folder is needed"),
    ("hyperopt_optimize.py", ["--data-dir", "DATA", "--results-dir", "a_file/results"], 1,
     "a file is in the way where a folder is needed"),
    ("hyperopt_optimize.py", ["--data-dir", "DATA", "--trials-file", "empty.pkl"], 1,
     "empty.pkl cannot be read (EOFError"),
    ("hyperopt_optimize.py", ["--data-dir", "DATA", "--trials-file", "truncated.pkl"], 1,
     "truncated.pkl cannot be read (UnpicklingError"),
    ("hyperopt_optimize.py", ["--data-dir", "DATA", "--trials-file", "a_folder"], 1,
     "--trials-file a_folder is a folder"),
    ("hyperopt_optimize.py", ["--data-dir", "a_folder", "--offline"], 1,
     "CIFAR-100 not found and downloading is off"),
    ("hyperopt_optimize.py", ["--mongo", "db host/x"], 2, "is not a valid host name"),
    ("hyperopt_optimize.py", ["--dataset", "cifar-10"], 1,
     "cifar-10: no such folder, and not one of cifar100, cifar10, synthetic"),
    ("hyperopt_optimize.py", ["--dataset", "a_folder"], 1, "a_folder holds no class folders"),
    ("hyperopt_optimize.py", ["--dataset", "cifar10", "--data-dir", "a_folder", "--offline"], 1,
     "CIFAR-10 not found and downloading is off: put cifar-10-python.tar.gz in a_folder/"),
    ("hyperopt_optimize.py", ["--image-size", "4"], 2, "--image-size: '4' must be at least 8"),
    ("hyperopt_optimize.py", ["--test-split", "1"], 2, "--test-split: '1' must be at least 0"),
    ("hyperopt_mongo_worker.py", ["--mongo", "h/db", "--heartbeat", "0"], 2,
     "--heartbeat: '0' must be a number above 0"),
    ("hyperopt_mongo_worker.py", ["--mongo", "h/db", "--max-jobs", "x"], 2,
     "--max-jobs: 'x' is not a whole number"),
    ("hyperopt_mongo_worker.py", ["--mongo", "h/db", "--data-dir", "a_file"], 2,
     "--data-dir: folder 'a_file' does not exist"),
    ("analyze_results.py", ["--top", "0"], 2, "--top: '0' must be at least 1"),
    ("analyze_results.py", ["--results-dir", "a_file"], 1, "results folder a_file does not"),
    ("analyze_results.py", ["--results-dir", "results", "--out-dir", "a_file"], 1,
     "cannot use --out-dir a_file: a_file: a file is in the way"),
    ("analyze_results.py", ["--replay-pruning", "--orders", "-1"], 2,
     "--orders: '-1' must be at least 1"),
    ("retrain_best_with_tensorboard.py", ["--epochs", "0"], 2, "--epochs: '0' must be at least 1"),
    ("retrain_best_with_tensorboard.py", ["--result", "not_json.txt.json"], 1,
     "not_json.txt.json is not valid JSON"),
    ("retrain_best_with_tensorboard.py", ["--results-dir", "a_folder"], 1,
     "no successful result in a_folder/"),
    ("conv_filters_visualization.py", ["--max-filters", "-2"], 2,
     "--max-filters: '-2' must be at least 1"),
    ("conv_filters_visualization.py", ["--weights", "a_file"], 1,
     "a_file: expected a <id>.weights.h5 file"),
    ("predict.py", ["--model", "missing.keras", "a_folder"], 2, "--model missing.keras: no such"),
    ("predict.py", ["--model", "a_file", "a_folder"], 2, "--model a_file: not a .keras model"),
    ("predict.py", ["--model", "lonely.keras", "picture.png"], 2,
     "no readable lonely.json beside it"),
    ("predict.py", ["--model", "fake.keras", "picture.png"], 2,
     "fake.keras cannot be loaded as a Keras model"),
    ("predict.py", ["--results-dir", "results", "a_folder"], 2,
     "no kept model in results/models/: run a search with --keep-models"),
    ("predict.py", ["--model", "fake.keras", "a_folder"], 2, "no image (.png, .jpg"),
    ("predict.py", ["--model", "fake.keras", "not_there.png"], 2, "not_there.png: no such file"),
    ("predict.py", ["--batch-size", "0", "a_folder"], 2, "--batch-size: '0' must be at least 1"),
    ("predict.py", ["--model", "bad_info.keras", "picture.png"], 2,
     "bad_info.json lacks the class names or the image size"),
    ("predict.py", [], 2, "give images or folders to predict, or --evaluate FOLDER"),
    ("benchmark.py", ["--steps", "zero"], 2, "--steps: 'zero' is not a whole number"),
    ("benchmark.py", ["--batch-sizes", "64,-1"], 2, "--batch-sizes: '-1' must be at least 1"),
    ("benchmark.py", ["--out", "a_file/bench.json", "--only", "tpe"], 1,
     "--out: a_file: a file is in the way"),
]


def snapshot(folder):
    """{path: sha256} of every file under `folder`."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def user_folder(tmp_path, cifar_dir):
    """A folder as a user's might be: results, a results.pkl, and the odd
    files the cases point at."""
    (tmp_path / "a_file").write_text("not a folder\n")
    (tmp_path / "a_folder").mkdir()
    (tmp_path / "empty.pkl").write_bytes(b"")
    (tmp_path / "truncated.pkl").write_bytes(b"\x80\x04\x95garbage")
    (tmp_path / "not_json.txt.json").write_text('{"space": {"lr')
    (tmp_path / "lonely.keras").write_bytes(b"PK")
    (tmp_path / "fake.keras").write_bytes(b"not a zip")
    (tmp_path / "bad_info.keras").write_bytes(b"PK")
    (tmp_path / "bad_info.json").write_text('{"class_names": "not a list"}')
    (tmp_path / "fake.json").write_text('{"image_size": 32, "class_names": ["a", "b"]}')
    from PIL import Image
    Image.new("RGB", (8, 8)).save(tmp_path / "picture.png")
    (tmp_path / "results").mkdir()
    shutil.copy(ORIGINAL_BEST, tmp_path / "results")
    return tmp_path


@pytest.mark.parametrize("script, args, code, expected", CASES,
                         ids=[f"{s.split('.')[0]}{' '.join(a)}" for s, a, _, _ in CASES])
def test_bad_input_gets_one_line_the_right_exit_code_and_changes_nothing(
        user_folder, cifar_dir, clean_env, script, args, code, expected):
    args = [str(cifar_dir) if a == "DATA" else a for a in args]
    before = snapshot(user_folder)
    env = {k: v for k, v in clean_env.items() if k != "TF_CPP_MIN_LOG_LEVEL"}  # as a user has it
    done = subprocess.run([sys.executable, str(ROOT / script), *args], cwd=user_folder,
                          env=env, capture_output=True, text=True, timeout=180)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == code, done.stderr[-2000:]
    assert len(lines) == 1 and expected in lines[0], done.stderr[-2000:]
    assert "Traceback" not in done.stderr + done.stdout
    after = snapshot(user_folder)
    assert {path: after.get(path) for path in before} == before, "a file was changed or deleted"


def test_the_cases_cover_every_script():
    scripts = {case[0] for case in CASES}
    assert scripts == {"hyperopt_optimize.py", "hyperopt_mongo_worker.py", "analyze_results.py",
                       "retrain_best_with_tensorboard.py", "conv_filters_visualization.py",
                       "predict.py", "benchmark.py"}
