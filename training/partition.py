"""Row partitioners for testnets and splits: pure numpy, deterministic from a seed.

Every function returns index arrays (int64) into the rows it was given; callers index their own
X and y with them. The same arguments give the same indices on every machine, which is what lets
nodes of a testnet agree on a common test split and hold disjoint parts without talking.
"""

import numpy as np

# Dirichlet resampling gives up after this many draws: by then min_size is clearly out of reach
# (a tiny alpha with many parts), and a clear error beats spinning forever.
MAX_DIRICHLET_DRAWS = 1000


def iid_partition(n_rows: int, n_parts: int, seed: int) -> list[np.ndarray]:
    """Shuffle rows 0..n_rows-1 and cut them into n_parts parts whose sizes differ by at most one.

    The parts are disjoint, cover every row, and each is sorted (row order is not information).
    """
    _check_parts(n_parts)
    if n_rows < 0:
        raise ValueError(f"n_rows must be >= 0, got {n_rows}")
    order = np.random.default_rng(seed).permutation(n_rows)
    return [np.sort(part).astype(np.int64) for part in np.array_split(order, n_parts)]


def dirichlet_partition(
    labels: np.ndarray, n_parts: int, alpha: float, seed: int, min_size: int = 10
) -> list[np.ndarray]:
    """Label-skewed partition: each class's rows are split among parts in proportions ~ Dir(alpha).

    Small alpha (0.1) gives each part a few dominant classes; large alpha (100) approaches IID.
    The whole draw is repeated, from the same random stream, until every part holds at least
    `min_size` rows, so the result is still a pure function of the arguments.
    Raises ValueError when min_size is impossible or not reached after MAX_DIRICHLET_DRAWS draws.
    """
    _check_parts(n_parts)
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {labels.shape}")
    if not (np.isfinite(alpha) and alpha > 0):
        raise ValueError(f"alpha must be a positive number, got {alpha}")
    if min_size < 0 or min_size * n_parts > len(labels):
        raise ValueError(f"cannot give each of {n_parts} parts {min_size} rows out of {len(labels)}")

    rng = np.random.default_rng(seed)
    rows_by_class = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    for _ in range(MAX_DIRICHLET_DRAWS):
        parts: list[list[np.ndarray]] = [[] for _ in range(n_parts)]
        for rows in rows_by_class:
            rows = rng.permutation(rows)
            shares = rng.dirichlet(np.full(n_parts, alpha))
            # Cumulative shares turned into cut points; the last cut is len(rows), so every row lands.
            cuts = (np.cumsum(shares)[:-1] * len(rows)).astype(np.int64)
            for part, piece in zip(parts, np.split(rows, cuts), strict=True):
                part.append(piece)
        result = [np.sort(np.concatenate(pieces)).astype(np.int64) for pieces in parts]
        if min(len(part) for part in result) >= min_size:
            return result
    raise ValueError(
        f"no Dirichlet({alpha}) partition into {n_parts} parts with >= {min_size} rows each "
        f"after {MAX_DIRICHLET_DRAWS} draws; raise alpha or lower the part count"
    )


def stratified_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Hold out `fraction` of each class's rows (rounded, at least one when a class has two or more).

    Returns (kept, held_out) sorted index arrays: disjoint and covering. Stratifying keeps the
    held-out class mix equal to the whole data's, so a test accuracy is comparable across runs.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    held: list[np.ndarray] = []
    for c in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == c))
        n_held = round(fraction * len(rows))
        if len(rows) >= 2:
            n_held = min(max(n_held, 1), len(rows) - 1)
        held.append(rows[:n_held])
    held_out = np.sort(np.concatenate(held)).astype(np.int64) if held else np.zeros(0, np.int64)
    kept = np.setdiff1d(np.arange(len(labels)), held_out).astype(np.int64)
    return kept, held_out


def random_split(n_rows: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Hold out round(fraction * n_rows) random rows, keeping at least one row on each side.

    Returns (kept, held_out) sorted index arrays. Raises ValueError for fewer than two rows.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")
    if n_rows < 2:
        raise ValueError(f"need at least 2 rows to hold some out, got {n_rows}")
    n_held = min(max(round(fraction * n_rows), 1), n_rows - 1)
    order = np.random.default_rng(seed).permutation(n_rows)
    return np.sort(order[n_held:]).astype(np.int64), np.sort(order[:n_held]).astype(np.int64)


def _check_parts(n_parts: int) -> None:
    if n_parts < 1:
        raise ValueError(f"n_parts must be >= 1, got {n_parts}")
