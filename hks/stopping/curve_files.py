"""Learning-curve files, the format public searches publish theirs in (Baker
et al. 2018, ../shared/curves/ in this project's history, tests/fixtures/
curves/): a CSV file with a header, one row per trained network, its
validation accuracy after epoch N in column `acc_N` (N = 1 .. T; `acc_0`,
the network before training, and every other column are ignored).

`read_curves(path)` returns the complete curves and how many rows were left
out for a missing value; a file that cannot be read as such says why in one
line (CurveFileError). Nothing here imports Keras."""

import csv
import math
import re
from pathlib import Path

import numpy as np

COLUMN = re.compile(r"acc_(\d+)")
MISSING = ("", "nan", "NaN", "NA", "null", "None")


class CurveFileError(ValueError):
    """A curve file that cannot be used; the message says where and why."""


def epoch_columns(header, path):
    """{column index: epoch} of acc_1 .. acc_T, checked to run 1..T without a gap."""
    found = {}
    for index, name in enumerate(header):
        match = COLUMN.fullmatch(name.strip())
        if match and int(match.group(1)) >= 1:
            found[index] = int(match.group(1))
    epochs = sorted(found.values())
    if not epochs:
        raise CurveFileError(f"{path}: no columns acc_1, acc_2, ... in its header (a "
                             "learning-curve file has one per epoch: the validation accuracy "
                             "after that epoch)")
    if epochs != list(range(1, len(epochs) + 1)):
        gap = next(e for e in range(1, epochs[-1] + 1) if e not in epochs)
        raise CurveFileError(f"{path}: column acc_{gap} is missing (the header has acc_1 .. "
                             f"acc_{epochs[-1]} with gaps)")
    return found


def read_curves(path):
    """(curves as a float array of rows x epochs, rows left out for a missing
    value). CurveFileError for a file that is not a learning-curve file:
    missing columns, a row with more or fewer cells than the header, text
    where an accuracy should be."""
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise CurveFileError(f"{path}: cannot be read as a CSV file ({err})") from None
    if not rows:
        raise CurveFileError(f"{path}: empty (a learning-curve file has a header and one row "
                             "per trained network)")
    header, rows = rows[0], rows[1:]
    columns = epoch_columns(header, path)
    order = sorted(columns, key=columns.get)
    curves, left_out = [], 0
    for line, row in enumerate(rows, start=2):
        if not row:
            continue
        if len(row) != len(header):
            raise CurveFileError(f"{path}, line {line}: {len(row)} cells, the header has "
                                 f"{len(header)} (rows of different lengths)")
        values = []
        for index in order:
            text = row[index].strip()
            if text in MISSING:
                values.append(math.nan)
                continue
            try:
                values.append(float(text))
            except ValueError:
                raise CurveFileError(f"{path}, line {line}, column {header[index]}: {text[:40]!r} "
                                     "is not a number") from None
        if all(math.isfinite(v) for v in values):
            curves.append(values)
        else:
            left_out += 1
    if not curves:
        raise CurveFileError(f"{path}: no row without a missing value ({left_out} left out)")
    return np.asarray(curves, dtype=float), left_out
