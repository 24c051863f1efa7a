"""Shared fixtures: a tiny CIFAR-100 archive in the real format, search
settings that point at it (never download), a small hyperspace that trains in
seconds, and MongoDB (the test server of tests/support/, or a real one).
The tests' helpers live in tests/support/, which is put on sys.path here."""

import os
import signal
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SUPPORT = ROOT / "tests" / "support"
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(SUPPORT))

from hks.core import flags  # noqa: E402
from hks.data import synthetic_data  # noqa: E402

N_TRAIN, N_TEST = 400, 100

# A concrete point of the space, small enough to train in a second or two.
TINY_HYPE_SPACE = {
    "lr_rate_mult": 1.0, "l2_weight_reg_mult": 1.0, "batch_size": 50.0,
    "optimizer": "Adam", "coarse_labels_weight": 0.3,
    "conv_dropout_drop_proba": 0.1, "fc_dropout_drop_proba": 0.2, "use_BN": False,
    "first_conv": None, "residual": None, "conv_hiddn_units_mult": 0.15,
    "nb_conv_pool_layers": 2, "conv_pool_res_start_idx": 0.0, "pooling_type": "max",
    "conv_kernel_size": 3.0, "res_conv_kernel_size": 2.0, "fc_units_1_mult": 0.03,
    "one_more_fc": None, "activation": "relu",
}


def hear_ctrl_c():
    """Popen's preexec_fn for a process that a test stops with SIGINT: a suite
    started in the background of a script (`pytest &`) ignores SIGINT, every
    process it starts inherits that, and Python then leaves Ctrl-C ignored."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.fixture(scope="session")
def cifar_dir(tmp_path_factory):
    """A folder holding a fake cifar-100-python.tar.gz (400 train, 100 test)."""
    folder = tmp_path_factory.mktemp("ml_req")
    synthetic_data.write_synthetic_archive(folder / "cifar-100-python.tar.gz", N_TRAIN, N_TEST)
    return folder


@pytest.fixture
def config(cifar_dir, tmp_path):
    return flags.SearchSettings(epochs=1, data_dir=str(cifar_dir), offline=True, plots=False,
                                results_dir=str(tmp_path / "results"),
                                trials_file=str(tmp_path / "results.pkl"),
                                keras_home=str(tmp_path / "keras_home"))


@pytest.fixture
def tiny_space():
    return dict(TINY_HYPE_SPACE)


@pytest.fixture
def clean_env(tmp_path):
    """Environment for subprocesses: no HKS_* settings leak in from outside,
    Keras' cache points at an empty folder, nothing is downloaded."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("HKS_", "MONGO_DB_"))
           and k not in ("DATASET_SIZE", "CODE_TESTING", "EXPERIMENT_NAME")}
    env.update(KERAS_HOME=str(tmp_path / "keras_home"), HKS_OFFLINE="1",
               PYTHONUNBUFFERED="1", TF_CPP_MIN_LOG_LEVEL="3")
    return env


# --- MongoDB: the test server of tests/support/mongo_test_server.py, or a real one ---

def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_mongo(url, seconds=10.0):
    import pymongo
    client = pymongo.MongoClient(url, serverSelectionTimeoutMS=int(seconds * 1000))
    try:
        client.admin.command("ping")
    finally:
        client.close()


@pytest.fixture(scope="session")
def mongo_server():
    """`mongodb://host:port`: HKS_TEST_MONGO_URL when it is set (a real
    MongoDB, to confirm the path end to end), else the wire-protocol test
    server, started once as its own process."""
    real = os.environ.get("HKS_TEST_MONGO_URL")
    if real:
        wait_for_mongo(real)
        yield real.rstrip("/")
        return
    port = free_port()
    server = subprocess.Popen([sys.executable, str(SUPPORT / "mongo_test_server.py"),
                               "--port", str(port)], stdout=subprocess.DEVNULL)
    try:
        wait_for_mongo(f"mongodb://127.0.0.1:{port}")
        yield f"mongodb://127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(timeout=10)


@pytest.fixture
def own_mongo():
    """(server process, URL) of a test server of this test's own, which the
    test may pause (SIGSTOP) or kill without harming the others."""
    port = free_port()
    server = subprocess.Popen([sys.executable, str(SUPPORT / "mongo_test_server.py"),
                               "--port", str(port)], stdout=subprocess.DEVNULL)
    wait_for_mongo(f"mongodb://127.0.0.1:{port}")
    yield server, f"mongodb://127.0.0.1:{port}/hks_own"
    if server.poll() is None:
        server.send_signal(signal.SIGCONT)
        server.terminate()
        server.wait(timeout=10)


@pytest.fixture
def mongo_url(mongo_server):
    """A --mongo value naming a database of this test's own."""
    base, _, query = mongo_server.partition("?")
    return f"{base}/hks_test_{uuid.uuid4().hex[:8]}" + (f"?{query}" if query else "")


@pytest.fixture
def mongo_db(mongo_url):
    """A pymongo Database handle on `mongo_url`, to look at what the search wrote."""
    import pymongo
    client = pymongo.MongoClient(mongo_url)
    yield client.get_default_database()
    client.close()
