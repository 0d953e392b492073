"""Tasks: a model factory plus this node's data (train, val) and the common test split.

How a built-in or CSV task is cut, the same way on every node without talking:
    1. all rows -> a stratified 20% `test` split, from spec.seed: identical on every node;
    2. the remaining training pool -> part i of n (IID or Dirichlet(alpha) label skew);
    3. part i -> 85% `train` and a held-out 15% `val` for local scoring.
The synthetic task is naturally non-IID instead: node i holds user i's data, and `test` pools 20%
of every user's data.

A user task "package.module:function" receives the TaskSpec and returns a Task or a
(model_factory, TaskData) tuple; it partitions its own data.
"""

import importlib
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

import numpy as np
import torch

from training import synthetic
from training.errors import TaskError
from training.models import logistic_regression, mlp
from training.partition import dirichlet_partition, iid_partition, random_split, stratified_split
from training.tabular import read_csv

__all__ = ["Dataset", "Task", "TaskData", "TaskError", "TaskSpec", "load_full_task", "load_task"]

BUILTIN_TASKS = ("digits", "breast_cancer", "synthetic")
TEST_FRACTION = 0.2  # of all rows (of each user's rows for synthetic): the common test split
VAL_FRACTION = 0.15  # of a node's part: its local validation split
DIRICHLET_MIN_ROWS = 10  # every Dirichlet part holds at least this many training-pool rows
SYNTHETIC_SAMPLES_PER_USER = 200
SYNTHETIC_ALPHA = 0.5  # how much users' true models differ
SYNTHETIC_BETA = 0.5  # how much users' input distributions differ
TABULAR_HIDDEN = 32  # hidden width of the MLP for breast_cancer and CSV tasks

# One task seed feeds several independent random streams; these tags keep them apart.
_SPLIT_STREAM, _PARTITION_STREAM, _VAL_STREAM = 1, 2, 3


@dataclass(frozen=True)
class Dataset:
    """Rows of one split: X (rows, features) float32 and y (rows,) int64 class indices.

    Inputs are converted to those dtypes (so a user task may pass float64 or int32 arrays);
    non-integer labels or mismatched lengths raise ValueError.
    """

    X: np.ndarray
    y: np.ndarray

    def __post_init__(self) -> None:
        x = np.asarray(self.X, dtype=np.float32, order="C")
        y = np.asarray(self.y)
        if y.size and not np.issubdtype(y.dtype, np.integer):
            raise ValueError(f"labels must be integers (class indices), got dtype {y.dtype}")
        y = np.asarray(y, dtype=np.int64, order="C")
        if x.ndim != 2 or y.ndim != 1 or len(x) != len(y):
            raise ValueError(f"need X of shape (rows, features) and y of shape (rows,), got {x.shape}, {y.shape}")
        object.__setattr__(self, "X", x)
        object.__setattr__(self, "y", y)

    def __len__(self) -> int:
        return len(self.y)


@dataclass(frozen=True)
class TaskData:
    """This node's train and val splits, the common test split, and the data's shape."""

    train: Dataset
    val: Dataset
    test: Dataset
    num_classes: int
    num_features: int

    def __post_init__(self) -> None:
        if self.num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {self.num_classes}")
        if len(self.train) == 0:
            raise ValueError("the train split is empty")
        for split in ("train", "val", "test"):
            data: Dataset = getattr(self, split)
            if data.X.shape[1] != self.num_features:
                raise ValueError(f"{split} has {data.X.shape[1]} features, num_features is {self.num_features}")
            if len(data) and not (data.y.min() >= 0 and data.y.max() < self.num_classes):
                raise ValueError(f"{split} has labels outside 0..{self.num_classes - 1}")


@dataclass(frozen=True, kw_only=True)
class TaskSpec:
    """What to train on, and which part of it this node holds. Invalid values raise TaskError."""

    name: str = "digits"  # "digits" | "breast_cancer" | "synthetic" | "package.module:function"
    csv: Path | None = None  # the user's own tabular data (a CSV with a header); then name is ignored
    label_column: str = "label"
    partition: tuple[int, int] = (0, 1)  # (index i, count n): this node holds part i of n
    alpha: float | None = None  # None: IID split; else Dirichlet(alpha) label skew
    seed: int = 0  # the same seed on every node gives the same test split and the same parts
    synthetic_nodes: int = 0  # synthetic task: number of users generated (0: the partition count)

    def __post_init__(self) -> None:
        # Config files hand over lists and strings; normalise so equal specs compare equal.
        if self.csv is not None:
            object.__setattr__(self, "csv", Path(self.csv))
        try:
            index, count = (int(v) for v in self.partition)
        except (TypeError, ValueError):
            raise TaskError(f"partition must be (index, count), got {self.partition!r}") from None
        object.__setattr__(self, "partition", (index, count))
        if count < 1 or not 0 <= index < count:
            raise TaskError(f"partition index {index} is out of range for {count} parts (need 0 <= index < count)")
        if self.alpha is not None and not (np.isfinite(self.alpha) and self.alpha > 0):
            raise TaskError(f"alpha must be a positive number (or None for IID), got {self.alpha}")
        if self.seed < 0:
            raise TaskError(f"seed must be >= 0, got {self.seed}")
        if self.synthetic_nodes < 0:
            raise TaskError(f"synthetic_nodes must be >= 0, got {self.synthetic_nodes}")


@dataclass
class Task:
    """A loaded task: its name, this node's data and a factory for a fresh (unseeded) model."""

    name: str
    data: TaskData
    make_model: Callable[[], torch.nn.Module]


def load_task(spec: TaskSpec) -> Task:
    """Load `spec`'s task with this node's part of the training data. Raises TaskError."""
    return _load(spec, full=False)


def load_full_task(spec: TaskSpec) -> Task:
    """The same task and test split, but train/val cover ALL training-pool rows (85/15), as if the
    partition were (0, 1) and IID: the centralized baseline. A user task is called with that spec."""
    return _load(spec, full=True)


def _load(spec: TaskSpec, full: bool) -> Task:
    if spec.csv is not None:
        x, y, classes = read_csv(spec.csv, spec.label_column)
        return _tabular_task(spec, f"csv:{spec.csv}", x, y, len(classes), full)
    if ":" in spec.name:
        return _user_task(spec, full)
    if spec.name == "digits":
        from sklearn.datasets import load_digits  # imported here: sklearn takes ~1 s to import

        x, y = load_digits(return_X_y=True)
        return _tabular_task(spec, "digits", x / 16.0, y, 10, full, standardize=False, hidden=128)
    if spec.name == "breast_cancer":
        from sklearn.datasets import load_breast_cancer

        x, y = load_breast_cancer(return_X_y=True)
        return _tabular_task(spec, "breast_cancer", x, y, 2, full)
    if spec.name == "synthetic":
        return _synthetic_task(spec, full)
    raise TaskError(
        f"unknown task {spec.name!r}: use one of {', '.join(BUILTIN_TASKS)}, "
        "a user task 'package.module:function', or a CSV file"
    )


def _tabular_task(
    spec: TaskSpec,
    name: str,
    x: np.ndarray,
    y: np.ndarray,
    num_classes: int,
    full: bool,
    standardize: bool = True,
    hidden: int = TABULAR_HIDDEN,
) -> Task:
    x = np.asarray(x, dtype=np.float32)
    y = np.asarray(y, dtype=np.int64)
    pool, test = stratified_split(y, TEST_FRACTION, _seed(spec.seed, _SPLIT_STREAM))
    if standardize:
        # Statistics of the training pool only: the test split must not leak into preprocessing.
        # Every node computes them over the same pool, so all nodes feed the model the same scale.
        mean = x[pool].mean(axis=0)
        std = x[pool].std(axis=0)
        x = (x - mean) / np.where(std > 0, std, 1.0)  # a constant column stays constant (zero)
    if full:
        mine, (index, count) = pool, (0, 1)
    else:
        (index, count), mine = spec.partition, pool[_partition(spec, y[pool])[spec.partition[0]]]
    train, val = _val_split(mine, spec.seed, index, count)
    data = TaskData(
        train=Dataset(x[train], y[train]),
        val=Dataset(x[val], y[val]),
        test=Dataset(x[test], y[test]),
        num_classes=num_classes,
        num_features=x.shape[1],
    )
    return Task(name, data, partial(mlp, x.shape[1], hidden, num_classes))


def _partition(spec: TaskSpec, pool_labels: np.ndarray) -> list[np.ndarray]:
    count = spec.partition[1]
    seed = _seed(spec.seed, _PARTITION_STREAM)
    try:
        if spec.alpha is None:
            return iid_partition(len(pool_labels), count, seed)
        return dirichlet_partition(pool_labels, count, spec.alpha, seed, DIRICHLET_MIN_ROWS)
    except ValueError as exc:
        raise TaskError(f"cannot split {len(pool_labels)} training rows into {count} parts: {exc}") from exc


def _val_split(rows: np.ndarray, seed: int, index: int, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Split part `index` of `count` (its row indices) into train and a held-out val."""
    if len(rows) < 2:
        raise TaskError(f"partition {index} of {count} holds {len(rows)} rows; need at least 2 (use fewer parts)")
    keep, held = random_split(len(rows), VAL_FRACTION, _seed(seed, _VAL_STREAM, index, count))
    return rows[keep], rows[held]


def _synthetic_task(spec: TaskSpec, full: bool) -> Task:
    index, count = spec.partition
    users = spec.synthetic_nodes or count
    if not full and index >= users:
        raise TaskError(f"partition index {index} is out of range for {users} synthetic users")
    pools: list[Dataset] = []
    tests: list[Dataset] = []
    for user in range(users):
        x, y = synthetic.generate_user(user, spec.seed, SYNTHETIC_SAMPLES_PER_USER, SYNTHETIC_ALPHA, SYNTHETIC_BETA)
        keep, held = random_split(len(y), TEST_FRACTION, _seed(spec.seed, _SPLIT_STREAM, user))
        pools.append(Dataset(x[keep], y[keep]))
        tests.append(Dataset(x[held], y[held]))
    if full:
        mine, (index, count) = _concat(pools), (0, 1)
    else:
        mine = pools[index]
    train, val = _val_split(np.arange(len(mine)), spec.seed, index, count)
    data = TaskData(
        train=Dataset(mine.X[train], mine.y[train]),
        val=Dataset(mine.X[val], mine.y[val]),
        test=_concat(tests),
        num_classes=synthetic.NUM_CLASSES,
        num_features=synthetic.NUM_FEATURES,
    )
    return Task("synthetic", data, partial(logistic_regression, synthetic.NUM_FEATURES, synthetic.NUM_CLASSES))


def _user_task(spec: TaskSpec, full: bool) -> Task:
    target = spec.name
    module_name, _, function_name = target.partition(":")
    if not module_name or not function_name or ":" in function_name:
        raise TaskError(f"task {target!r} is not of the form 'package.module:function'")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # any error while importing user code is a task-loading failure
        raise TaskError(f"task {target!r}: cannot import module {module_name!r}: {exc}") from exc
    function = getattr(module, function_name, None)
    if not callable(function):
        raise TaskError(f"task {target!r}: module {module_name!r} has no function {function_name!r}")
    try:
        result = function(replace(spec, partition=(0, 1), alpha=None) if full else spec)
    except TaskError:
        raise
    except Exception as exc:  # user code: report it as this task's failure, keeping the traceback
        raise TaskError(f"task {target!r} failed: {type(exc).__name__}: {exc}") from exc
    if isinstance(result, Task):
        return result
    if isinstance(result, tuple) and len(result) == 2 and callable(result[0]) and isinstance(result[1], TaskData):
        return Task(target, result[1], result[0])
    raise TaskError(
        f"task {target!r} returned {type(result).__name__}; expected a Task or a (model_factory, TaskData) tuple"
    )


def _concat(parts: list[Dataset]) -> Dataset:
    return Dataset(np.concatenate([p.X for p in parts]), np.concatenate([p.y for p in parts]))


def _seed(seed: int, stream: int, *extra: int) -> int:
    """An independent 64-bit seed for one use (`stream`, `extra`) of the task seed."""
    return int(np.random.SeedSequence([seed, stream, *extra]).generate_state(1, dtype=np.uint64)[0])
