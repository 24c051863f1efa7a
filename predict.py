"""Run a model the search kept on new images: the top classes of each head
for every image (a table, and predictions.csv), or --evaluate on a labelled
folder (accuracy per head and per class, confusion_matrix.png).

    python3 predict.py photos/                       # the best kept model of results/
    python3 predict.py --model results/models/model_0.6761_eb09e.keras cat.jpg
    python3 predict.py --evaluate my_images/         # a folder in the training layout

Images are read as the folder reader reads training images
(image_folders.decode_image): PNG, JPEG, BMP, GIF, any size and mode,
resized whole to the model's size.
"""

import sys
from pathlib import Path

import numpy as np

from hks.core import flags, storage
from hks.data import image_folders
from hks.data.data_types import DatasetError
from hks.trials import kept_models

BATCH_SIZE = kept_models.PREDICT_BATCH
predict = kept_models.predict  # run a model on images in batches (benchmark.py times it too)
TOP = 3  # classes shown per head
SHOWN_ROWS = 20  # rows of the printed table; the CSV has every image
CSV_NAME = "predictions.csv"
CONFUSION_PNG = "confusion_matrix.png"


class PredictError(Exception):
    """Bad input: one line, exit code 2."""


def build_parser():
    parser = flags.OneLineErrorParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("images", nargs="*", metavar="IMAGE_OR_FOLDER",
                        help="image files or folders (read recursively)")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--model", metavar="FILE",
                       help="a .keras file the search kept (with its .json beside it)")
    which.add_argument("--results-dir", default=flags.RESULTS_DIR, metavar="DIR",
                       help="use the best kept model of DIR/models/ (default: %(default)s)")
    parser.add_argument("--evaluate", metavar="FOLDER",
                        help="a labelled folder in the training layout (<class>/, "
                             "<group>/<class>/, or train/ + test/: then its test/)")
    parser.add_argument("--out", default=CSV_NAME, metavar="FILE",
                        help=f"the CSV of every image's predictions; {CONFUSION_PNG} goes "
                             "beside it (default: %(default)s)")
    parser.add_argument("--batch-size", type=flags.argparse_type(flags.positive_int),
                        default=BATCH_SIZE, metavar="N",
                        help="images per batch (default: %(default)s)")
    return parser


# ----------------------------------------------------------- the model ----

def find_model(args):
    """(path, info) of the model to use: --model, or the best kept model."""
    if args.model:
        path = Path(args.model)
        if not path.is_file():
            raise PredictError(f"--model {path}: no such file")
        if path.suffix != kept_models.MODEL_SUFFIX:
            raise PredictError(f"--model {path}: not a .keras model file")
        info = kept_models.read_info(path)
        if info is None:
            raise PredictError(f"--model {path}: no readable {kept_models.info_path(path).name} "
                               "beside it (the class names and image size travel there)")
        return path, checked_info(path, info)
    kept = kept_models.kept_models(args.results_dir)
    if not kept:
        raise PredictError(f"no kept model in {kept_models.models_dir(args.results_dir)}/: run "
                           "a search with --keep-models 1 or more, or give --model FILE")
    return kept[0][0], checked_info(*kept[0])


def checked_info(path, info):
    """The model's JSON, with the keys predict.py needs in the right shape."""
    names = info.get("class_names")
    groups = info.get("group_names")
    if (not isinstance(names, list) or not names or not storage.is_number(info.get("image_size"))
            or not (groups is None or isinstance(groups, list))):
        raise PredictError(f"{kept_models.info_path(path)} lacks the class names or the image "
                           "size (class_names, image_size): not a kept model's JSON")
    return info


def load(path):
    import neural_net  # noqa: F401  (first: it quiets TensorFlow's start-up)
    try:
        return kept_models.load_model(path)
    except kept_models.NotAModel as err:
        raise PredictError(str(err)) from None


def heads_of(info):
    """[(head, output name, class names)]: fine, and coarse when it has one."""
    heads = [("fine", "fine_outputs", info["class_names"])]
    if info.get("group_names"):
        heads.append(("coarse", "coarse_outputs", info["group_names"]))
    return heads


# ---------------------------------------------------------- the images ----

def gather(paths):
    """(image files, files that are not images) of files and folders, recursively."""
    images, others = [], []
    for given in paths:
        path = Path(given)
        if not path.exists():
            raise PredictError(f"{path}: no such file or folder")
        files = [path] if path.is_file() else sorted(
            p for p in path.rglob("*") if p.is_file()
            and not any(part.startswith(".") for part in p.relative_to(path).parts))
        for file in files:
            (images if image_folders.is_image(file) else others).append(file)
    return images, others


def decode(files, size):
    """(uint8 images, the files they came from); unreadable ones are named
    on stderr and left out."""
    images, kept = [], []
    for file in files:
        image = image_folders.decode_image(file, size)
        if image is None:
            print(f"warning: skipped {file}: not a readable image", file=sys.stderr)
        else:
            images.append(image)
            kept.append(file)
    empty = np.zeros((0, size, size, 3), dtype=np.uint8)
    return (np.stack(images) if images else empty), kept


# ------------------------------------------------------------ outputs ----

def top_classes(probabilities, class_names, top=TOP):
    order = np.argsort(-probabilities, axis=1)[:, :top]
    return [[(class_names[i], float(row[i])) for i in picks]
            for row, picks in zip(probabilities, order)]


def predictions_frame(files, outputs, info):
    """One row per image: the top classes of each head with their
    probabilities, then every class's probability."""
    import pandas as pd
    columns = {"image": [str(f) for f in files]}
    for head, name, classes in heads_of(info):
        tops = top_classes(outputs[name], classes)
        for rank in range(min(TOP, len(classes))):
            columns[f"{head}_top{rank + 1}"] = [t[rank][0] for t in tops]
            columns[f"{head}_top{rank + 1}_probability"] = [round(t[rank][1], 4) for t in tops]
    for head, name, classes in heads_of(info):
        for index, cls in enumerate(classes):
            columns[f"{head}:{cls}"] = np.round(outputs[name][:, index], 6)
    return pd.DataFrame(columns)


def printed_table(frame, info):
    """The top classes of each head, `class (p)`, for the first SHOWN_ROWS images."""
    shown = frame.head(SHOWN_ROWS)
    table = {"image": shown["image"]}
    for head, _, classes in heads_of(info):
        for rank in range(1, min(TOP, len(classes)) + 1):
            table[f"{head} {rank}"] = [f"{c} ({p:.2f})" for c, p in zip(
                shown[f"{head}_top{rank}"], shown[f"{head}_top{rank}_probability"])]
    import pandas as pd
    text = pd.DataFrame(table).to_string(index=False)
    more = len(frame) - len(shown)
    return text + (f"\n... and {more} more images in the CSV" if more > 0 else "")


# ----------------------------------------------------------- evaluate ----

def labelled_images(folder, info):
    """(files, true fine indices, true coarse indices or None) of a labelled
    folder, in the model's class order; its test/ when split."""
    root = Path(folder)
    if not root.is_dir():
        raise PredictError(f"--evaluate {root}: no such folder")
    layout = image_folders.scan_folder(root)
    keep = [True] * len(layout.files) if layout.is_test is None else layout.is_test
    unknown = sorted(set(layout.class_names) - set(info["class_names"]))
    if unknown:
        raise PredictError(f"--evaluate {root}: classes the model does not know: "
                           f"{', '.join(unknown[:10])}" + (" ..." if len(unknown) > 10 else ""))
    fine_index = [info["class_names"].index(c) for c in layout.class_names]
    files = [root / f for f, k in zip(layout.files, keep) if k]
    fine = np.array([fine_index[label] for label, k in zip(layout.fine, keep) if k])
    coarse = None
    if layout.coarse is not None and info.get("group_names") and set(
            layout.group_names) <= set(info["group_names"]):
        group_index = [info["group_names"].index(g) for g in layout.group_names]
        coarse = np.array([group_index[label] for label, k in zip(layout.coarse, keep) if k])
    return files, fine, coarse


def per_class_table(true, predicted, class_names):
    """Accuracy, count and the class most often predicted instead, per class
    present in `true`."""
    import pandas as pd
    rows = []
    for index in sorted(set(true.tolist())):
        mine = predicted[true == index]
        wrong = mine[mine != index]
        confused = class_names[np.bincount(wrong).argmax()] if wrong.size else ""
        rows.append({"class": class_names[index], "accuracy": round(float(np.mean(mine == index)), 4),
                     "count": int(mine.size), "most confused with": confused})
    return pd.DataFrame(rows)


def evaluate(model, info, args, out):
    files, fine, coarse = labelled_images(args.evaluate, info)
    images, kept = decode(files, int(info["image_size"]))
    if not kept:
        raise PredictError(f"--evaluate {args.evaluate}: no readable image")
    keep = np.isin([str(f) for f in files], [str(f) for f in kept])
    outputs = predict(model, images, args.batch_size, [n for _, n, _ in heads_of(info)])
    predicted = outputs["fine_outputs"].argmax(axis=1)
    truth = fine[keep]
    print(f"Evaluated {len(kept)} images of {args.evaluate}: fine accuracy "
          f"{np.mean(predicted == truth):.4f}", end="")
    if coarse is not None and "coarse_outputs" in outputs:
        coarse_predicted = outputs["coarse_outputs"].argmax(axis=1)
        print(f", coarse accuracy {np.mean(coarse_predicted == coarse[keep]):.4f}", end="")
    print(".")
    print(per_class_table(truth, predicted, info["class_names"]).to_string(index=False))
    matrix = np.zeros((len(info["class_names"]),) * 2, dtype=int)
    np.add.at(matrix, (truth, predicted), 1)
    present = sorted(set(truth.tolist()) | set(predicted.tolist()))
    png = confusion_matrix_png(matrix[np.ix_(present, present)],
                               [info["class_names"][i] for i in present])
    out.parent.mkdir(parents=True, exist_ok=True)
    storage.atomic_write(out.with_name(CONFUSION_PNG), png)
    write_csv(predictions_frame(kept, outputs, info), out)
    print(f"Wrote {out} and {out.with_name(CONFUSION_PNG)}.")


def confusion_matrix_png(matrix, names):
    """True classes down, predicted across, each row as shares of its class."""
    import io
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    size = min(4 + 0.25 * len(names), 30)
    figure = Figure(figsize=(size, size), dpi=100)
    FigureCanvasAgg(figure)
    ax = figure.subplots()
    totals = matrix.sum(axis=1, keepdims=True)
    shares = np.divide(matrix, totals, out=np.zeros(matrix.shape), where=totals > 0)
    image = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    ticks, fontsize = np.arange(len(names)), 8 if len(names) <= 30 else 5
    ax.set_xticks(ticks, names, rotation=90, fontsize=fontsize)
    ax.set_yticks(ticks, names, fontsize=fontsize)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the class")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def write_csv(frame, out):
    out.parent.mkdir(parents=True, exist_ok=True)
    storage.atomic_write(out, frame.to_csv(index=False))


# --------------------------------------------------------------- main ----

def run(args):
    if not args.images and not args.evaluate:
        raise PredictError("give images or folders to predict, or --evaluate FOLDER")
    path, info = find_model(args)
    files, others = gather(args.images)
    if args.images and not files:
        raise PredictError(f"no image ({', '.join(image_folders.IMAGE_SUFFIXES)}) in "
                           f"{', '.join(args.images)}")
    out = Path(args.out)
    model = load(path)
    print(f"Model {path.name}: {info.get('dataset')}, {info.get('image_size')} px, fine "
          f"accuracy {kept_models.accuracy_of(info):.4f} ({info.get('result_file')}).")
    if args.evaluate:
        evaluate(model, info, args, out)
        return 0
    if others:
        print(f"Skipped {len(others)} file(s) that are not images "
              f"({', '.join(image_folders.IMAGE_SUFFIXES)}).")
    images, kept = decode(files, int(info["image_size"]))
    if not kept:
        raise PredictError("none of the images can be read")
    outputs = predict(model, images, args.batch_size, [n for _, n, _ in heads_of(info)])
    frame = predictions_frame(kept, outputs, info)
    print(printed_table(frame, info))
    write_csv(frame, out)
    print(f"Wrote {len(frame)} predictions to {out}.")
    return 0


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except (PredictError, DatasetError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        print(f"error: {storage.os_error_text(err)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
