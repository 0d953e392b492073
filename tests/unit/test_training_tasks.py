"""Task loading (training/tasks.py): common test split, disjoint parts, built-ins, CSV, user tasks."""

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from training.tasks import Dataset, TaskData, TaskError, TaskSpec, load_full_task, load_task

pytestmark = pytest.mark.timeout(30)

REPO_ROOT = Path(__file__).resolve().parents[2]


def rows(*datasets: Dataset) -> Counter[bytes]:
    """The multiset of (features, label) rows of some splits, for comparing splits by content."""
    return Counter(x.tobytes() + y.tobytes() for d in datasets for x, y in zip(d.X, d.y, strict=True))


@pytest.mark.parametrize("alpha", [None, 0.5])
def test_test_split_is_common_and_parts_are_disjoint(alpha: float | None) -> None:
    spec = TaskSpec(name="digits", alpha=alpha, seed=4)
    parts = [load_task(TaskSpec(name="digits", partition=(i, 3), alpha=alpha, seed=4)).data for i in range(3)]
    full = load_full_task(spec).data
    for part in parts:
        assert np.array_equal(part.test.X, full.test.X)
        assert np.array_equal(part.test.y, full.test.y)
    # The parts' train+val rows add up exactly to the whole training pool: disjoint and covering.
    assert sum((rows(p.train, p.val) for p in parts), Counter()) == rows(full.train, full.val)
    assert sum(len(p.train) + len(p.val) for p in parts) == len(full.train) + len(full.val)
    # The pool and the test split are all of digits' 1797 rows, and the test split is 20%.
    assert len(full.train) + len(full.val) + len(full.test) == 1797
    assert len(full.test) == pytest.approx(0.2 * 1797, abs=5)


def test_another_seed_gives_another_test_split() -> None:
    a = load_task(TaskSpec(name="digits", seed=0)).data.test
    b = load_task(TaskSpec(name="digits", seed=1)).data.test
    assert rows(a) != rows(b)


def test_digits_shapes_and_model() -> None:
    task = load_task(TaskSpec(name="digits", partition=(1, 4)))
    data = task.data
    assert (data.num_features, data.num_classes) == (64, 10)
    assert data.train.X.dtype == np.float32 and data.train.y.dtype == np.int64
    assert data.train.X.shape[1] == 64 and data.train.X.min() >= 0.0 and data.train.X.max() <= 1.0
    assert len(data.val) == pytest.approx(0.15 * (len(data.train) + len(data.val)), abs=1)
    assert task.make_model()(torch.from_numpy(data.val.X)).shape == (len(data.val), 10)


def test_breast_cancer_is_standardized_with_training_pool_statistics() -> None:
    data = load_full_task(TaskSpec(name="breast_cancer")).data
    pool = np.concatenate([data.train.X, data.val.X]).astype(np.float64)
    assert (data.num_features, data.num_classes) == (30, 2)
    np.testing.assert_allclose(pool.mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(pool.std(axis=0), 1.0, atol=1e-5)
    # Statistics over all rows would centre the test split too; pool statistics leave it off-centre.
    assert np.abs(data.test.X.mean(axis=0)).max() > 0.05


def test_synthetic_has_one_user_per_node() -> None:
    spec = TaskSpec(name="synthetic", synthetic_nodes=4)
    users = [load_task(TaskSpec(name="synthetic", synthetic_nodes=4, partition=(i, 4))).data for i in range(4)]
    assert all(len(u.train) + len(u.val) == 160 for u in users)  # 80% of 200 samples per user
    assert all(len(u.test) == 4 * 40 and np.array_equal(u.test.X, users[0].test.X) for u in users)
    assert len({u.train.X.tobytes() for u in users}) == 4
    assert (users[0].num_features, users[0].num_classes) == (60, 10)
    # Users differ in their label mix (natural non-IID): compare the label histograms.
    hists = [np.bincount(u.train.y, minlength=10) / len(u.train) for u in users]
    assert max(np.abs(hists[0] - h).sum() for h in hists[1:]) > 0.5
    assert len(load_full_task(spec).data.train) + len(load_full_task(spec).data.val) == 4 * 160
    # Without synthetic_nodes, the partition count is the number of users.
    assert len(load_task(TaskSpec(name="synthetic", partition=(2, 3))).data.test) == 3 * 40
    assert isinstance(load_task(spec).make_model(), torch.nn.Linear)


def test_synthetic_partition_beyond_users_is_rejected() -> None:
    with pytest.raises(TaskError, match="partition index 5 is out of range for 4 synthetic users"):
        load_task(TaskSpec(name="synthetic", synthetic_nodes=4, partition=(5, 6)))


def test_user_task(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(REPO_ROOT))
    task = load_task(TaskSpec(name="tests.unit.sample_task:make", partition=(1, 2)))
    assert task.name == "tests.unit.sample_task:make"
    assert isinstance(task.data, TaskData) and len(task.data.train) == 40
    assert task.make_model()(torch.from_numpy(task.data.test.X)).shape == (20, 2)
    with pytest.raises(TaskError, match=r"task 'tests.unit.sample_task:not_a_task' returned str"):
        load_task(TaskSpec(name="tests.unit.sample_task:not_a_task"))
    with pytest.raises(TaskError, match=r"module 'tests.unit.sample_task' has no function 'nope'"):
        load_task(TaskSpec(name="tests.unit.sample_task:nope"))


def write_csv(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_csv_task_with_string_labels(tmp_path: Path) -> None:
    lines = ["height,species,width"]
    rng = np.random.default_rng(0)
    for i in range(60):
        # File order is not sorted order: virginica comes first but must become class 2.
        species = ["virginica", "setosa", "versicolor"][i % 3]
        height = {"setosa": 0.0, "versicolor": 1.0, "virginica": 2.0}[species]
        lines.append(f"{rng.normal(height, 0.1):.4f},{species},{rng.normal(5, 2):.4f}")
    path = write_csv(tmp_path / "flowers.csv", "\n".join(lines) + "\n")
    spec = TaskSpec(csv=path, label_column="species")
    data = load_full_task(spec).data
    assert (data.num_features, data.num_classes) == (2, 3)
    assert len(data.train) + len(data.val) + len(data.test) == 60
    # Classes are the sorted label names: setosa=0, versicolor=1, virginica=2; height encodes them.
    pool_x = np.concatenate([data.train.X, data.val.X])
    pool_y = np.concatenate([data.train.y, data.val.y])
    assert pool_x[pool_y == 0, 0].mean() < pool_x[pool_y == 1, 0].mean() < pool_x[pool_y == 2, 0].mean()
    np.testing.assert_allclose(pool_x.mean(axis=0), 0.0, atol=1e-5)  # standardized on the pool
    task = load_task(TaskSpec(csv=str(path), label_column="species", partition=(0, 2)))
    assert task.name == f"csv:{path}" and task.make_model()(torch.zeros(1, 2)).shape == (1, 3)


def test_csv_numeric_labels_sort_numerically(tmp_path: Path) -> None:
    body = "".join(f"{i},{[2, 10][i % 2]}\n" for i in range(20))
    data = load_full_task(TaskSpec(csv=write_csv(tmp_path / "d.csv", "x,label\n" + body))).data
    # Label 2 is class 0 and label 10 class 1, so class 1 rows have odd x (standardized: above 2's).
    x = np.concatenate([data.train.X, data.val.X, data.test.X])[:, 0]
    y = np.concatenate([data.train.y, data.val.y, data.test.y])
    assert np.bincount(y).tolist() == [10, 10] and x[y == 1].mean() > x[y == 0].mean()


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (lambda tmp: TaskSpec(name="mnist"), "unknown task 'mnist': use one of digits, breast_cancer, synthetic"),
        (lambda tmp: TaskSpec(name="no_such_pkg.mod:make"), "task 'no_such_pkg.mod:make': cannot import module"),
        (lambda tmp: TaskSpec(name="digits", partition=(3, 3)), "partition index 3 is out of range for 3 parts"),
        (lambda tmp: TaskSpec(name="digits", partition=(0, 0)), "partition index 0 is out of range for 0 parts"),
        (lambda tmp: TaskSpec(name="digits", alpha=-1.0), "alpha must be a positive number"),
        (lambda tmp: TaskSpec(name="breast_cancer", partition=(499, 500)), "partition 499 of 500 holds 0 rows"),
        (
            lambda tmp: TaskSpec(name="breast_cancer", partition=(0, 50), alpha=0.5),
            r"cannot split \d+ training rows into 50 parts: cannot give each of 50 parts 10 rows",
        ),
        (lambda tmp: TaskSpec(csv=tmp / "absent.csv"), "cannot read CSV"),
        (
            lambda tmp: TaskSpec(csv=write_csv(tmp / "a.csv", "x,y\n1,2\n3,4\n"), label_column="class"),
            "has no label column 'class'; its columns are \\['x', 'y'\\]",
        ),
        (
            lambda tmp: TaskSpec(csv=write_csv(tmp / "b.csv", "x,label\n1,a\nfoo,b\n")),
            "line 3, column 'x': 'foo' is not a number",
        ),
        (lambda tmp: TaskSpec(csv=write_csv(tmp / "c.csv", "x,label\n1,a\n2\n")), "line 3: 1 fields, the header has 2"),
        (lambda tmp: TaskSpec(csv=write_csv(tmp / "e.csv", "x,label\n1,a\n2,a\n")), "has a single class"),
    ],
)
def test_clear_task_errors(tmp_path: Path, spec, message: str) -> None:
    with pytest.raises(TaskError, match=message):
        load_task(spec(tmp_path))


def test_task_error_is_a_value_error() -> None:
    assert issubclass(TaskError, ValueError)
