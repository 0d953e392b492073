"""Partitioners (training/partition.py): disjoint, covering, deterministic, and skewed when asked."""

import numpy as np
import pytest

from training.partition import dirichlet_partition, iid_partition, random_split, stratified_split

pytestmark = pytest.mark.timeout(30)

# 10 balanced classes of 100 rows: a Dirichlet split's skew is then the partitioner's doing alone.
LABELS = np.repeat(np.arange(10), 100)


def assert_disjoint_cover(parts: list[np.ndarray], n_rows: int) -> None:
    joined = np.concatenate(parts)
    assert len(joined) == n_rows  # no row twice...
    assert np.array_equal(np.sort(joined), np.arange(n_rows))  # ...and every row once


def mean_label_entropy(parts: list[np.ndarray], labels: np.ndarray) -> float:
    """Mean over parts of the Shannon entropy (bits) of the part's label distribution."""
    entropies = []
    for part in parts:
        p = np.bincount(labels[part], minlength=10) / len(part)
        p = p[p > 0]
        entropies.append(float(-(p * np.log2(p)).sum()))
    return float(np.mean(entropies))


@pytest.mark.parametrize(("n_rows", "n_parts"), [(1000, 7), (10, 10), (5, 1), (3, 5)])
def test_iid_disjoint_covering_and_balanced(n_rows: int, n_parts: int) -> None:
    parts = iid_partition(n_rows, n_parts, seed=3)
    assert len(parts) == n_parts
    assert_disjoint_cover(parts, n_rows)
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1


def test_iid_deterministic_per_seed() -> None:
    a, b, c = iid_partition(500, 4, seed=1), iid_partition(500, 4, seed=1), iid_partition(500, 4, seed=2)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x, z) for x, z in zip(a, c, strict=True))


def test_dirichlet_disjoint_covering_min_size_and_deterministic() -> None:
    a = dirichlet_partition(LABELS, 10, alpha=0.1, seed=5, min_size=10)
    b = dirichlet_partition(LABELS, 10, alpha=0.1, seed=5, min_size=10)
    c = dirichlet_partition(LABELS, 10, alpha=0.1, seed=6, min_size=10)
    assert_disjoint_cover(a, len(LABELS))
    assert min(len(p) for p in a) >= 10
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x, z) for x, z in zip(a, c, strict=True))


def test_dirichlet_small_alpha_is_more_skewed_than_iid() -> None:
    iid = mean_label_entropy(iid_partition(len(LABELS), 10, seed=0), LABELS)
    skewed = mean_label_entropy(dirichlet_partition(LABELS, 10, alpha=0.1, seed=0), LABELS)
    mild = mean_label_entropy(dirichlet_partition(LABELS, 10, alpha=100.0, seed=0), LABELS)
    # IID parts are near the 10-class maximum (log2 10 = 3.32 bits); alpha 0.1 parts hold a few classes.
    assert iid > 3.2
    assert skewed < iid - 1.0
    assert mild > 3.2  # a large alpha approaches IID


def test_dirichlet_rejects_impossible_requests() -> None:
    with pytest.raises(ValueError, match="cannot give each of 20 parts 100 rows"):
        dirichlet_partition(LABELS[:1000], 20, alpha=1.0, seed=0, min_size=100)
    with pytest.raises(ValueError, match="alpha must be a positive number"):
        dirichlet_partition(LABELS, 3, alpha=0.0, seed=0)
    with pytest.raises(ValueError, match="n_parts must be >= 1"):
        iid_partition(10, 0, seed=0)


def test_stratified_split_keeps_class_mix() -> None:
    labels = np.repeat(np.arange(3), [50, 30, 20])
    kept, held = stratified_split(labels, 0.2, seed=0)
    assert_disjoint_cover([kept, held], len(labels))
    assert np.array_equal(np.bincount(labels[held]), [10, 6, 4])


def test_random_split_holds_out_fraction_and_keeps_both_sides() -> None:
    kept, held = random_split(100, 0.15, seed=0)
    assert_disjoint_cover([kept, held], 100)
    assert len(held) == 15
    kept, held = random_split(2, 0.15, seed=0)
    assert (len(kept), len(held)) == (1, 1)
