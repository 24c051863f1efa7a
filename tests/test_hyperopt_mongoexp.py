"""hyperopt ships the integration tests of its MongoDB search inside the
package (hyperopt/tests/integration/test_mongoexp.py: the Trials API, three
experiments sharing a database, attachments, delete_all, the worker's main
loop). They must all pass through mongo_compat and the test server, and none
may be skipped (they skip themselves when no mongod starts)."""

import os
import re
import subprocess
import sys

import pytest

from conftest import ROOT, SUPPORT

pytestmark = pytest.mark.slow

MIN_TESTS = 12  # hyperopt 0.3.0 collects 12 from the module


def test_hyperopts_own_mongo_tests_pass(tmp_path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(SUPPORT), str(ROOT)]))
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "mongo_plugin", "-p", "no:cacheprovider",
         "-W", "ignore::pytest.PytestUnknownMarkWarning",
         "--pyargs", "hyperopt.tests.integration.test_mongoexp"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    summary = run.stdout.strip().splitlines()[-1] if run.stdout.strip() else ""
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-3000:]
    passed = re.search(r"(\d+) passed", summary)
    assert passed and int(passed.group(1)) >= MIN_TESTS, summary
    assert not re.search(r"skipped|failed|error", summary), summary
