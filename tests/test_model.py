"""Every branch of the search space builds and trains, the original's demo and
best spaces build, and a trial returns the result the tools rely on."""

import json
import math

import bson
import keras
import numpy as np
import pytest

import hyperopt_optimize
import neural_net
from hks.core import storage
from hks.training import device

BRANCHES = [
    {"pooling_type": "max"},
    {"pooling_type": "avg"},
    {"pooling_type": "all_conv"},
    {"pooling_type": "all_conv", "use_BN": True},
    {"pooling_type": "inception"},
    {"pooling_type": "inception", "use_BN": True, "residual": 2.0},
    {"residual": 1.0},
    {"residual": 4.0, "conv_pool_res_start_idx": 1.0},
    {"residual": 3.0, "conv_pool_res_start_idx": 2.0, "nb_conv_pool_layers": 3},
    {"first_conv": 3},
    {"first_conv": 4, "conv_kernel_size": 2.0},
    {"one_more_fc": 0.03},
    {"use_BN": True},
    {"activation": "elu"},
    {"optimizer": "Nadam"},
    {"optimizer": "RMSprop", "conv_kernel_size": 4.0, "res_conv_kernel_size": 4.0,
     "residual": 1.0},
]


@pytest.fixture(autouse=True)
def fresh_session():
    yield
    keras.backend.clear_session()


def images_and_targets(n=8):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(n, 32, 32, 3)).astype("uint8")
    fine = rng.integers(0, 100, size=n)
    return x, neural_net.as_targets(fine, fine // 5)


@pytest.mark.parametrize("change", BRANCHES, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()))
def test_every_branch_builds_and_trains_a_step(tiny_space, change):
    model = neural_net.build_model(dict(tiny_space, **change))
    x, y = images_and_targets()
    logs = model.train_on_batch(x, y, return_dict=True)
    assert math.isfinite(logs["loss"])
    fine, coarse = model.predict(x, verbose=0)
    assert fine.shape == (8, 100) and coarse.shape == (8, 20)
    np.testing.assert_allclose(fine.sum(axis=1), 1.0, rtol=1e-4)


def layer_types(model):
    return {type(layer).__name__ for layer in model.layers}


def test_branches_change_the_architecture(tiny_space):
    plain = neural_net.build_model(tiny_space)
    inception = neural_net.build_model(dict(tiny_space, pooling_type="inception"))
    residual = neural_net.build_model(dict(tiny_space, residual=2.0, use_BN=True))
    assert "MaxPooling2D" in layer_types(plain) and "Concatenate" not in layer_types(plain)
    assert "Concatenate" in layer_types(inception)
    assert "Add" in layer_types(residual) and "BatchNormalization" in layer_types(residual)
    adds = [layer for layer in residual.layers if type(layer).__name__ == "Add"]
    assert len(adds) == 2 * 2  # two blocks after each of the two stages


def test_heads_loss_weights_and_learning_rate(tiny_space):
    model = neural_net.build_model(dict(tiny_space, coarse_labels_weight=0.4, lr_rate_mult=0.5))
    assert model.get_layer("fine_outputs").units == 100
    assert model.get_layer("coarse_outputs").units == 20
    assert float(model.optimizer.learning_rate) == pytest.approx(0.0005)
    assert model.get_layer("fine_outputs").kernel_regularizer.l2 == pytest.approx(0.0007)


def test_original_demo_and_best_spaces_build():
    demo = neural_net.build_model(hyperopt_optimize.SPACE_DEMO)
    assert "Concatenate" in layer_types(demo)  # inception pooling
    keras.backend.clear_session()
    best = neural_net.build_model(hyperopt_optimize.SPACE_BEST_ORIGINAL)
    assert "AveragePooling2D" in layer_types(best)
    assert best.get_layer("fine_outputs").output.shape[-1] == 100


def test_flip_happens_in_training_only(tiny_space):
    model = neural_net.build_model(tiny_space)
    x, _ = images_and_targets(4)
    flip = model.get_layer("random_flip")
    inputs = x.astype("float32")
    np.testing.assert_array_equal(np.asarray(flip(inputs, training=False)), inputs)
    flipped = np.stack([np.asarray(flip(inputs, training=True)) for _ in range(10)])
    mirrored = inputs[:, :, ::-1, :]
    assert any(np.array_equal(f[i], mirrored[i]) for f in flipped for i in range(4))
    assert all(np.array_equal(f[i], inputs[i]) or np.array_equal(f[i], mirrored[i])
               for f in flipped for i in range(4))
    first, second = model.predict(x, verbose=0)[0], model.predict(x, verbose=0)[0]
    np.testing.assert_allclose(first, second, rtol=1e-5)  # inference is deterministic


ORIGINAL_KEYS = {"loss", "real_loss", "fine_best_loss", "fine_best_accuracy", "fine_end_loss",
                 "fine_end_accuracy", "coarse_best_loss", "coarse_best_accuracy",
                 "coarse_end_loss", "coarse_end_accuracy", "model_name", "space", "history",
                 "status"}


def test_build_and_train_returns_the_result(config, tiny_space):
    model, name, result = neural_net.build_and_train(tiny_space, config=config)
    assert isinstance(model, keras.Model) and name == result["model_name"]
    assert ORIGINAL_KEYS <= set(result)
    assert result["status"] == "ok" and result["epochs"] == 1
    assert result["loss"] == -result["fine_best_accuracy"]
    assert result["fine_best_accuracy"] == max(result["history"]["val_fine_outputs_accuracy"])
    assert result["real_loss"] == min(result["history"]["val_loss"])
    assert result["nb_params"] == model.count_params() > 0
    assert result["keras_backend"] == keras.backend.backend()
    assert result["training_seconds"] > 0
    assert result["train_images"] == 400 and result["validation_images"] == 100
    assert result["precision"] == "float32"  # "auto" on a CPU
    assert 0 < result["seconds_to_first_step"] < result["training_seconds"] + 60
    assert result["peak_memory_mb"] > 100  # Keras and its backend alone take more
    assert result["space"] == tiny_space
    assert name.startswith(f"model_{result['fine_best_accuracy']:.6f}_")
    bson.BSON.encode(result)  # MongoDB workers store it as it is
    json.loads(json.dumps(result, allow_nan=False))
    for value in result["history"].values():
        assert all(type(v) is float for v in value)


def test_val_split_reports_test_accuracy_separately(config, tiny_space):
    config.val_split = 0.2
    _, _, result = neural_net.build_and_train(tiny_space, config=config)
    assert result["train_images"] == 320 and result["validation_images"] == 80
    assert 0.0 <= result["test_fine_accuracy"] <= 1.0
    assert 0.0 <= result["test_coarse_accuracy"] <= 1.0


def test_nan_loss_ends_the_trial_as_failed(config, tiny_space):
    _, name, result = neural_net.build_and_train(dict(tiny_space, lr_rate_mult=float("inf")),
                                                 config=config)
    assert result["status"] == "fail"
    assert "NaN" in result["error"]
    assert name.startswith(storage.FAILED_PREFIX)
    bson.BSON.encode(result)
    json.loads(json.dumps(result, allow_nan=False))


def test_tensorboard_logs_land_in_a_folder_named_after_the_model(config, tiny_space,
                                                                  tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config.tensorboard = True
    _, name, _ = neural_net.build_and_train(tiny_space, config=config)
    run = tmp_path / "TensorBoard" / name
    assert run.is_dir()
    assert list(run.rglob("events.out.tfevents.*"))


def test_save_best_weights(config, tiny_space, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model, name, _ = neural_net.build_and_train(tiny_space, save_best_weights=True,
                                                config=config)
    saved = list((tmp_path / "weights").glob("*.weights.h5"))
    assert len(saved) == 1
    model.load_weights(saved[0])


def test_mixed_precision_computes_in_16_bits_with_float32_heads(tiny_space):
    model = neural_net.build_model(tiny_space, precision="mixed_bfloat16")
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    assert convs and all(layer.compute_dtype == "bfloat16" for layer in convs)
    assert all(layer.variable_dtype == "float32" for layer in convs)
    for head in ("fine_outputs", "coarse_outputs"):
        assert model.get_layer(head).compute_dtype == "float32"
    assert [str(out.dtype) for out in model.outputs] == ["float32", "float32"]
    # The global policy is put back: the next model is float32 again.
    assert keras.config.dtype_policy().name == "float32"
    assert neural_net.build_model(tiny_space).get_layer("fine_outputs").compute_dtype == "float32"


def test_precision_auto_is_float32_without_a_gpu():
    assert device.resolve_precision("auto") == "float32"
    assert device.resolve_precision("mixed_float16") == "mixed_float16"


def test_training_batches_are_whole_and_reshuffled_every_epoch():
    n, batch_size = 105, 20
    images = np.arange(n, dtype=np.uint8)[:, None, None, None] * np.ones((1, 32, 32, 3), np.uint8)
    labels = np.arange(n)
    batches = neural_net.ShuffledBatches(images, labels, labels // 5, batch_size)
    assert len(batches) == 5  # 100 images; the 5 left over change every epoch

    def epoch():
        seen = []
        for i in range(len(batches)):
            x, y = batches[i]
            assert x.shape == (batch_size, 32, 32, 3) and x.dtype == np.uint8
            np.testing.assert_array_equal(x[:, 0, 0, 0], y["fine_outputs"])  # still paired
            np.testing.assert_array_equal(y["coarse_outputs"], y["fine_outputs"] // 5)
            seen += list(y["fine_outputs"])
        batches.on_epoch_end()
        assert len(set(seen)) == len(seen) == 100  # no image twice in an epoch
        return seen

    assert epoch() != epoch()


@pytest.mark.parametrize("n_images, batch_size, expected", [
    (10000, 320, 250), (10000, 300, 250), (100, 50, 50), (100, 320, 320),
    (97, 20, 20),  # a prime number of images: no divisor near 20
])
def test_evaluation_batch_size_divides_the_images(n_images, batch_size, expected):
    assert neural_net.steady_batch_size(n_images, batch_size) == expected
