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
import keras, neural_net, utils
space = json.loads({space!r})
config = utils.TrialSettings(epochs=1, data_dir={data!r}, offline=True, dataset_size=200)
# One model that also goes through batch normalisation, a residual block and elu:
for change in [{{"residual": 1.0, "use_BN": True, "activation": "elu"}}]:
    model, name, result = neural_net.build_and_train(dict(space, **change), config=config)
    print("RESULT", json.dumps({{"backend": keras.backend.backend(), "status": result["status"],
                               "name": name, "acc": result["fine_best_accuracy"]}}))
    keras.backend.clear_session()
# On a folder of the user's own images (one head, 40 px), pruned at the first
# epoch by the median of a perfect earlier trial:
keras.backend.clear_session()
folder = utils.TrialSettings(epochs=2, dataset={folder!r}, image_size=40, cache_dir={cache!r},
                             prune_startup=1, prune_warmup=0)
_, _, result = neural_net.build_and_train(space, config=folder, earlier=[[1.0, 1.0]])
print("PRUNED", json.dumps({{"pruned": result["pruned"], "at": result["pruned_at_epoch"],
                            "epochs": result["epochs"], "classes": result["class_names"],
                            "coarse": result["coarse_best_accuracy"],
                            "size": result["image_size"]}}))
"""


def test_build_and_train_under_jax(cifar_dir, clean_env, tmp_path):
    write_folder(tmp_path / "images", ["a", "b", "c", "d", "e"], per_class=5)  # 5 to validate on
    code = TRAIN_ONE.format(root=str(ROOT), space=json.dumps(TINY_HYPE_SPACE), data=str(cifar_dir),
                            folder=str(tmp_path / "images"), cache=str(tmp_path / "cache"))
    done = subprocess.run([sys.executable, "-c", code], env=dict(clean_env, KERAS_BACKEND="jax"),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    results = [json.loads(line[len("RESULT "):]) for line in done.stdout.splitlines()
               if line.startswith("RESULT ")]
    assert len(results) == 1
    for result in results:
        assert result["backend"] == "jax" and result["status"] == "ok"
        assert result["name"].startswith("model_")
    pruned = [json.loads(line[len("PRUNED "):]) for line in done.stdout.splitlines()
              if line.startswith("PRUNED ")]
    assert pruned == [{"pruned": True, "at": 1, "epochs": 1, "classes": list("abcde"),
                       "coarse": None, "size": 40}]
