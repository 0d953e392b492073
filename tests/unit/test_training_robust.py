"""Robust aggregation rules (training/aggregate.py) against analytic answers and simple attacks."""

import math
import statistics
from collections.abc import Callable

import numpy as np
import pytest

from training.aggregate import (
    ROBUST_RULES,
    centered_clip,
    clip_radius,
    coordinate_median,
    trimmed_mean,
    weighted_mean,
)

pytestmark = pytest.mark.timeout(30)


def random_models(n: int, seed: int, spread: float = 1.0) -> list[tuple[dict[str, np.ndarray], float]]:
    rng = np.random.default_rng(seed)
    base = {"w": rng.normal(size=(8, 5)), "b": rng.normal(size=5)}
    return [({k: v + spread * rng.normal(size=v.shape) for k, v in base.items()}, float(i + 1)) for i in range(n)]


def flat(model: dict[str, np.ndarray]) -> np.ndarray:
    return np.concatenate([np.asarray(model[k], np.float64).ravel() for k in sorted(model)])


def test_coordinate_median_equals_numpy_median() -> None:
    for n in (1, 2, 5, 6):
        models = random_models(n, seed=n)
        result = coordinate_median(models)
        for name in ("w", "b"):
            np.testing.assert_allclose(
                result[name], np.median([m[name] for m, _ in models], axis=0), rtol=0, atol=1e-12
            )


def test_trimmed_mean_equals_a_per_coordinate_reference() -> None:
    models = random_models(7, seed=1)
    for ratio in (0.0, 0.15, 0.2, 0.3, 0.49):
        cut = math.floor(ratio * 7)
        result = trimmed_mean(models, trim_ratio=ratio)
        for name in ("w", "b"):
            values = np.stack([m[name] for m, _ in models]).reshape(7, -1)
            expected = [statistics.fmean(sorted(column)[cut : 7 - cut]) for column in values.T]
            np.testing.assert_allclose(result[name].ravel(), expected, rtol=0, atol=1e-12)
    # trim_ratio 0 is the unweighted mean
    np.testing.assert_allclose(trimmed_mean(models, 0.0)["w"], np.mean([m["w"] for m, _ in models], axis=0))


def test_dtypes_are_kept_and_integers_rounded() -> None:
    a = {"w": np.array([0.0, 4.0], np.float32), "n": np.array([10, 1], np.int64)}
    b = {"w": np.array([3.0, 0.0], np.float32), "n": np.array([13, 2], np.int64)}
    for rule in ROBUST_RULES.values():
        result = rule([(a, 1.0), (b, 1.0), (a, 1.0)], own=a)
        assert result["w"].dtype == np.float32 and result["n"].dtype == np.int64
    # Median of two = mean of both: 11.5 and 1.5 round half to even, as np.rint does in weighted_mean.
    np.testing.assert_array_equal(coordinate_median([(a, 1.0), (b, 1.0)])["n"], [12, 2])
    np.testing.assert_array_equal(trimmed_mean([(a, 1.0), (b, 1.0)])["w"], np.array([1.5, 2.0], np.float32))
    np.testing.assert_array_equal(centered_clip([(a, 1.0), (b, 1.0)], a, tau=math.inf)["n"], [12, 2])


def test_weights_are_ignored() -> None:
    models = random_models(5, seed=2)
    reweighted = [(m, 1000.0 if k == 0 else 0.0) for k, (m, _) in enumerate(models)]
    own = models[0][0]
    for rule in ROBUST_RULES.values():
        for name in ("w", "b"):
            np.testing.assert_array_equal(rule(models, own=own)[name], rule(reweighted, own=own)[name])


def attacked(attack: str) -> tuple[list[tuple[dict[str, np.ndarray], float]], np.ndarray]:
    """Five honest models around a common point and one attacker; returns (models, honest mean)."""
    honest = [(m, 1.0) for m, _ in random_models(5, seed=7, spread=0.1)]
    mean = {k: np.mean([m[k] for m, _ in honest], axis=0) for k in ("w", "b")}
    rng = np.random.default_rng(99)
    if attack == "sign_flip_x10":
        bad = {k: -10.0 * v for k, v in mean.items()}
    elif attack == "noise_sd100":
        bad = {k: rng.normal(0.0, 100.0, size=v.shape) for k, v in mean.items()}
    else:  # constant 1e6
        bad = {k: np.full(v.shape, 1e6) for k, v in mean.items()}
    return [*honest, (bad, 1.0)], flat(mean)


# The bound: relative L2 distance to the honest mean below 0.1 for every robust rule (they reach ~0.035), while
# the plain weighted mean (all weights 1) is more than 1.0 away, so the defence does something. The sign flip
# moves the plain mean by 11/6 of the honest norm; the other two attacks by far more.
@pytest.mark.parametrize("attack", ["sign_flip_x10", "noise_sd100", "constant_1e6"])
@pytest.mark.parametrize("rule", sorted(ROBUST_RULES))
def test_one_attacker_out_of_six_is_contained(rule: str, attack: str) -> None:
    models, honest_mean = attacked(attack)
    own = models[0][0]  # an honest node centres on its own model
    robust = flat(ROBUST_RULES[rule](models, own=own))
    plain = flat(weighted_mean(models))
    scale = np.linalg.norm(honest_mean)
    assert np.linalg.norm(robust - honest_mean) / scale < 0.1
    assert np.linalg.norm(plain - honest_mean) / scale > 1.0


def test_nan_attacker_is_outvoted_by_median_and_trimmed_mean_and_ignored_by_centered_clip() -> None:
    models, honest_mean = attacked("sign_flip_x10")
    models[-1] = ({k: np.full_like(v, np.nan) for k, v in models[-1][0].items()}, 1.0)
    for rule in ROBUST_RULES.values():
        result = flat(rule(models, own=models[0][0]))
        assert np.isfinite(result).all()
        assert np.linalg.norm(result - honest_mean) / np.linalg.norm(honest_mean) < 0.1


def test_centered_clip_with_infinite_tau_is_the_plain_mean_after_one_iteration() -> None:
    models = random_models(6, seed=3, spread=5.0)
    center = random_models(1, seed=4)[0][0]
    result = centered_clip(models, center, tau=math.inf, iterations=1)
    for name in ("w", "b"):
        expected = np.mean([m[name] for m, _ in models], axis=0)
        np.testing.assert_allclose(result[name], expected, rtol=0, atol=1e-12)


def test_centered_clip_moves_v_at_most_tau_per_iteration() -> None:
    models = random_models(6, seed=5, spread=50.0)
    center = {k: np.zeros_like(v) for k, v in models[0][0].items()}
    tau = 0.7
    previous = flat(center)
    for iterations in (1, 2, 3, 4):
        current = flat(centered_clip(models, center, tau=tau, iterations=iterations))
        assert np.linalg.norm(current - previous) <= tau * (1 + 1e-12)
        previous = current
    # One model alone moves v by exactly tau towards itself (it is far away).
    far = models[0][0]
    step = flat(centered_clip([(far, 1.0)], center, tau=tau, iterations=1))
    assert np.linalg.norm(step) == pytest.approx(tau, rel=1e-12)
    np.testing.assert_allclose(step / tau, flat(far) / np.linalg.norm(flat(far)), rtol=1e-12)


def test_centered_clip_gives_each_far_model_exactly_tau_over_n() -> None:
    # Five models sit on the center (zero deltas), one is far: v moves by tau/6 towards it, per iteration.
    center = {"w": np.zeros(4), "b": np.zeros(2)}
    far = {"w": np.array([3e3, 0.0, 0.0, 4e3]), "b": np.zeros(2)}  # ||far|| = 5e3, over both tensors
    models = [(center, 1.0)] * 5 + [(far, 1.0)]
    result = centered_clip(models, center, tau=1.2, iterations=1)
    np.testing.assert_allclose(result["w"], [0.6 * 0.2, 0.0, 0.0, 0.8 * 0.2], rtol=1e-12)
    np.testing.assert_array_equal(result["b"], [0.0, 0.0])


def test_centered_clip_norm_spans_the_whole_model() -> None:
    # Each tensor's delta has norm 1 <= tau, but the whole model's is sqrt(2) > tau: it is clipped.
    center = {"a": np.zeros(1), "b": np.zeros(1)}
    result = centered_clip([({"a": np.ones(1), "b": np.ones(1)}, 1.0)], center, tau=1.0, iterations=1)
    np.testing.assert_allclose(flat(result), [1 / math.sqrt(2)] * 2, rtol=1e-12)


def test_centered_clip_clips_deltas_too_big_to_square() -> None:
    center = {"w": np.zeros(2)}
    result = centered_clip([({"w": np.array([3e200, 4e200])}, 1.0)], center, tau=1.0, iterations=1)
    np.testing.assert_allclose(result["w"], [0.6, 0.8], rtol=1e-12)


def test_rules_table_uses_own_as_the_center_of_centered_clip_with_the_median_distance_as_radius() -> None:
    models = random_models(6, seed=6, spread=3.0)
    own = models[2][0]
    tau = clip_radius(models, own)
    for name in ("w", "b"):
        np.testing.assert_array_equal(
            ROBUST_RULES["centered_clip"](models, own=own)[name], centered_clip(models, own, tau=tau)[name]
        )
    assert set(ROBUST_RULES) == {"median", "trimmed_mean", "centered_clip"}
    with pytest.raises(TypeError):
        ROBUST_RULES["mean"] = ROBUST_RULES["median"]  # type: ignore[index]


GOOD = {"w": np.zeros(2)}


@pytest.mark.parametrize("rule", [coordinate_median, trimmed_mean, lambda m: centered_clip(m, GOOD)])
@pytest.mark.parametrize(
    ("models", "message"),
    [
        ([], "of no models"),
        ([(GOOD, 1.0), ({"v": np.zeros(2)}, 1.0)], "missing \\['w'\\], unexpected \\['v'\\]"),
        ([(GOOD, 1.0), ({"w": np.zeros(3)}, 1.0)], "tensor 'w': model 1 has float64\\[3\\]"),
        ([(GOOD, 1.0), ({"w": np.zeros(2, np.float32)}, 1.0)], "model 1 has float32\\[2\\]"),
    ],
)
def test_rules_reject_bad_models(rule: Callable[[list], dict], models: list, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        rule(models)


@pytest.mark.parametrize("ratio", [-0.1, 0.5, 0.7, math.nan])
def test_trimmed_mean_rejects_bad_trim_ratio(ratio: float) -> None:
    with pytest.raises(ValueError, match="trim_ratio must be in"):
        trimmed_mean([(GOOD, 1.0)] * 4, trim_ratio=ratio)


@pytest.mark.parametrize(
    ("center", "kwargs", "message"),
    [
        ({"v": np.zeros(2)}, {}, "center has other tensors than model 0"),
        ({"w": np.zeros(2, np.float32)}, {}, "tensor 'w': center has float32\\[2\\], model 0 has float64\\[2\\]"),
        ({"w": np.array([0.0, np.nan])}, {}, "center has non-finite values"),
        (GOOD, {"tau": 0.0}, "tau must be > 0"),
        (GOOD, {"tau": math.nan}, "tau must be > 0"),
        (GOOD, {"iterations": 0}, "iterations must be an int >= 1"),
        (GOOD, {"iterations": 1.5}, "iterations must be an int >= 1"),
    ],
)
def test_centered_clip_rejects_bad_arguments(center: dict, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        centered_clip([(GOOD, 1.0)], center, **kwargs)


def test_clip_radius_is_the_median_distance_from_own_and_never_zero() -> None:
    own = {"w": np.zeros(3, np.float32)}
    at = [{"w": np.array([d, 0, 0], np.float32)} for d in (0.0, 1.0, 2.0, 50.0, np.nan)]
    # own itself (0), 1, 2, a far model (50) and a NaN one (ignored): the median of 0, 1, 2, 50
    assert clip_radius([(m, 1.0) for m in at], own) == pytest.approx(1.5)
    # However far the outlier, it shifts the median by one rank only: 1.5 above, 1 without it.
    assert clip_radius([(m, 1.0) for m in at[:3]], own) == pytest.approx(1.0)
    # Most models equal to own: the median is 0, which would freeze v; the mean distance is used.
    assert clip_radius([(at[0], 1.0), (at[0], 1.0), (at[2], 1.0)], own) == pytest.approx(2 / 3)
    assert clip_radius([(at[0], 1.0)], own) == 1.0  # nothing to measure: the paper's default


def test_the_trimmed_mean_rule_trims_one_bad_model_even_among_few() -> None:
    """trimmed_mean's default ratio trims nothing below 5 models; the rule a node uses always trims one."""
    honest = [({"w": np.array([v, -v])}, 1.0) for v in (0.1, 0.2, 0.3)]
    constant = ({"w": np.array([1.0, 1.0])}, 1.0)
    models = [*honest, constant]
    np.testing.assert_allclose(ROBUST_RULES["trimmed_mean"](models, own=honest[0][0])["w"], [0.25, -0.15])
    np.testing.assert_allclose(trimmed_mean(models)["w"], [0.4, 0.1])  # the default ratio: the plain mean
    np.testing.assert_allclose(ROBUST_RULES["trimmed_mean"](models[1:], own=honest[0][0])["w"], [0.3, -0.2])
    with pytest.raises(ValueError, match="at least 3 models"):
        ROBUST_RULES["trimmed_mean"](models[:2], own=honest[0][0])
