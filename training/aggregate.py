"""Aggregation math, Flower-style: pure functions over {name: array} models, no torch, no network.

Gossip averaging, the centralized baselines and any future robust rule (median, trimmed mean)
call these; the orchestration around them stays thin.
"""

import math
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Protocol

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


def _check_same(first: Mapping[str, np.ndarray], other: Mapping[str, np.ndarray], k: int | str) -> None:
    """`other` must have `first`'s tensor names, shapes and dtypes; k numbers it (or names it) in errors."""
    who = f"model {k}" if isinstance(k, int) else k
    if set(other) != set(first):
        missing, extra = sorted(set(first) - set(other)), sorted(set(other) - set(first))
        raise ValueError(f"{who} has other tensors than model 0: missing {missing}, unexpected {extra}")
    for name, a in first.items():
        a, b = np.asarray(a), np.asarray(other[name])
        if a.shape != b.shape or a.dtype != b.dtype:
            got, want = f"{b.dtype.name}{list(b.shape)}", f"{a.dtype.name}{list(a.shape)}"
            raise ValueError(f"tensor {name!r}: {who} has {got}, model 0 has {want}")


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


# Robust rules. A peer's model can be wrong on purpose (a Byzantine peer) or by accident (a diverged
# run); these bound what one such model does to the aggregate. All ignore the self-reported weights:
# a weight is whatever the sender claims, so a rule that honoured it would hand an attacker that
# claims a huge sample count the whole vote. Their guarantees count peers, not samples.


def coordinate_median(models: Sequence[tuple[Mapping[str, np.ndarray], float]]) -> dict[str, np.ndarray]:
    """Element-wise median of the models, tensor by tensor, in each tensor's own dtype.

    Weights are ignored (see above): the median is robust because fewer than half of the peers
    cannot move it outside the range of the honest values, whatever they send. With an even number
    of models it is the mean of the two middle values. NaN sorts above +inf, so a minority of NaN
    models is outvoted rather than poisoning the result. Integer tensors are rounded. Works on
    float64 copies: peak extra memory is len(models) x the largest tensor x 8 bytes.
    Raises ValueError if there are no models or their names, shapes or dtypes differ.
    """
    _check_models(models, "coordinate_median")
    return _mean_of_middle(models, keep_out=(len(models) - 1) // 2)


TRIM_RATIO = 0.2  # of the models, from each side


def trimmed_mean(
    models: Sequence[tuple[Mapping[str, np.ndarray], float]], trim_ratio: float = TRIM_RATIO
) -> dict[str, np.ndarray]:
    """Per coordinate, drop the floor(trim_ratio * n) largest and smallest values and mean the rest.

    Weights are ignored (see above). Note that the default 0.2 trims nothing below 5 models: then
    it is the plain mean. NaN sorts above +inf, so it is trimmed like a huge value. Integer tensors
    are rounded. Memory as in `coordinate_median`.
    Raises ValueError if trim_ratio is not in [0, 0.5), nothing would remain after trimming (which
    trim_ratio < 0.5 already rules out), there are no models or their names, shapes or dtypes differ.
    """
    if not 0 <= trim_ratio < 0.5:
        raise ValueError(f"trim_ratio must be in [0, 0.5), got {trim_ratio}")
    _check_models(models, "trimmed_mean")
    n = len(models)
    cut = math.floor(trim_ratio * n)
    if n - 2 * cut < 1:
        raise ValueError(f"trim_ratio {trim_ratio} trims all {n} models")
    return _mean_of_middle(models, keep_out=cut)


def centered_clip(
    models: Sequence[tuple[Mapping[str, np.ndarray], float]],
    center: Mapping[str, np.ndarray],
    tau: float = 1.0,
    iterations: int = 3,
) -> dict[str, np.ndarray]:
    """Centered clipping (Karimireddy, He, Jaggi 2021, "Learning from History for Byzantine Robust
    Optimization"), in each tensor's own dtype.

    Starting at v = center (the node's own model), `iterations` times:
        v <- v + (1/n) * sum_i clip(x_i - v, tau),   clip(d, tau) = d * min(1, tau / ||d||),
    with ||d|| the L2 norm over the whole model (all tensors together, integer ones included).
    The average is unweighted, as in the paper: each model then moves v by at most tau / n per
    iteration, so the whole step is at most tau; weighting by the self-reported counts would let a
    peer that claims a huge weight take almost all of it. A delta whose norm is not finite (NaN or
    inf entries) contributes nothing. The center is only the starting point, not a vote: include
    the node's own model in `models` if it should count. Integer tensors are rounded at the end.
    Raises ValueError if there are no models, their (or center's) names, shapes or dtypes differ,
    center is not finite, tau is not > 0 (inf is allowed: plain mean after one iteration) or
    iterations < 1.
    """
    if not tau > 0:  # also rejects NaN
        raise ValueError(f"tau must be > 0, got {tau}")
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
        raise ValueError(f"iterations must be an int >= 1, got {iterations!r}")
    _check_models(models, "centered_clip")
    first = models[0][0]
    _check_same(first, center, "center")

    v = {name: np.asarray(x, dtype=np.float64) for name, x in center.items()}
    if not all(np.isfinite(x).all() for x in v.values()):
        raise ValueError("centered_clip: center has non-finite values")
    xs = [{name: np.asarray(x, dtype=np.float64) for name, x in model.items()} for model, _ in models]
    n = len(xs)
    for _ in range(iterations):
        step = {name: np.zeros_like(x) for name, x in v.items()}
        for x in xs:
            delta = {name: x[name] - v[name] for name in v}
            norm = _l2_norm(delta)
            if not math.isfinite(norm):
                continue
            scale = 1.0 if norm <= tau else tau / norm
            for name, d in delta.items():
                step[name] += (scale / n) * d
        v = {name: v[name] + step[name] for name in v}

    result: dict[str, np.ndarray] = {}
    for name, reference in first.items():
        dtype = np.asarray(reference).dtype
        out = np.rint(v[name]) if np.issubdtype(dtype, np.integer) else v[name]
        result[name] = out.astype(dtype)
    return result


class RobustRule(Protocol):
    """The uniform signature of `ROBUST_RULES`: models as elsewhere, `own` the calling node's model."""

    def __call__(
        self, models: Sequence[tuple[Mapping[str, np.ndarray], float]], *, own: Mapping[str, np.ndarray]
    ) -> dict[str, np.ndarray]: ...


def _median_rule(
    models: Sequence[tuple[Mapping[str, np.ndarray], float]], *, own: Mapping[str, np.ndarray]
) -> dict[str, np.ndarray]:
    return coordinate_median(models)  # `own` is not a vote; the caller puts it in `models` if it counts


def _trimmed_mean_rule(
    models: Sequence[tuple[Mapping[str, np.ndarray], float]], *, own: Mapping[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """Trims at least one model from each side: with the default ratio, fewer than 5 models (a round
    in which some peers were busy) trimmed nothing, and a constant model went in at full weight
    (measured: 0.84 honest accuracy against 0.95 without the attacker). Raises ValueError below 3."""
    if len(models) < 3:
        raise ValueError(f"a trimmed mean needs at least 3 models to trim any, got {len(models)}")
    return trimmed_mean(models, trim_ratio=max(TRIM_RATIO, 1 / len(models)))


def _centered_clip_rule(
    models: Sequence[tuple[Mapping[str, np.ndarray], float]], *, own: Mapping[str, np.ndarray]
) -> dict[str, np.ndarray]:
    return centered_clip(models, own, tau=clip_radius(models, own))


def clip_radius(models: Sequence[tuple[Mapping[str, np.ndarray], float]], own: Mapping[str, np.ndarray]) -> float:
    """The node's clipping radius: the median distance of the models from its own (own included, at 0).

    A fixed radius is right at one scale only (a digits MLP starts with parameter norm ~7; a large
    model's honest peers may sit hundreds apart). The paper sets tau from the spread of honest
    updates; with fewer than half the models hostile, the median distance is such a spread, so honest
    peers pass nearly unclipped and a far model moves us by at most that much / n per iteration.
    Never 0 (that would freeze v): falls back to the mean finite distance, then to 1.
    """
    distances = [
        _l2_norm({k: np.asarray(m[k], np.float64) - np.asarray(own[k], np.float64) for k in own}) for m, _ in models
    ]
    finite = [d for d in distances if math.isfinite(d)]
    for tau in (np.median(finite), np.mean(finite)) if finite else ():
        if tau > 0:
            return float(tau)
    return 1.0


# Read-only, so no caller can change another's rules at run time.
ROBUST_RULES: Mapping[str, RobustRule] = MappingProxyType(
    {"median": _median_rule, "trimmed_mean": _trimmed_mean_rule, "centered_clip": _centered_clip_rule}
)


def _check_models(models: Sequence[tuple[Mapping[str, np.ndarray], float]], rule: str) -> None:
    if not models:
        raise ValueError(f"{rule} of no models")
    first = models[0][0]
    for k, (model, _) in enumerate(models[1:], start=1):
        _check_same(first, model, k)


def _mean_of_middle(models: Sequence[tuple[Mapping[str, np.ndarray], float]], keep_out: int) -> dict[str, np.ndarray]:
    """Per coordinate, the mean of the sorted values without the `keep_out` lowest and highest."""
    n = len(models)
    result: dict[str, np.ndarray] = {}
    for name, reference in models[0][0].items():
        dtype = np.asarray(reference).dtype
        stack = np.sort(np.stack([np.asarray(m[name], dtype=np.float64) for m, _ in models]), axis=0)
        out = stack[keep_out : n - keep_out].mean(axis=0)
        if np.issubdtype(dtype, np.integer):
            out = np.rint(out)
        result[name] = out.astype(dtype)
    return result


def _l2_norm(tensors: Mapping[str, np.ndarray]) -> float:
    """L2 norm over all tensors together; inf or NaN if any entry is."""
    squares = math.fsum(float(np.vdot(d, d)) for d in tensors.values())
    if math.isinf(squares):  # overflow of finite entries (|d| > ~1e154): rescale, don't drop the delta
        big = max((float(np.max(np.abs(d))) for d in tensors.values() if d.size), default=0.0)
        if math.isfinite(big) and big > 0:
            return big * math.sqrt(math.fsum(float(np.vdot(d / big, d / big)) for d in tensors.values()))
    return math.sqrt(squares)
