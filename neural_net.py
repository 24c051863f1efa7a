"""CIFAR-100 loading, the CNN built from a hyperspace, and training one trial.

`load_cifar100()` reads the real `cifar-100-python.tar.gz` (fine and coarse
labels at once), `build_model(hype_space)` returns the compiled two-headed
Keras 3 model, and `build_and_train(hype_space)` trains it and returns
`(model, model_name, result)`. Only Keras 3 APIs are used in the model and the
training loop, so `KERAS_BACKEND=jax` runs the same code.
"""

import contextlib
import hashlib
import io
import os
import pickle
import resource
import shutil
import sys
import tarfile
import time
import traceback
import uuid
import zlib
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # hide TensorFlow's C++ start-up chatter

import keras  # noqa: E402
import numpy as np  # noqa: E402
from keras import layers  # noqa: E402

import utils  # noqa: E402

# --- the data set ---
CIFAR100_ARCHIVE = "cifar-100-python.tar.gz"
CIFAR100_FOLDER = "cifar-100-python"
CIFAR100_URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
CIFAR100_SHA256 = "85cd44d02ba6437773c5bbd22e183051d648de2e7d6b014e1ef29b855ba677a7"
KERAS_CACHE_NAME = "cifar-100-python-target"  # what keras.datasets.cifar100 downloads to
DECODED_CACHE_SUFFIX = ".decoded.npz"
IMAGE_SHAPE = (32, 32, 3)
PIXELS_PER_IMAGE = 32 * 32 * 3
NB_CLASSES_FINE = 100
NB_CLASSES_COARSE = 20
TRAIN_FRACTION_WHEN_TRIMMED = 0.8  # DATASET_SIZE=N keeps 80% train, 20% test

# --- the architecture (multiplied by the hyperspace's *_mult values) ---
STARTING_L2_REG = 0.0007
STARTING_LEARNING_RATE = 0.001
FIRST_CONV_FILTERS = 16
STARTING_CONV_FILTERS = 40
FC_UNITS_1 = 1000
FC_UNITS_2 = 750
OPTIMIZERS = {"Adam": keras.optimizers.Adam, "Nadam": keras.optimizers.Nadam,
              "RMSprop": keras.optimizers.RMSprop}

TENSORBOARD_DIR = "TensorBoard"
WEIGHTS_DIR = "weights"


class DatasetError(Exception):
    """The CIFAR-100 data cannot be found or is not in the expected format."""


# ---------------------------------------------------------------- data ----

_loaded = {}  # decoded data set per source, kept for the life of the process


def load_cifar100(data_dir=None, config=None):
    """CIFAR-100 as `((x_train, y_fine_train, y_coarse_train), (x_test,
    y_fine_test, y_coarse_test))`: uint8 images N x 32 x 32 x 3 and int64
    labels. Looks in `data_dir` (default: the configured `ml_req/`), then in
    Keras' cache, then downloads through Keras. Raises DatasetError."""
    config = config or utils.config_from_env()
    data_dir = Path(os.path.expanduser(data_dir or config.data_dir))
    source = find_cifar100(data_dir, Path(config.keras_home))
    if source is None:
        source = download_cifar100(data_dir, Path(config.keras_home), config.offline)
    key = (str(source.resolve()), source_signature(source))
    if key not in _loaded:
        _loaded[key] = read_cifar100(source)
    return _loaded[key]


def unload_cifar100():
    """Forget the decoded data kept by load_cifar100 (the on-disk copy stays)."""
    _loaded.clear()


def find_cifar100(data_dir, keras_home):
    """The first archive or extracted folder found, or None."""
    keras_datasets = keras_home / "datasets"
    candidates = [data_dir / CIFAR100_ARCHIVE, data_dir / CIFAR100_FOLDER,
                  keras_datasets / KERAS_CACHE_NAME / CIFAR100_FOLDER,
                  keras_datasets / CIFAR100_FOLDER, keras_datasets / CIFAR100_ARCHIVE]
    for path in candidates:
        if path.is_file() or (path.is_dir() and (path / "train").is_file()):
            return path
    return None


def download_cifar100(data_dir, keras_home, offline):
    """Download through Keras into its cache; one clear error when that fails."""
    where = (f"put {CIFAR100_ARCHIVE} in {data_dir}/ (download it from "
             f"{CIFAR100_URL}) or pass --data-dir")
    if offline:
        raise DatasetError(f"CIFAR-100 not found and downloading is off: {where}.")
    print(f"CIFAR-100 not found in {data_dir}/ nor in Keras' cache: downloading "
          f"{CIFAR100_URL} ...", flush=True)
    try:
        path = keras.utils.get_file(fname=KERAS_CACHE_NAME, origin=CIFAR100_URL,
                                    extract=True, file_hash=CIFAR100_SHA256,
                                    cache_dir=str(keras_home))
    except Exception as err:  # no network, proxy, disk full: all the same to the user
        raise DatasetError(f"CIFAR-100 not found and the download failed "
                           f"({type(err).__name__}: {err}). To fix: {where}.") from None
    folder = Path(path) / CIFAR100_FOLDER
    if not (folder / "train").is_file():
        raise DatasetError(f"the download did not produce {folder}/train. To fix: {where}.")
    return folder


def source_signature(source):
    """Size and modification time of the archive, or of the folder's files."""
    files = [source] if source.is_file() else [source / n for n in ("train", "test")]
    return ";".join(f"{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in files if f.exists())


def sha256_of(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def decoded_cache_path(source):
    return source.with_name(source.name.removesuffix(".tar.gz") + DECODED_CACHE_SUFFIX)


def read_cifar100(source):
    """Decode `source`, through the on-disk cache beside it when it is fresh."""
    cache = decoded_cache_path(source)
    signature = source_signature(source)
    data, verdict = read_decoded_cache(cache, signature)
    if data is not None:
        print(f"CIFAR-100: {verdict} (decoded copy {cache.name})", flush=True)
        return data
    if source.is_file():
        digest = sha256_of(source)
        if digest == CIFAR100_SHA256:
            verdict = f"{source} is the official archive (SHA-256 matches)"
        else:
            verdict = (f"notice: {source} is not the official archive "
                       f"(SHA-256 {digest[:12]}...); using it as it is")
        members = read_archive_members(source)
    else:
        verdict = f"extracted folder {source} (no archive to check against the official SHA-256)"
        members = {name: read_member_file(source / name) for name in ("train", "test")}
    print(f"CIFAR-100: {verdict}", flush=True)
    train = decode_split(members["train"], f"{source}: train")
    test = decode_split(members["test"], f"{source}: test")
    write_decoded_cache(cache, signature, verdict, train, test)
    return train, test


def read_archive_members(archive):
    """Unpickle `train` and `test` out of the tar.gz (Python 2 pickles)."""
    members = {}
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for name in ("train", "test", "meta"):
                member_name = f"{CIFAR100_FOLDER}/{name}"
                try:
                    member = tar.extractfile(member_name)
                except KeyError:
                    if name == "meta":
                        continue  # label names are not needed for training
                    raise DatasetError(f"{archive}: the archive has no member "
                                       f"{member_name}; is it cifar-100-python.tar.gz?") from None
                if member is None:
                    raise DatasetError(f"{archive}: {member_name} is not a file")
                members[name] = unpickle(member.read(), f"{archive}: {member_name}")
    except (tarfile.TarError, EOFError, zlib.error, OSError) as err:
        raise DatasetError(f"{archive}: not a readable tar.gz archive, it may be "
                           f"truncated or corrupt ({err}). Download it again from "
                           f"{CIFAR100_URL}.") from None
    return members


def read_member_file(path):
    try:
        return unpickle(path.read_bytes(), str(path))
    except OSError as err:
        raise DatasetError(f"{path}: cannot be read ({err})") from None


def unpickle(raw, where):
    try:
        return pickle.load(io.BytesIO(raw), encoding="bytes")
    except Exception as err:  # pickle raises many kinds on garbage
        raise DatasetError(f"{where}: not a valid CIFAR-100 pickle "
                           f"({type(err).__name__}: {err})") from None


def decode_split(batch, where):
    """Check one pickled split and turn its rows into N x 32 x 32 x 3 images."""
    if not isinstance(batch, dict):
        raise DatasetError(f"{where}: expected a dict, found {type(batch).__name__}")
    batch = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in batch.items()}
    missing = [k for k in ("data", "fine_labels", "coarse_labels") if k not in batch]
    if missing:
        raise DatasetError(f"{where}: missing {', '.join(missing)}")
    data = batch["data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 \
            or data.shape[1] != PIXELS_PER_IMAGE:
        shape = getattr(data, "shape", None)
        dtype = getattr(data, "dtype", type(data).__name__)
        raise DatasetError(f"{where}: data must be N x {PIXELS_PER_IMAGE} uint8, "
                           f"found shape {shape} of {dtype}")
    fine = labels_array(batch["fine_labels"], NB_CLASSES_FINE, f"{where}: fine_labels")
    coarse = labels_array(batch["coarse_labels"], NB_CLASSES_COARSE, f"{where}: coarse_labels")
    if not len(data) == len(fine) == len(coarse):
        raise DatasetError(f"{where}: {len(data)} images but {len(fine)} fine and "
                           f"{len(coarse)} coarse labels")
    # Each row is 1024 red, 1024 green then 1024 blue values, row-major.
    images = np.ascontiguousarray(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    return images, fine, coarse


def labels_array(values, nb_classes, where):
    try:
        labels = np.asarray(values)
    except Exception as err:
        raise DatasetError(f"{where}: not a list of labels ({err})") from None
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise DatasetError(f"{where}: expected a flat list of integers, found "
                           f"shape {labels.shape} of {labels.dtype}")
    if labels.size and (labels.min() < 0 or labels.max() >= nb_classes):
        raise DatasetError(f"{where}: labels must lie in 0..{nb_classes - 1}, "
                           f"found {labels.min()}..{labels.max()}")
    return labels.astype(np.int64)


def read_decoded_cache(cache, signature):
    """(data, what the archive was) from a fresh cache, else (None, None)."""
    try:
        with np.load(cache) as npz:
            if str(npz["signature"]) != signature:
                return None, None
            return (((npz["x_train"], npz["y_fine_train"], npz["y_coarse_train"]),
                     (npz["x_test"], npz["y_fine_test"], npz["y_coarse_test"])),
                    str(npz["verdict"]))
    except Exception:  # missing, stale format or damaged: decode again
        return None, None


def write_decoded_cache(cache, signature, verdict, train, test):
    buffer = io.BytesIO()
    np.savez(buffer, signature=np.array(signature), verdict=np.array(verdict),
             x_train=train[0], y_fine_train=train[1], y_coarse_train=train[2],
             x_test=test[0], y_fine_test=test[1], y_coarse_test=test[2])
    try:
        utils.atomic_write(cache, buffer.getvalue())
    except OSError as err:
        print(f"CIFAR-100: note: could not write the decoded copy {cache} ({err}); "
              "the archive will be decoded again next time.", flush=True)


def trim_dataset(data, dataset_size):
    """Keep the first 80% x N training and 20% x N test images (DATASET_SIZE)."""
    if not dataset_size:
        return data
    n_train = max(1, int(dataset_size * TRAIN_FRACTION_WHEN_TRIMMED))
    n_test = max(1, dataset_size - n_train)
    (x, yf, yc), (xt, ytf, ytc) = data
    return (x[:n_train], yf[:n_train], yc[:n_train]), (xt[:n_test], ytf[:n_test], ytc[:n_test])


def training_data(config):
    """Arrays for `fit`: train, validation and (with --val-split) held-out test."""
    train, test = trim_dataset(load_cifar100(config=config), config.dataset_size)
    if config.val_split:
        n_val = max(1, int(round(len(train[0]) * config.val_split)))
        if n_val >= len(train[0]):
            raise DatasetError(f"--val-split {config.val_split} leaves no training images")
        val = tuple(a[-n_val:] for a in train)
        train = tuple(a[:-n_val] for a in train)
        return train, val, test
    return train, test, None


def as_targets(fine, coarse):
    """Integer labels per head (sparse: no one-hot arrays to build and copy)."""
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
        return self.images[take], as_targets(self.fine[take], self.coarse[take])

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


# --------------------------------------------------------------- model ----

def resolve_precision(precision):
    """The Keras dtype policy for `precision`: "auto" is mixed_bfloat16 on a
    GPU that computes in bfloat16 (compute capability 8.0 and up: A100, H100),
    mixed_float16 on an older GPU, float32 on a CPU."""
    if precision != "auto":
        return precision
    capability = gpu_compute_capability()
    if capability is None:
        return "float32"
    return "mixed_bfloat16" if capability >= 8.0 else "mixed_float16"


def gpu_compute_capability():
    """The first GPU's compute capability as a number (9.0), or None."""
    try:
        if keras.backend.backend() == "jax":
            import jax
            gpus = [d for d in jax.devices() if d.platform == "gpu"]
            return float(gpus[0].compute_capability) if gpus else None
        if keras.backend.backend() == "tensorflow":
            import tensorflow as tf
            gpus = tf.config.list_physical_devices("GPU")
            if not gpus:
                return None
            major, minor = tf.config.experimental.get_device_details(gpus[0])["compute_capability"]
            return major + minor / 10
    except Exception:  # no GPU runtime, unknown device: plain float32 is always right
        return None
    return None


def keep_off_the_gpu():
    """Build models in this process on the CPU only (the search process draws
    models but trains none): TensorFlow and JAX take most of a GPU's memory
    in the first process that uses it, which would leave the trials' own
    processes none. Does nothing once this process has used its devices."""
    try:
        if keras.backend.backend() == "tensorflow":
            import tensorflow as tf
            tf.config.set_visible_devices([], "GPU")
        elif keras.backend.backend() == "jax":
            import jax
            jax.config.update("jax_platforms", "cpu")
    except (RuntimeError, ValueError):  # devices already initialised: too late, leave them
        pass


@contextlib.contextmanager
def dtype_policy(name):
    """Layers built inside compute in `name` (e.g. mixed_bfloat16); the global
    policy is put back afterwards."""
    before = keras.config.dtype_policy()
    keras.config.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(before)


def build_model(hype_space, precision="float32"):
    """The compiled two-headed CNN that `hype_space` describes. With a mixed
    `precision` the layers compute in 16 bits and keep float32 weights; the
    softmax heads stay float32 either way."""
    with dtype_policy(resolve_precision(precision)):
        return build_layers_and_compile(hype_space)


def build_layers_and_compile(hype_space):
    hs = hype_space
    images = keras.Input(shape=IMAGE_SHAPE, name="images")
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
    fine = layers.Dense(NB_CLASSES_FINE, activation="softmax", name="fine_outputs",
                        kernel_regularizer=l2_reg(hs), dtype="float32")(x)
    coarse = layers.Dense(NB_CLASSES_COARSE, activation="softmax", name="coarse_outputs",
                          kernel_regularizer=l2_reg(hs), dtype="float32")(x)
    model = keras.Model(inputs=images, outputs=[fine, coarse])
    optimizer = OPTIMIZERS[hs["optimizer"]](
        learning_rate=STARTING_LEARNING_RATE * hs["lr_rate_mult"])
    model.compile(
        optimizer=optimizer,
        loss={"fine_outputs": "sparse_categorical_crossentropy",
              "coarse_outputs": "sparse_categorical_crossentropy"},
        loss_weights={"fine_outputs": 1.0, "coarse_outputs": hs["coarse_labels_weight"]},
        metrics={"fine_outputs": ["accuracy"], "coarse_outputs": ["accuracy"]},
        # XLA: always under JAX, on a GPU under TensorFlow. Not on TensorFlow's
        # CPU, where it measured slower (benchmark.py's numbers in the README).
        jit_compile="auto")
    return model


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


# ------------------------------------------------------------ training ----

class FirstStepTimer(keras.callbacks.Callback):
    """Notes when the first training step ends (after tracing and compiling)."""

    def __init__(self):
        super().__init__()
        self.ended_at = None

    def on_train_batch_end(self, batch, logs=None):
        if self.ended_at is None:
            self.ended_at = time.time()


def build_and_train(hype_space, save_best_weights=False, log_for_tensorboard=False,
                    config=None, histogram_freq=0, called_at=None):
    """Build the model of `hype_space`, train it and return `(model,
    model_name, result)`. A loss that turns NaN/inf ends the trial as failed.
    `histogram_freq` N > 0 also logs weight histograms every N epochs to
    TensorBoard. `called_at` (a time.time() stamp, default now) is when the
    trial began, for the result's `seconds_to_first_step`."""
    called_at = called_at or time.time()
    config = config or utils.config_from_env()
    train, val, test = training_data(config)
    uid = uuid.uuid4().hex[:5]
    precision = resolve_precision(config.precision)
    model = build_model(hype_space, precision)
    first_step = FirstStepTimer()
    callbacks = [keras.callbacks.TerminateOnNaN(), first_step]
    log_dir = Path(TENSORBOARD_DIR) / uid
    if log_for_tensorboard or config.tensorboard:
        callbacks.append(keras.callbacks.TensorBoard(log_dir=str(log_dir),
                                                     histogram_freq=histogram_freq))
    if test is not None:  # evaluate the test split with the best epoch's weights
        callbacks.append(keras.callbacks.EarlyStopping(
            monitor="val_fine_outputs_accuracy", mode="max", patience=config.epochs,
            restore_best_weights=True))
    weights_path = Path(WEIGHTS_DIR) / f"{uid}.weights.h5"
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
    result.update(precision=precision, peak_memory_mb=peak_memory_mb())
    if first_step.ended_at is not None:
        result["seconds_to_first_step"] = round(first_step.ended_at - called_at, 3)
    if test is not None and result["status"] == "ok":
        batch_size = steady_batch_size(len(test[0]), int(hype_space["batch_size"]))
        scores = model.evaluate(test[0], as_targets(test[1], test[2]),
                                batch_size=batch_size, verbose=0, return_dict=True)
        result["test_fine_accuracy"] = float(scores["fine_outputs_accuracy"])
        result["test_coarse_accuracy"] = float(scores["coarse_outputs_accuracy"])
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
        "model_name": utils.model_name_for(max(fine_acc) if finite else 0.0, uid),
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
        result["model_name"] = f"{utils.FAILED_PREFIX}{uid}"
        result["error"] = f"the loss became NaN or infinite by epoch {len(history['loss'])}"
        return utils.to_plain(result)
    for head in ("fine", "coarse"):
        accuracy = history[f"val_{head}_outputs_accuracy"]
        loss = history[f"val_{head}_outputs_loss"]
        result.update({f"{head}_best_accuracy": max(accuracy),
                       f"{head}_end_accuracy": accuracy[-1],
                       f"{head}_best_loss": min(loss),
                       f"{head}_end_loss": loss[-1]})
    result["loss"] = 0.0 - max(fine_acc)  # hyperopt minimises (0.0 - x: never "-0.0")
    result["real_loss"] = min(history["val_loss"])
    return utils.to_plain(result)


def failure_result(hype_space, error):
    """The result of a trial that raised: status fail, the error and traceback."""
    return utils.to_plain({
        "status": "fail",
        "model_name": f"{utils.FAILED_PREFIX}{uuid.uuid4().hex[:5]}",
        "space": dict(hype_space),
        "error": f"{type(error).__name__}: {error}",
        "traceback": "".join(traceback.format_exception(error)),
        "keras_backend": keras.backend.backend(),
    })
