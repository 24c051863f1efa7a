"""pytest plugin that runs hyperopt's own MongoDB tests on this project's
terms:

    PYTHONPATH=tests/support python -m pytest -p mongo_plugin \\
        --pyargs hyperopt.tests.integration.test_mongoexp

It installs mongo_compat (hyperopt 0.3 needs it with pymongo 4) and, when no
real `mongod` is on PATH, puts tests/support/bin first on PATH: its `mongod` starts the
wire-protocol test server on the port the tests ask for. With a real mongod
installed, the same tests run against it.
"""

import os
import shutil
import sys
from pathlib import Path

SUPPORT = Path(__file__).resolve().parent
ROOT = SUPPORT.parents[1]


def pytest_configure(config):
    sys.path.insert(0, str(ROOT))
    from hks.mongo import mongo_compat
    mongo_compat.install()
    if shutil.which("mongod") is None:
        os.environ["PATH"] = f"{SUPPORT / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"
        os.environ.setdefault("HKS_MONGOD_PYTHON", sys.executable)
