"""Retrain the best model found by the search, with TensorBoard logging.

Takes the hyperspace of the best result in the results folder (or of the
result file given with --result, or with --original-best the original
project's best space), trains it again and writes:

- TensorBoard logs to TensorBoard/<model_name>/: the scalars of every epoch
  (train/ and validation/) and the histograms of the weights;
- the weights of the epoch with the best validation fine accuracy to
  weights/<id>.weights.h5, the hyperspace beside them in
  weights/<id>.space.json and the data set's image size and heads in
  weights/<id>.dataset.json, so that conv_filters_visualization.py can
  rebuild the model from the weights alone;
- the whole model at that epoch to weights/<model_name>.keras, with what it
  needs beside it in weights/<model_name>.json, as the search keeps its best
  models (--keep-models): predict.py --model takes it.

It trains on the data set the chosen result was trained on (--dataset and
--image-size choose another).

The retrained result is printed, not saved to the results folder: the search
only counts its own trials. Without any result and without --original-best
the script stops and says so.

    python retrain_best_with_tensorboard.py --epochs 100
    tensorboard --logdir TensorBoard
"""

import argparse
import dataclasses
import json
import signal
import sys
from pathlib import Path

from hks.core import console, flags, storage
from hks.data import dataset
from hks.trials import kept_models

# neural_net imports Keras and TensorFlow (seconds): imported once the inputs
# are known to be good, so mistakes are answered at once.

# The settings it reads, of flags.TrialSettings (KERAS_HOME has no flag); the others keep
# their defaults.
RETRAIN_OPTIONS = ["epochs", "dataset_size", "data_dir", "results_dir", "val_split", "offline",
                   "keras_home", "dataset", "test_split", "image_size", "cache_dir"]
HISTOGRAM_FREQ = 1  # weight histograms every epoch


class RetrainError(Exception):
    """The retraining cannot start or finish; the message says why."""


def build_parser():
    parser = flags.OneLineErrorParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="A flag wins over its environment variable. DATASET_SIZE only counts "
               "when CODE_TESTING=1 is set too.")
    flags.add_options(parser, flags.TrialSettings, only=RETRAIN_OPTIONS)
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--result", metavar="FILE",
                       help="retrain the space of this result JSON instead of the best "
                            "one in the results folder")
    which.add_argument("--original-best", action="store_true",
                       help="retrain the original project's best space "
                            "(hyperopt_optimize.SPACE_BEST_ORIGINAL) when the results "
                            "folder holds no successful result")
    return parser


def read_result(path):
    """The result JSON at `path`; RetrainError if it is missing or has no space."""
    try:
        result = storage.load_json_result(path)
    except OSError as err:
        raise RetrainError(f"cannot read the result file {path} ({err.strerror or err})") from None
    except ValueError as err:
        raise RetrainError(f"{path} is not valid JSON ({err})") from None
    if not isinstance(result, dict) or not isinstance(result.get("space"), dict):
        raise RetrainError(f"{path} has no 'space': it is not a result file of the search")
    return result


def choose_hyperspace(args, config):
    """(hyperspace, where it comes from, its result or None) as the flags say."""
    if args.result:
        result = read_result(args.result)
        return (result["space"], f"{args.result} ({result.get('model_name', 'unnamed')})",
                result)
    best = storage.load_best_result(config.results_dir)
    if best is not None:
        return (best["space"], f"the best result in {config.results_dir}/ "
                f"({best['model_name']})", best)
    if args.original_best:
        import hyperopt_optimize
        return (dict(hyperopt_optimize.SPACE_BEST_ORIGINAL),
                "the original project's best space", None)
    raise RetrainError(f"no successful result in {config.results_dir}/ to retrain: run "
                       "hyperopt_optimize.py first, pass --results-dir, --result FILE, "
                       "or --original-best")


def result_data_set(config, result, args, environ=None):
    """The settings with the data set `result` was trained on, unless
    --dataset (or HKS_DATASET) chose one."""
    if result is None or not result.get("dataset") or flags.chosen(
            flags.TrialSettings, "dataset", args, environ):
        return config
    return dataclasses.replace(config, dataset=result["dataset"],
                               image_size=result.get("image_size") or config.image_size)


def show_model(neural_net, hype_space, shape):
    """Print the model's summary before the long training; refuse a bad space."""
    import keras
    try:
        model = neural_net.build_model(hype_space, **shape)
    except (KeyError, ValueError, TypeError) as err:
        raise RetrainError(f"the hyperspace cannot build a model "
                           f"({type(err).__name__}: {err})") from None
    model.summary()
    del model
    keras.backend.clear_session()  # the trained model gets the same layer names


def retrain(hype_space, config):
    """Train with TensorBoard and best-weights saving; the result and its files."""
    import neural_net
    info = dataset.load_dataset(config).info
    show_model(neural_net, hype_space, dataset.model_shape(info))
    model, model_name, result = neural_net.build_and_train(
        hype_space, save_best_weights=True, log_for_tensorboard=True, config=config,
        histogram_freq=HISTOGRAM_FREQ)
    if result["status"] != "ok":
        raise RetrainError(f"training failed: {result.get('error', 'unknown error')}")
    uid = storage.model_id(model_name)  # build_and_train names the weights after it
    weights = Path(storage.WEIGHTS_DIR) / f"{uid}{storage.WEIGHTS_SUFFIX}"
    if not weights.is_file():
        raise RetrainError(f"training ended but {weights} was not written")
    space_file = weights.with_name(f"{uid}{storage.SPACE_SUFFIX}")
    storage.atomic_write(space_file, json.dumps(storage.to_plain(hype_space), indent=4,
                                                sort_keys=True) + "\n")
    storage.atomic_write(weights.with_name(f"{uid}{storage.DATASET_SUFFIX}"),
                         json.dumps(info, indent=4, sort_keys=True) + "\n")
    # Last, the whole model at its best epoch, as the search keeps them (predict.py reads it).
    model_info = dict(kept_models.model_info(result, config.results_dir), result_file=None,
                      retrained=True)  # its result is printed, not saved
    whole = kept_models.save(model, model_info,
                             Path(storage.WEIGHTS_DIR) / f"{model_name}{kept_models.MODEL_SUFFIX}")
    logs = Path(storage.TENSORBOARD_DIR) / model_name
    return result, weights, space_file, logs, whole


def report(result, weights, space_file, logs, whole):
    coarse = result.get("coarse_best_accuracy")
    print(f"\nRetrained {result['model_name']} on {console.data_line(result)} for "
          f"{result['epochs']} epochs ({result['training_seconds']:.1f} s): best validation "
          f"fine accuracy {result['fine_best_accuracy']:.4f}"
          + ("" if coarse is None else f", coarse {coarse:.4f}")
          + (f"; test fine {result['test_fine_accuracy']:.4f}"
             if "test_fine_accuracy" in result else "") + ".")
    print(f"Best weights (by validation fine accuracy): {weights}")
    print(f"Hyperspace of those weights: {space_file}")
    print(f"TensorBoard logs: {logs}/")
    print(f"See them with: tensorboard --logdir {logs.parent}")
    print(f"The whole model, for predict.py: {whole} (and its .json)")
    print(f"Predict: python3 predict.py --model {whole} IMAGE_OR_FOLDER")
    print(f"Filters: python conv_filters_visualization.py --weights {whole}")


def main(argv=None):
    parser = build_parser()
    args, (config,) = flags.parse_or_exit(parser, [flags.TrialSettings], argv,
                                          only=RETRAIN_OPTIONS)
    try:
        hype_space, source, result = choose_hyperspace(args, config)
    except RetrainError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    config = result_data_set(config, result, args)
    print(f"Retraining {source} on {config.dataset} for {config.epochs} epochs. Hyperspace:")
    storage.print_json(hype_space)
    import neural_net
    try:
        report(*retrain(hype_space, config))
    except KeyboardInterrupt:
        print(f"\nInterrupted. Weights saved so far are in {storage.WEIGHTS_DIR}/.",
              file=sys.stderr)
        return console.EXIT_INTERRUPTED
    except (RetrainError, neural_net.DatasetError, OSError) as err:
        print(f"error: {storage.os_error_text(err)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, console.raise_interrupt)
    sys.exit(main())
