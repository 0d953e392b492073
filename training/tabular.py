"""Reading a user's own tabular data: a CSV with a header, numeric features and one label column.

Uses the csv module (pandas is not a dependency). Errors are TaskErrors that name the file, the
line and the column, so a user can fix their data without reading code.
"""

import csv
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from training.errors import TaskError


def read_csv(path: Path, label_column: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Read `path` into X (rows, features) float32, y (rows,) int64 and the class names.

    Labels may be any ints or strings; they are mapped to class indices in sorted order (numeric
    order when every label is a number, so "2" comes before "10"). Every other column must be
    numeric and non-empty.
    """
    try:
        with path.open(newline="") as f:
            rows = list(csv.reader(f))
    except OSError as exc:
        raise TaskError(f"cannot read CSV {path}: {exc.strerror or exc}") from exc
    except (UnicodeDecodeError, csv.Error) as exc:
        raise TaskError(f"CSV {path} is not a readable text CSV: {exc}") from exc

    rows = [row for row in rows if any(cell.strip() for cell in row)]  # blank lines carry nothing
    if not rows:
        raise TaskError(f"CSV {path} is empty: expected a header line and data rows")
    header = [name.strip() for name in rows[0]]
    if label_column not in header:
        raise TaskError(f"CSV {path} has no label column {label_column!r}; its columns are {header}")
    label_at = header.index(label_column)
    feature_names = [name for i, name in enumerate(header) if i != label_at]
    if not feature_names:
        raise TaskError(f"CSV {path} has no feature columns besides the label {label_column!r}")

    features: list[list[float]] = []
    labels: list[str] = []
    for line, row in enumerate(rows[1:], start=2):
        if len(row) != len(header):
            raise TaskError(f"CSV {path} line {line}: {len(row)} fields, the header has {len(header)}")
        labels.append(row[label_at].strip())
        features.append([_number(path, line, header[i], cell) for i, cell in enumerate(row) if i != label_at])
    if len(features) < 2:
        raise TaskError(f"CSV {path} has {len(features)} data rows; need at least 2")

    classes = sorted(set(labels), key=_label_sort_key(labels))
    if len(classes) < 2:
        raise TaskError(f"CSV {path}: label column {label_column!r} has a single class {classes}")
    index = {name: i for i, name in enumerate(classes)}
    x = np.asarray(features, dtype=np.float32)
    y = np.asarray([index[label] for label in labels], dtype=np.int64)
    return x, y, classes


def _number(path: Path, line: int, column: str, cell: str) -> float:
    try:
        value = float(cell)
    except ValueError:
        raise TaskError(
            f"CSV {path} line {line}, column {column!r}: {cell!r} is not a number (feature columns must be numeric)"
        ) from None
    if not math.isfinite(value):
        raise TaskError(f"CSV {path} line {line}, column {column!r}: {cell!r} is not a finite number")
    return value


def _label_sort_key(labels: list[str]) -> Callable[[str], Any]:
    """Sort numerically when every label parses as a number, else as text; ties ("1", "1.0") by text."""
    try:
        for label in set(labels):
            float(label)
    except ValueError:
        return str
    return lambda label: (float(label), label)
