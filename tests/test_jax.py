"""The model and training code run unchanged under KERAS_BACKEND=jax (the GPU
machines used for checks have JAX but no TensorFlow)."""

import importlib.util
import json
import subprocess
import sys

import pytest

from conftest import ROOT, TINY_HYPE_SPACE
from image_sets import write_folder

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(importlib.util.find_spec("jax") is None,
                                 reason="JAX is not installed (pip install -r requirements-dev.txt)")]

TRAIN_ONE = """
import json, sys
sys.path[:0] = [{root!r}]
import keras, neural_net
from hks.core import flags
space = json.loads({space!r})
# One model through batch normalisation, a residual block and elu, with two
# heads on a two-level folder of images at 40 px, pruned at the first epoch
# by the median of a perfect earlier trial:
space = dict(space, residual=1.0, use_BN=True, activation="elu")
config = flags.TrialSettings(epochs=2, dataset={folder!r}, image_size=40, cache_dir={cache!r},
                             prune="median", prune_startup=1, prune_warmup=0)
model, name, result = neural_net.build_and_train(space, config=config, earlier=[[1.0, 1.0]])
print("RESULT", json.dumps({{"backend": keras.backend.backend(), "status": result["status"],
                           "name": name, "pruned": result["pruned"],
                           "at": result["pruned_at_epoch"], "epochs": result["epochs"],
                           "groups": result["group_names"], "size": result["image_size"]}}))
"""


def test_build_and_train_under_jax(clean_env, tmp_path):
    # 5 classes, one image each to validate on: a perfect epoch is unlikely
    write_folder(tmp_path / "images", ["x/a", "x/b", "y/c", "y/d", "y/e"], per_class=5)
    code = TRAIN_ONE.format(root=str(ROOT), space=json.dumps(TINY_HYPE_SPACE),
                            folder=str(tmp_path / "images"), cache=str(tmp_path / "cache"))
    done = subprocess.run([sys.executable, "-c", code], env=dict(clean_env, KERAS_BACKEND="jax"),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    results = [json.loads(line[len("RESULT "):]) for line in done.stdout.splitlines()
               if line.startswith("RESULT ")]
    assert len(results) == 1
    result = results[0]
    assert result["backend"] == "jax" and result["status"] == "ok"
    assert result["name"].startswith("model_")
    assert (result["pruned"], result["at"], result["epochs"]) == (True, 1, 1)
    assert result["groups"] == ["x", "y"] and result["size"] == 40
