"""Configuration precedence, atomic writes and the result files' contract."""

import json
import os
import pickle
import re
import shutil
import types
from pathlib import Path

import pytest

from hks.core import console, flags, storage
from hks.mongo import mongo_settings

ORIGINAL_RESULTS = Path(__file__).parent / "fixtures" / "original-results"


def parse(argv, environ):
    """The search's settings and its MongoDB driver's, from a command line and
    variables, as hyperopt_optimize.main reads them (one object, to look at)."""
    import hyperopt_optimize
    args = hyperopt_optimize.build_parser().parse_args(argv)
    search = flags.read_settings(flags.SearchSettings, args, environ)
    driver = flags.read_settings(mongo_settings.DriverSettings, args, environ)
    return types.SimpleNamespace(**vars(search), **vars(driver))


def test_flag_wins_over_variable_which_wins_over_default():
    assert parse([], {}).epochs == 100
    assert parse([], {"HKS_EPOCHS": "7"}).epochs == 7
    assert parse(["--epochs", "3"], {"HKS_EPOCHS": "7"}).epochs == 3
    assert parse([], {"HKS_MAX_EVALS": "5"}).max_evals == 5
    assert parse(["--tensorboard"], {}).tensorboard is True
    assert parse([], {"HKS_TENSORBOARD": "1"}).tensorboard is True
    assert parse(["--no-plots"], {}).plots is False


def test_precision_from_flag_or_variable():
    assert parse([], {}).precision == "auto"
    assert parse([], {"HKS_PRECISION": "Mixed_BFloat16"}).precision == "mixed_bfloat16"
    assert parse(["--precision", "float32"], {"HKS_PRECISION": "mixed_float16"}).precision == "float32"


def test_dataset_size_variable_needs_code_testing():
    assert parse([], {"DATASET_SIZE": "1000"}).dataset_size is None
    assert parse([], {"DATASET_SIZE": "1000", "CODE_TESTING": "1"}).dataset_size == 1000
    assert parse(["--dataset-size", "500"], {}).dataset_size == 500


@pytest.mark.parametrize("argv, environ, expected", [
    (["--epochs", "0"], {}, "--epochs: '0' must be at least 1"),
    (["--epochs", "ten"], {}, "--epochs: 'ten' is not a whole number"),
    ([], {"HKS_EPOCHS": "-1"}, "HKS_EPOCHS: '-1' must be at least 1"),
    ([], {"HKS_MAX_EVALS": "1.5"}, "HKS_MAX_EVALS: '1.5' is not a whole number"),
    (["--val-split", "1"], {}, "must be at least 0 and below 1"),
    (["--data-dir", "/no/such/folder"], {}, "folder '/no/such/folder' does not exist"),
    ([], {"HKS_TENSORBOARD": "maybe"}, "HKS_TENSORBOARD"),
    ([], {"DATASET_SIZE": "10", "CODE_TESTING": "maybe"}, "CODE_TESTING: 'maybe' is not one of"),
    (["--precision", "float16"], {}, "--precision: 'float16' is not one of auto, float32"),
])
def test_bad_values_are_refused(argv, environ, expected):
    with pytest.raises(flags.UsageError) as err:
        parse(argv, environ)
    assert expected in str(err.value)


@pytest.mark.parametrize("given, expected", [
    ("localhost:27017/hyperopt", "mongo://localhost:27017/hyperopt/jobs"),
    ("db.example.com", "mongo://db.example.com:27017/hyperopt/jobs"),
    ("mongodb://u:p%40ss@h:1234/exp?authSource=admin",
     "mongo://u:p%40ss@h:1234/exp/jobs?authSource=admin"),
    ("mongo://localhost:22334/foo/jobs", "mongo://localhost:22334/foo/jobs"),
    ("[::1]:27017/db", "mongo://[::1]:27017/db/jobs"),
    ("mongo_db-1.internal_net/db", "mongo://mongo_db-1.internal_net:27017/db/jobs"),
    ("127.0.0.1/db", "mongo://127.0.0.1:27017/db/jobs"),
])
def test_mongo_addresses_become_hyperopts_urls(given, expected):
    assert parse(["--mongo", given], {}).mongo == expected


@pytest.mark.parametrize("given, reason", [
    ("mongodb+srv://cluster.example.com/db", "mongodb+srv:// and ssh tunnels are not"),
    ("h:99999/db", "the port is not a number"),
    ("h:abc/db", "the port is not a number"),
    ("h/db?ssl=true", "unsupported option(s) ssl"),
    ("h1:1,h2:2/db", "one host only"),
    ("h/db/extra", "expected HOST:PORT/DB"),
    ("h/a.b", "not a valid MongoDB database name"),
    ("mongodb://:secret@h/db", "a password needs a user name"),
    ("not a url", "host 'not a url' is not a valid host name"),
    ("db..example.com/x", "host 'db..example.com' is not a valid host name"),
    ("db.example.com./x", "is not a valid host name"),
    ("mongodb://u:p@ex$ample:27017/db", "host 'ex$ample' is not a valid host name"),
    ("[::1::2]:27017/db", "[::1::2] is not a valid IPv6 address"),
    ("mongodb://u:secret@[::1::2]:1/db", "'mongodb://u:***@[::1::2]:1/db': [::1::2] is not a"),
])
def test_bad_mongo_addresses_say_what_is_wrong(given, reason):
    with pytest.raises(flags.UsageError, match="--mongo: .*" + re.escape(reason)):
        parse(["--mongo", given], {})


def test_mongo_address_from_the_originals_variables():
    assert parse([], {"MONGO_DB_HOST": "m"}).mongo == "mongo://m:27017/hyperopt/jobs"
    config = parse([], {"MONGO_DB_HOST": "m", "MONGO_DB_PORT": "27018", "MONGO_DB_NAME": "x",
                        "MONGO_DB_USER": "root", "MONGO_DB_PASSWORD": "p@ss/w:rd",
                        "EXPERIMENT_NAME": "exp2"})
    assert config.mongo == "mongo://root:p%40ss%2Fw%3Ard@m:27018/x/jobs?authSource=admin"
    assert config.exp_key == "exp2"
    assert mongo_settings.redact(config.mongo) == "mongo://root:***@m:27018/x/jobs?authSource=admin"
    assert parse(["--mongo", "a/b"], {"MONGO_DB_HOST": "m"}).mongo == "mongo://a:27017/b/jobs"
    assert parse([], {}).mongo is None


def test_atomic_write_replaces_whole_files(tmp_path):
    target = tmp_path / "results.pkl"
    storage.atomic_write(target, b"old")
    storage.atomic_write(target, b"new")
    assert target.read_bytes() == b"new"
    assert os.listdir(tmp_path) == ["results.pkl"]
    assert target.stat().st_mode & 0o777 == 0o644  # not mkstemp's private 0600


def test_atomic_write_interrupted_mid_write_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "results.pkl"
    storage.atomic_pickle({"trials": 3}, target)

    def crash(*args):
        raise KeyboardInterrupt
    monkeypatch.setattr(os, "fsync", crash)
    with pytest.raises(KeyboardInterrupt):
        storage.atomic_pickle({"trials": 4}, target)
    assert pickle.loads(target.read_bytes()) == {"trials": 3}
    assert os.listdir(tmp_path) == ["results.pkl"]  # no temporary file left behind


def result(accuracy, uid, status="ok"):
    return {"status": status, "loss": -accuracy, "fine_best_accuracy": accuracy,
            "model_name": storage.model_name_for(accuracy, uid),
            "space": {"accuracy_was": accuracy}}


def test_result_files_are_named_so_the_best_sorts_last(tmp_path):
    for accuracy, uid in [(0.5, "aaaaa"), (0.05, "bbbbb"), (0.675, "ccccc"), (0.1, "ddddd")]:
        storage.save_json_result(result(accuracy, uid), tmp_path)
    storage.save_json_result(dict(result(0.0, "eeeee", "fail"),
                                  model_name=storage.FAILED_PREFIX + "eeeee"), tmp_path)
    names = sorted(os.listdir(tmp_path))
    assert names[-1] == "model_0.675000_ccccc.txt.json"
    assert names[0].startswith(storage.FAILED_PREFIX)
    assert [n for n in names if n.startswith("model_")] == [
        "model_0.050000_bbbbb.txt.json", "model_0.100000_ddddd.txt.json",
        "model_0.500000_aaaaa.txt.json", "model_0.675000_ccccc.txt.json"]
    assert storage.load_best_hyperspace(tmp_path) == {"accuracy_was": 0.675}
    saved = json.loads((tmp_path / names[-1]).read_text())
    assert saved == result(0.675, "ccccc")


def test_best_hyperspace_of_the_original_search(tmp_path):
    shutil.copytree(ORIGINAL_RESULTS, tmp_path / "results")
    (tmp_path / "results" / "model_truncated.txt.json").write_text('{"loss": -0.9, "sta')
    best = storage.load_best_result(tmp_path / "results")
    assert best["model_name"] == "model_0.676100010872_6066e"
    space = storage.load_best_hyperspace(tmp_path / "results")
    assert space["pooling_type"] == "avg" and space["batch_size"] == 320.0


def test_no_results_means_no_best(tmp_path):
    assert storage.load_best_hyperspace(tmp_path) is None


def test_to_plain_turns_numpy_into_python():
    import numpy as np
    plain = storage.to_plain({"a": np.float32(0.5), "b": [np.int64(3)], "c": np.bool_(True),
                              "d": float("nan"), "e": (1, 2)})
    assert plain == {"a": 0.5, "b": [3], "c": True, "d": None, "e": [1, 2]}
    assert type(plain["a"]) is float and type(plain["b"][0]) is int


def unset(monkeypatch, *names):
    """Remove variables for one test (set first, so that pytest puts them back)."""
    for name in names:
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)


def test_startup_noise_filter_keeps_every_other_line(monkeypatch, capfd):
    unset(monkeypatch, "TF_CPP_MIN_LOG_LEVEL", console.QUIET_MARK)
    with console.startup_noise_filtered():
        os.write(2, b"I0000 cudart_stub.cc:31] Could not find cuda drivers on your machine\n"
                    b"E0000 cuda_platform.cc:52] failed call to cuInit: UNKNOWN ERROR (303)\n"
                    b"E0000 something else went wrong\n")
    assert capfd.readouterr().err == "E0000 something else went wrong\n"
    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "2"  # hides INFO and WARNING, not errors


def test_a_users_own_tensorflow_log_level_is_left_alone(monkeypatch, capfd):
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "0")
    unset(monkeypatch, console.QUIET_MARK)
    with console.startup_noise_filtered():
        os.write(2, b"I0000 cudart_stub.cc:31] Could not find cuda drivers\n")
    assert "cudart_stub" in capfd.readouterr().err
    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "0"
