"""Aggregation math, Flower-style: pure functions over {name: array} models, no torch, no network.

Gossip averaging, the centralized baselines and any future robust rule (median, trimmed mean)
call these; the orchestration around them stays thin.
"""

import math
from collections.abc import Mapping, Sequence

import numpy as np


def weighted_mean(models: Sequence[tuple[Mapping[str, np.ndarray], float]]) -> dict[str, np.ndarray]:
    """sum_k w_k * model_k / sum_k w_k, tensor by tensor.

    Weights are typically sample counts. Sums run in float64 (many small float32 terms would lose
    digits) and each result is cast back to its tensor's dtype; integer tensors are rounded.
    Raises ValueError if there are no models, a weight is negative or not finite, the total weight
    is not positive, or the models' names, shapes or dtypes differ.
    """
    if not models:
        raise ValueError("weighted_mean of no models")
    weights = [float(w) for _, w in models]
    if not all(math.isfinite(w) and w >= 0 for w in weights):
        raise ValueError(f"weights must be finite and >= 0, got {weights}")
    total = math.fsum(weights)
    if total <= 0:
        raise ValueError(f"total weight must be positive, got {total}")

    first = models[0][0]
    for k, (model, _) in enumerate(models[1:], start=1):
        _check_same(first, model, k)

    result: dict[str, np.ndarray] = {}
    for name, reference in first.items():
        reference = np.asarray(reference)
        acc = np.zeros(reference.shape, dtype=np.float64)
        for (model, _), w in zip(models, weights, strict=True):
            acc += (w / total) * np.asarray(model[name], dtype=np.float64)
        if np.issubdtype(reference.dtype, np.integer):
            acc = np.rint(acc)
        result[name] = acc.astype(reference.dtype)
    return result


def _check_same(first: Mapping[str, np.ndarray], other: Mapping[str, np.ndarray], k: int) -> None:
    if set(other) != set(first):
        missing, extra = sorted(set(first) - set(other)), sorted(set(other) - set(first))
        raise ValueError(f"model {k} has other tensors than model 0: missing {missing}, unexpected {extra}")
    for name, a in first.items():
        a, b = np.asarray(a), np.asarray(other[name])
        if a.shape != b.shape or a.dtype != b.dtype:
            got, want = f"{b.dtype.name}{list(b.shape)}", f"{a.dtype.name}{list(a.shape)}"
            raise ValueError(f"tensor {name!r}: model {k} has {got}, model 0 has {want}")


def pairwise_mean(models: Sequence[tuple[Mapping[str, np.ndarray], float]]) -> dict[str, np.ndarray]:
    """The gossip mix of exactly two models: (w_a a + w_b b) / (w_a + w_b), in each tensor's own dtype.

    Faster than `weighted_mean` for big float32 models (two float32 passes instead of float64 copies:
    ~3x less memory traffic), and symmetric: each product is rounded on its own and addition commutes,
    so both peers of an exchange compute bit-identical results whichever side calls.
    """
    if len(models) != 2:
        raise ValueError(f"pairwise_mean needs exactly two models, got {len(models)}")
    (a, wa), (b, wb) = models
    if not all(math.isfinite(w) and w > 0 for w in (wa, wb)):
        raise ValueError(f"weights must be finite and > 0, got {wa}, {wb}")
    _check_same(a, b, 1)
    total = wa + wb
    result: dict[str, np.ndarray] = {}
    for name, x in a.items():
        x, y = np.asarray(x), np.asarray(b[name])
        if not np.issubdtype(x.dtype, np.floating):
            result.update(weighted_mean([({name: x}, wa), ({name: y}, wb)]))
            continue
        out = np.multiply(x, x.dtype.type(wa / total))
        out += np.multiply(y, x.dtype.type(wb / total))
        result[name] = out
    return result
