"""The CNN built from a hyperspace, and training one trial of the search.

`build_model(hype_space)` returns the compiled Keras 3 model: two heads for a
data set with two label levels (CIFAR-100's 100 fine and 20 coarse labels, the
default), only the fine head for one level (CIFAR-10, a folder of class
folders). `build_and_train(hype_space)` trains it on the data set that
--dataset / HKS_DATASET names and returns `(model, model_name, result)`. Only
Keras 3 APIs are used, so `KERAS_BACKEND=jax` runs the same code. The data
comes from hks/data/dataset.py (`neural_net.load_cifar100` is the same function, for
older scripts).
"""

import resource
import shutil
import sys
import time
import traceback
import uuid
from pathlib import Path

import numpy as np

from hks.core import console, flags, storage
from hks.data import dataset
from hks.data.dataset import DatasetError, load_cifar100  # noqa: F401  (for older scripts)
from hks.stopping import pruning
# device first: it opens TensorFlow's devices with their start-up lines hidden.
from hks.training import device, training_callbacks

with console.startup_noise_filtered():  # TensorFlow's C++ start-up lines, on every import
    import keras
    from keras import layers

# --- the architecture (multiplied by the hyperspace's *_mult values) ---
STARTING_L2_REG = 0.0007
STARTING_LEARNING_RATE = 0.001
FIRST_CONV_FILTERS = 16
STARTING_CONV_FILTERS = 40
FC_UNITS_1 = 1000
FC_UNITS_2 = 750
OPTIMIZERS = {"Adam": keras.optimizers.Adam, "Nadam": keras.optimizers.Nadam,
              "RMSprop": keras.optimizers.RMSprop}


# ------------------------------------------------------- the layers ----

def l2_reg(hs):
    return keras.regularizers.L2(STARTING_L2_REG * hs["l2_weight_reg_mult"])


def convolution(x, n_filters, hs, kernel_size=None, strides=1, activation=None):
    k = kernel_size or int(round(hs["conv_kernel_size"]))
    return layers.Conv2D(n_filters, k, strides=strides, padding="same",
                         activation=activation or hs["activation"],
                         kernel_regularizer=l2_reg(hs))(x)


def dense(x, units, hs):
    x = layers.Dense(units, activation=hs["activation"], kernel_regularizer=l2_reg(hs))(x)
    return layers.Dropout(hs["fc_dropout_drop_proba"])(x)


def residual_blocks(x, n_filters, hs):
    """`residual` blocks: a linear 1x1 projection added to dropout + conv, then BN."""
    for _ in range(int(round(hs["residual"]))):
        shortcut = convolution(x, n_filters, hs, kernel_size=1, activation="linear")
        branch = layers.Dropout(hs["conv_dropout_drop_proba"])(x)
        branch = convolution(branch, n_filters, hs,
                             kernel_size=int(round(hs["res_conv_kernel_size"])))
        x = layers.BatchNormalization()(layers.Add()([shortcut, branch]))
    return x


def pooling(x, n_filters, hs):
    """Halve the feature map the way `pooling_type` says."""
    kind = hs["pooling_type"]
    if kind == "max":
        return layers.MaxPooling2D(2)(x)
    if kind == "avg":
        return layers.AveragePooling2D(2)(x)
    if kind == "all_conv":
        return strided_convolution(x, n_filters, hs)
    if kind == "inception":
        return inception_reduction(x, n_filters, hs)
    raise ValueError(f"unknown pooling_type {kind!r}")


def strided_convolution(x, n_filters, hs):
    """All-convolutional pooling: a linear 3x3 convolution of stride 2."""
    x = convolution(x, n_filters, hs, kernel_size=3, strides=2, activation="linear")
    return layers.BatchNormalization()(x) if hs["use_BN"] else x


def inception_reduction(x, n_filters, hs):
    """Three branches concatenated: strided conv; 1x1 -> 3x3 -> strided conv;
    1x1 -> 3x3 max pooling of stride 2."""
    narrow, wide = int(n_filters * 0.33 + 1), int(n_filters * 0.4 + 1)
    branch_a = strided_convolution(x, wide, hs)
    branch_b = convolution(x, narrow, hs, kernel_size=1)
    branch_b = convolution(branch_b, wide, hs, kernel_size=3)
    branch_b = strided_convolution(branch_b, wide, hs)
    branch_c = convolution(x, wide, hs, kernel_size=1)
    branch_c = layers.MaxPooling2D(3, strides=2, padding="same")(branch_c)
    return layers.Concatenate()([branch_a, branch_b, branch_c])


# -------------------------------------------------------- the model ----

def build_model(hype_space, precision="float32", image_size=dataset.IMAGE_SIZE,
                nb_classes=dataset.NB_CLASSES_FINE, nb_groups=dataset.NB_CLASSES_COARSE):
    """The compiled CNN that `hype_space` describes, for RGB images of
    `image_size` px: a fine head of `nb_classes` and, unless `nb_groups` is
    None, a coarse head (the defaults are CIFAR-100's; `**dataset.model_shape(info)`
    gives a data set's). With a mixed `precision` the layers compute in 16
    bits and keep float32 weights; the softmax heads stay float32 either way."""
    with device.dtype_policy(device.resolve_precision(precision)):
        return build_layers_and_compile(hype_space, image_size, nb_classes, nb_groups)


def build_layers_and_compile(hype_space, image_size, nb_classes, nb_groups):
    hs = hype_space
    images = keras.Input(shape=(image_size, image_size, 3), name="images")
    x = layers.Rescaling(1.0 / 255, name="to_unit_range")(images)
    x = layers.RandomFlip("horizontal", name="random_flip")(x)  # training only

    if hs["first_conv"] is not None:
        x = convolution(x, FIRST_CONV_FILTERS, hs, kernel_size=int(hs["first_conv"]))

    n_filters = int(STARTING_CONV_FILTERS * hs["conv_hiddn_units_mult"])
    for i in range(int(hs["nb_conv_pool_layers"])):
        x = convolution(x, n_filters, hs)
        if hs["use_BN"]:
            x = layers.BatchNormalization()(x)
        if hs["residual"] is not None and i >= int(round(hs["conv_pool_res_start_idx"])):
            x = residual_blocks(x, n_filters, hs)
        x = pooling(x, n_filters, hs)
        x = layers.Dropout(hs["conv_dropout_drop_proba"])(x)
        n_filters *= 2

    x = layers.Flatten()(x)
    x = dense(x, int(FC_UNITS_1 * hs["fc_units_1_mult"]), hs)
    if hs["one_more_fc"] is not None:
        x = dense(x, int(FC_UNITS_2 * hs["one_more_fc"]), hs)

    # The heads stay float32 under mixed precision: a 16-bit softmax loses
    # the small probabilities that the cross-entropy needs.
    fine = layers.Dense(nb_classes, activation="softmax", name="fine_outputs",
                        kernel_regularizer=l2_reg(hs), dtype="float32")(x)
    optimizer = OPTIMIZERS[hs["optimizer"]](
        learning_rate=STARTING_LEARNING_RATE * hs["lr_rate_mult"])
    # XLA: always under JAX, on a GPU under TensorFlow. Not on TensorFlow's
    # CPU, where it measured slower (docs/performance.md).
    if nb_groups is None:
        # One head: coarse_labels_weight is drawn but has nothing to weigh.
        # The accuracy keeps the two-headed model's name, so the history,
        # the pruning and the results read the same.
        model = keras.Model(inputs=images, outputs={"fine_outputs": fine})
        model.compile(optimizer=optimizer,
                      loss={"fine_outputs": "sparse_categorical_crossentropy"},
                      metrics={"fine_outputs": [keras.metrics.SparseCategoricalAccuracy(
                          name="fine_outputs_accuracy")]},
                      jit_compile="auto")
        return model
    coarse = layers.Dense(nb_groups, activation="softmax", name="coarse_outputs",
                          kernel_regularizer=l2_reg(hs), dtype="float32")(x)
    model = keras.Model(inputs=images, outputs=[fine, coarse])
    model.compile(
        optimizer=optimizer,
        loss={"fine_outputs": "sparse_categorical_crossentropy",
              "coarse_outputs": "sparse_categorical_crossentropy"},
        loss_weights={"fine_outputs": 1.0, "coarse_outputs": hs["coarse_labels_weight"]},
        metrics={"fine_outputs": ["accuracy"], "coarse_outputs": ["accuracy"]},
        jit_compile="auto")
    return model


# ------------------------------------------------ the training path ----

def as_targets(fine, coarse):
    """Integer labels per head (sparse: no one-hot arrays to build and copy);
    `coarse` None for a model with one head."""
    if coarse is None:
        return {"fine_outputs": fine}
    return {"fine_outputs": fine, "coarse_outputs": coarse}


class ShuffledBatches(keras.utils.PyDataset):
    """The training images (uint8) and integer labels that `fit` takes, in a
    new random order every epoch, in whole batches only: the last partial
    batch (other images each epoch) is left out, so that every step has the
    same shape and the train step is compiled once per trial, not twice.
    Keras prefetches the batches (tf.data under TensorFlow; under JAX the next
    batch is copied to the GPU while the current one trains)."""

    def __init__(self, images, fine, coarse, batch_size):
        super().__init__()
        self.images, self.fine, self.coarse = images, fine, coarse
        self.batch_size = max(1, min(int(batch_size), len(images)))
        self.rng = np.random.default_rng()
        self.order = self.rng.permutation(len(images))

    def __len__(self):
        return len(self.images) // self.batch_size

    def __getitem__(self, index):
        size = self.batch_size
        take = np.sort(self.order[index * size:(index + 1) * size])  # sorted: reads in order
        coarse = None if self.coarse is None else self.coarse[take]
        return self.images[take], as_targets(self.fine[take], coarse)

    def on_epoch_end(self):
        self.order = self.rng.permutation(len(self.images))


def steady_batch_size(n_images, batch_size):
    """A batch size near `batch_size` (within a factor 2) that divides
    `n_images`, so evaluating every image has no smaller last batch to
    compile a second time for; `batch_size` itself when there is none."""
    if n_images <= batch_size:
        return batch_size
    for delta in range(batch_size // 2 + 1):
        for candidate in (batch_size + delta, batch_size - delta):
            if 0 < candidate <= n_images and n_images % candidate == 0:
                return candidate
    return batch_size


def fit_model(model, train, validation, batch_size, epochs, callbacks=(), verbose=0):
    """Train as every trial does: `train` and `validation` are (uint8 images,
    fine labels, coarse labels); images are scaled inside the model, so they
    travel as uint8 (4x less than float32). Returns the history dict."""
    batch_size = int(batch_size)
    validation_data, validation_batch_size = None, None
    if validation is not None:
        validation_data = (validation[0], as_targets(validation[1], validation[2]))
        validation_batch_size = steady_batch_size(len(validation[0]), batch_size)
    return model.fit(ShuffledBatches(*train, batch_size), epochs=epochs,
                     validation_data=validation_data,
                     validation_batch_size=validation_batch_size,
                     callbacks=list(callbacks), verbose=verbose).history


# ------------------------------------------------------- one trial ----

def build_and_train(hype_space, save_best_weights=False, log_for_tensorboard=False,
                    config=None, histogram_freq=0, called_at=None, data_notices=True,
                    earlier=None, stop_when=None, on_epoch=None):
    """Build the model of `hype_space`, train it and return `(model,
    model_name, result)`. `config` is a flags.TrialSettings (default: from the
    environment variables). A loss that turns NaN/inf ends the trial as
    failed. `histogram_freq` N > 0 also logs weight histograms every N epochs
    to TensorBoard. `called_at` (a time.time() stamp, default now) is when the
    trial began, for the result's `seconds_to_first_step`. `data_notices=False`
    keeps quiet about the data set (a trial process: the search said it).
    `earlier`: the search's earlier trials' validation fine accuracy curves
    (or a function returning them) for --prune; None: no pruning.
    `stop_when()` true at the end of an epoch stops training there (a trial
    taken away from its MongoDB worker); `on_epoch(epoch, epochs, accuracy)`
    hears each epoch's validation fine accuracy."""
    called_at = called_at or time.time()
    config = config or flags.read_settings(flags.TrialSettings)
    train, val, test = dataset.training_data(config, notices=data_notices)
    info = dataset.load_dataset(config, notices=False).info
    uid = uuid.uuid4().hex[:5]
    precision = device.resolve_precision(config.precision)
    model = build_model(hype_space, precision, **dataset.model_shape(info))
    first_step = training_callbacks.FirstStepTimer()
    callbacks = [keras.callbacks.TerminateOnNaN(), first_step]
    if stop_when is not None:
        callbacks.append(training_callbacks.StopWhen(stop_when))
    if on_epoch is not None:
        callbacks.append(training_callbacks.EpochReport(on_epoch))
    log_dir = Path(storage.TENSORBOARD_DIR) / uid
    if log_for_tensorboard or config.tensorboard:
        callbacks.append(keras.callbacks.TensorBoard(log_dir=str(log_dir),
                                                     histogram_freq=histogram_freq))
    if test is not None or config.keep_models:  # the best epoch's weights: test, keep
        callbacks.append(keras.callbacks.EarlyStopping(
            monitor="val_fine_outputs_accuracy", mode="max", patience=config.epochs,
            restore_best_weights=True))
    rule = pruning.rule_of(config)
    stopping = None
    if rule is not None and earlier is not None:
        stopping = training_callbacks.PruningCallback(rule, earlier, config.epochs)
        callbacks.append(stopping)
    weights_path = Path(storage.WEIGHTS_DIR) / f"{uid}{storage.WEIGHTS_SUFFIX}"
    if save_best_weights:
        weights_path.parent.mkdir(exist_ok=True)
        callbacks.append(keras.callbacks.ModelCheckpoint(
            str(weights_path), monitor="val_fine_outputs_accuracy", mode="max",
            save_best_only=True, save_weights_only=True))

    started = time.perf_counter()
    history = fit_model(model, train, val, hype_space["batch_size"], config.epochs, callbacks,
                        verbose=1 if sys.stdout.isatty() else 2)
    seconds = time.perf_counter() - started

    result = make_result(history, hype_space, uid, seconds, model, len(train[0]), len(val[0]))
    result.update(info, precision=precision, peak_memory_mb=peak_memory_mb())
    if stopping is not None and result["status"] == "ok":
        result.update(stopping.result_keys())
    if first_step.ended_at is not None:
        result["seconds_to_first_step"] = round(first_step.ended_at - called_at, 3)
    if test is not None and result["status"] == "ok":
        batch_size = steady_batch_size(len(test[0]), int(hype_space["batch_size"]))
        scores = model.evaluate(test[0], as_targets(test[1], test[2]),
                                batch_size=batch_size, verbose=0, return_dict=True)
        result["test_fine_accuracy"] = float(scores["fine_outputs_accuracy"])
        coarse = scores.get("coarse_outputs_accuracy")
        result["test_coarse_accuracy"] = None if coarse is None else float(coarse)
    if log_dir.is_dir():
        shutil.rmtree(log_dir.with_name(result["model_name"]), ignore_errors=True)
        log_dir.rename(log_dir.with_name(result["model_name"]))
    return model, result["model_name"], result


def peak_memory_mb():
    """The peak resident memory of this process so far, in MiB."""
    return memory_mb("VmHWM")


def memory_mb(field="VmRSS"):
    """This process's resident memory now (VmRSS) or at its peak (VmHWM), in
    MiB, from Linux's /proc. Elsewhere getrusage's peak, which on Linux a
    spawned process would inherit from its parent."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return round(int(line.split()[1]) / 1024, 1)
    except (OSError, ValueError, IndexError):
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB, bytes on macOS
    return round(peak / (1024 * 1024 if sys.platform == "darwin" else 1024), 1)


def make_result(history, hype_space, uid, seconds, model, n_train, n_val):
    """The result dict: the original's keys plus what a user wants to know."""
    history = {k: [float(v) for v in values] for k, values in history.items()}
    fine_acc = history["val_fine_outputs_accuracy"]
    finite = all(np.isfinite(v) for values in history.values() for v in values)
    result = {
        "status": "ok" if finite else "fail",
        "model_name": storage.model_name_for(max(fine_acc) if finite else 0.0, uid),
        "space": dict(hype_space),
        "history": history,
        "epochs": len(history["loss"]),
        "training_seconds": round(seconds, 3),
        "nb_params": int(model.count_params()),
        "keras_backend": keras.backend.backend(),
        "keras_version": keras.__version__,
        "train_images": n_train,
        "validation_images": n_val,
    }
    if not finite:
        result["model_name"] = f"{storage.FAILED_PREFIX}{uid}"
        result["error"] = f"the loss became NaN or infinite by epoch {len(history['loss'])}"
        return storage.to_plain(result)
    for head in ("fine", "coarse"):
        accuracy = history.get(f"val_{head}_outputs_accuracy")
        # With one head its loss is the model's: there is no other.
        loss = history.get(f"val_{head}_outputs_loss") or (
            history["val_loss"] if accuracy and head == "fine" else None)
        result.update({f"{head}_best_accuracy": max(accuracy) if accuracy else None,
                       f"{head}_end_accuracy": accuracy[-1] if accuracy else None,
                       f"{head}_best_loss": min(loss) if loss else None,
                       f"{head}_end_loss": loss[-1] if loss else None})
    result["loss"] = 0.0 - max(fine_acc)  # hyperopt minimises (0.0 - x: never "-0.0")
    result["real_loss"] = min(history["val_loss"])
    return storage.to_plain(result)


def failure_result(hype_space, error):
    """The result of a trial that raised: status fail, the error and traceback."""
    return storage.to_plain({
        "status": "fail",
        "model_name": f"{storage.FAILED_PREFIX}{uuid.uuid4().hex[:5]}",
        "space": dict(hype_space),
        "error": f"{type(error).__name__}: {error}",
        "traceback": "".join(traceback.format_exception(error)),
        "keras_backend": keras.backend.backend(),
    })
