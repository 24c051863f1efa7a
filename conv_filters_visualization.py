"""Draw what the convolution filters of a trained model respond to.

For each Conv2D layer of the model saved by retrain_best_with_tensorboard.py,
every filter gets the input image that maximises its mean activation: start
from grey noise, then take --steps steps of gradient ascent on the image (the
gradient normalised to unit RMS, the image kept in the model's 0..255 pixel
range). The ascent is tried on the --candidates filters most active on grey
noise (default: twice --max-filters, so the time grows with what is drawn, not
with the layer's width), and the --max-filters filters that reach the highest
activation are drawn in a grid, strongest first, one PNG per layer in layers/
(or --out-dir):

    <layer>_best_filters_<n shown>_(<rows>x<cols>)_out_of_<n filters>.png

A .keras file (a model the search kept, or retrain_best_with_tensorboard.py's)
is loaded whole. From weights alone, the model is rebuilt with
neural_net.build_model from the hyperspace saved
next to the weights (weights/<id>.space.json) or from a result file
(--result), for the image size and heads of its data set
(weights/<id>.dataset.json, or the result; CIFAR-100's when neither says).
Works under both Keras backends: the gradient comes from tf.GradientTape
with TensorFlow and from jax.grad with JAX.

    python conv_filters_visualization.py --weights weights/<id>.weights.h5
    python conv_filters_visualization.py --weights results/models/<name>.keras
"""

import argparse
import math
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np

from hks.core import console, flags, storage
from hks.data import dataset
from hks.trials import kept_models

# neural_net imports Keras (seconds): imported once the files are known to exist.

OUT_DIR = "layers"
MAX_FILTERS = 16
CANDIDATES_PER_SHOWN = 2  # filters tried per filter drawn, by default
STEPS = 20
STEP_SIZE = 2.0  # pixel values (of 0..255) per step, for a gradient of RMS 1
GREY, NOISE = 128.0, 20.0  # start images: grey +- noise / 2
PIXEL_MAX = 255.0  # the model's inputs are 0..255 floats (it rescales them itself)
FILTER_BATCH = 64  # filters ascended together, one image each
CONTRAST = 0.15  # deprocessing: standard deviation of a tile around mid-grey
TILE_ZOOM = 4  # each 32x32 pattern is drawn 128x128 (larger images, larger tiles)
MARGIN = 4  # pixels between tiles
SEED = 0


class VisualizationError(Exception):
    """The weights or their hyperspace cannot be used; the message says why."""


def build_parser():
    parser = flags.OneLineErrorParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", required=True, metavar="FILE",
                        help="weights/<id>.weights.h5 as written by "
                             "retrain_best_with_tensorboard.py, or a whole model: "
                             "results/models/<name>.keras (--keep-models) or "
                             "weights/<name>.keras")
    parser.add_argument("--result", metavar="FILE",
                        help="take the hyperspace from this result JSON instead of "
                             f"<id>{storage.SPACE_SUFFIX} next to the weights")
    parser.add_argument("--out-dir", default=OUT_DIR, metavar="DIR",
                        help=f"folder for the pictures [default {OUT_DIR}]")
    parser.add_argument("--max-filters", type=flags.argparse_type(flags.positive_int), default=MAX_FILTERS,
                        metavar="N", help=f"filters drawn per layer [default {MAX_FILTERS}]")
    parser.add_argument("--candidates", type=flags.argparse_type(flags.positive_int), metavar="N",
                        help=f"filters tried per layer, those most active on grey noise "
                             f"[default {CANDIDATES_PER_SHOWN} x --max-filters; a large "
                             "number tries them all]")
    parser.add_argument("--steps", type=flags.argparse_type(flags.positive_int), default=STEPS,
                        metavar="N", help=f"gradient ascent steps [default {STEPS}]")
    return parser


# ------------------------------------------------------- the model ----

def read_json(path, what):
    try:
        return storage.load_json_result(path)
    except OSError as err:
        raise VisualizationError(f"cannot read {what} {path} ({err.strerror or err})") from None
    except ValueError as err:
        raise VisualizationError(f"{what} {path} is not valid JSON ({err})") from None


def find_hyperspace(weights, result_file):
    """(hyperspace, data set shape) of the weights: from --result, else from
    the files beside them."""
    if result_file:
        result = read_json(result_file, "the result file")
        space = result.get("space") if isinstance(result, dict) else None
        if not isinstance(space, dict):
            raise VisualizationError(f"{result_file} has no 'space': it is not a result "
                                     "file of the search")
        return space, dataset.model_shape(result)
    stem = weights.name.removesuffix(storage.WEIGHTS_SUFFIX)
    space_file = weights.with_name(stem + storage.SPACE_SUFFIX)
    if not space_file.is_file():
        raise VisualizationError(f"no hyperspace next to the weights: {space_file} does "
                                 "not exist; pass --result FILE (the model's result JSON)")
    space = read_json(space_file, "the hyperspace")
    if not isinstance(space, dict):
        raise VisualizationError(f"{space_file} does not hold a hyperspace")
    data_file = weights.with_name(stem + storage.DATASET_SUFFIX)
    info = read_json(data_file, "the data set file") if data_file.is_file() else {}
    return space, dataset.model_shape(info if isinstance(info, dict) else {})


def check_weights_path(weights):
    if not weights.name.endswith(storage.WEIGHTS_SUFFIX):
        raise VisualizationError(f"{weights}: expected a <id>{storage.WEIGHTS_SUFFIX} file as "
                                 "written by retrain_best_with_tensorboard.py")
    if not weights.is_file():
        raise VisualizationError(f"weights file {weights} does not exist")


def load_model(neural_net, hype_space, weights, shape=None):
    """The model of `hype_space` (for the data set `shape`) with the saved weights."""
    import keras
    keras.backend.clear_session()  # layer names conv2d, conv2d_1, ... as in the summary
    try:
        model = neural_net.build_model(hype_space, **(shape or {}))
    except (KeyError, ValueError, TypeError) as err:
        raise VisualizationError(f"the hyperspace cannot build a model "
                                 f"({type(err).__name__}: {err})") from None
    try:
        with warnings.catch_warnings():  # the optimizer's saved state is not needed here
            warnings.filterwarnings("ignore", message="Skipping variable loading for optimizer")
            model.load_weights(str(weights))
    except Exception as err:  # h5py and Keras raise many kinds for a wrong file
        message = str(err).splitlines()[0] if str(err) else ""
        raise VisualizationError(f"{weights} does not fit the model of this hyperspace "
                                 f"({type(err).__name__}: {message})") from None
    return model


def load_keras_file(path):
    """A whole .keras model (results/models/ or weights/): nothing to rebuild."""
    if not path.is_file():
        raise VisualizationError(f"model file {path} does not exist")
    import neural_net  # noqa: F401  (quiets TensorFlow's start-up first)
    try:
        return kept_models.load_model(path)
    except kept_models.NotAModel as err:
        raise VisualizationError(str(err)) from None


def conv_layers(model):
    import keras
    return [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]


# ------------------------------------------------ gradient ascent ----

def filter_activations(activation, masks):
    """Mean activation of filter masks[i] in image i (masks are one-hot rows)."""
    from keras import ops
    return ops.sum(ops.mean(activation, axis=(1, 2)) * masks, axis=-1)


def tensorflow_gradient(extractor):
    """f(images, masks) -> (activations, d sum(activations) / d images), by tf.GradientTape."""
    import tensorflow as tf

    @tf.function
    def gradient(images, masks):
        with tf.GradientTape() as tape:
            tape.watch(images)
            activations = filter_activations(extractor(images, training=False), masks)
            total = tf.reduce_sum(activations)
        return activations, tape.gradient(total, images)

    def run(images, masks):
        activations, grads = gradient(tf.constant(images), tf.constant(masks))
        return activations.numpy(), grads.numpy()
    return run


def jax_gradient(extractor):
    """f(images, masks) -> (activations, d sum(activations) / d images), by jax.grad."""
    import jax
    import jax.numpy as jnp
    trainable = [v.value for v in extractor.trainable_variables]
    non_trainable = [v.value for v in extractor.non_trainable_variables]

    def total(images, masks):
        activation, _ = extractor.stateless_call(trainable, non_trainable, images,
                                                 training=False)
        activations = filter_activations(activation, masks)
        return jnp.sum(activations), activations

    gradient = jax.jit(jax.grad(total, has_aux=True))

    def run(images, masks):
        grads, activations = gradient(jnp.asarray(images), jnp.asarray(masks))
        return np.asarray(activations), np.asarray(grads)
    return run


def gradient_function(extractor):
    import keras
    backend = keras.backend.backend()
    if backend == "tensorflow":
        return tensorflow_gradient(extractor)
    if backend == "jax":
        return jax_gradient(extractor)
    raise VisualizationError(f"the {backend} backend is not supported: use "
                             "KERAS_BACKEND=tensorflow or jax")


def start_images(n, image_shape, rng):
    """Grey noise, in the model's 0..255 pixel range."""
    return GREY + (rng.random((n, *image_shape), dtype=np.float32) - 0.5) * NOISE


def candidate_filters(extractor, n_candidates, rng, image_shape):
    """The filters most active on grey noise: those worth the gradient ascent
    (a ReLU filter silent there gets no gradient and stays silent)."""
    from keras import ops
    activation = ops.convert_to_numpy(extractor(start_images(1, image_shape, rng),
                                                training=False))
    return np.argsort(-activation.mean(axis=(0, 1, 2)), kind="stable")[:n_candidates]


def ascend(gradient, filter_ids, n_filters, steps, rng, image_shape):
    """Images maximising each filter of `filter_ids`, and their final activations."""
    images = start_images(len(filter_ids), image_shape, rng)
    masks = np.eye(n_filters, dtype=np.float32)[filter_ids]
    for _ in range(steps):
        _, grads = gradient(images, masks)
        rms = np.sqrt(np.mean(np.square(grads), axis=(1, 2, 3), keepdims=True))
        images = np.clip(images + STEP_SIZE * grads / (rms + 1e-5), 0.0, PIXEL_MAX)
    activations, _ = gradient(images, masks)
    return images, activations


def best_filter_images(model, layer, max_filters, n_candidates, steps, rng):
    """(images, activations) of the `max_filters` filters that respond most,
    out of the `n_candidates` tried."""
    import keras
    extractor = keras.Model(model.input, layer.output)
    gradient = gradient_function(extractor)
    n_filters = layer.filters
    image_shape = tuple(model.input.shape[1:])
    candidates = candidate_filters(extractor, n_candidates, rng, image_shape)
    images, activations = [], []
    for start in range(0, len(candidates), FILTER_BATCH):
        batch = candidates[start:start + FILTER_BATCH]
        batch_images, batch_activations = ascend(gradient, batch, n_filters, steps, rng,
                                                 image_shape)
        images.append(batch_images)
        activations.append(batch_activations)
    images, activations = np.concatenate(images), np.concatenate(activations)
    best = np.argsort(-activations, kind="stable")[:max_filters]
    return images[best], activations[best]


# ---------------------------------------------------------- pictures ----

def deprocess_image(image):
    """A float image as uint8: centred on mid-grey at a fixed contrast."""
    image = image - image.mean()
    image = image / (image.std() + 1e-5) * CONTRAST + 0.5
    return (np.clip(image, 0.0, 1.0) * 255).astype(np.uint8)


def grid_shape(n):
    """(rows, columns) of the squarest grid that holds n tiles."""
    columns = math.ceil(math.sqrt(n))
    return math.ceil(n / columns), columns


def make_grid(images):
    """The images (strongest first) as one uint8 picture, row by row, zoomed."""
    rows, columns = grid_shape(len(images))
    tiles = [deprocess_image(image).repeat(TILE_ZOOM, 0).repeat(TILE_ZOOM, 1)
             for image in images]
    height, width, channels = tiles[0].shape
    grid = np.zeros((rows * height + (rows + 1) * MARGIN,
                     columns * width + (columns + 1) * MARGIN, channels), np.uint8)
    for i, tile in enumerate(tiles):
        top = MARGIN + (i // columns) * (height + MARGIN)
        left = MARGIN + (i % columns) * (width + MARGIN)
        grid[top:top + height, left:left + width] = tile
    return grid


def picture_name(layer_name, n_shown, n_filters):
    rows, columns = grid_shape(n_shown)
    return f"{layer_name}_best_filters_{n_shown}_({rows}x{columns})_out_of_{n_filters}.png"


def draw_layers(model, out_dir, max_filters, n_candidates, steps):
    """One grid PNG per convolution layer; returns their paths."""
    import keras
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(SEED)
    paths = []
    for layer in conv_layers(model):
        started = time.perf_counter()
        images, activations = best_filter_images(model, layer, max_filters, n_candidates,
                                                 steps, rng)
        path = out_dir / picture_name(layer.name, len(images), layer.filters)
        keras.utils.save_img(str(path), make_grid(images), scale=False)
        print(f"{path}: mean activation {activations[0]:.3g} best, {activations[-1]:.3g} "
              f"last shown, {time.perf_counter() - started:.1f} s", flush=True)
        paths.append(path)
    return paths


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    weights = Path(os.path.expanduser(args.weights))
    try:
        if weights.suffix == ".keras":  # a whole model: kept by the search, or retrained
            model = load_keras_file(weights)
        else:
            check_weights_path(weights)
            hype_space, shape = find_hyperspace(weights, args.result)
            import neural_net
            model = load_model(neural_net, hype_space, weights, shape)
        layers = conv_layers(model)
        if not layers:
            raise VisualizationError("the model has no convolution layer")
        import keras
        print(f"{len(layers)} convolution layers, Keras backend {keras.backend.backend()}: "
              f"{args.steps} steps of gradient ascent per filter.", flush=True)
        draw_layers(model, Path(args.out_dir), args.max_filters,
                    args.candidates or CANDIDATES_PER_SHOWN * args.max_filters, args.steps)
    except VisualizationError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except OSError as err:
        print(f"error: cannot write the pictures: {storage.os_error_text(err)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nInterrupted.", file=sys.stderr)
        return console.EXIT_INTERRUPTED
    return 0


if __name__ == "__main__":
    sys.exit(main())
