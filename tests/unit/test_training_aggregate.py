"""Aggregation math (training/aggregate.py) against analytic answers."""

import numpy as np
import pytest

from training.aggregate import weighted_mean

pytestmark = pytest.mark.timeout(30)


def test_weighted_mean_matches_the_analytic_mean() -> None:
    rng = np.random.default_rng(0)
    models = [({"w": rng.normal(size=(3, 4)), "b": rng.normal(size=4)}, w) for w in (1.0, 2.0, 5.0)]
    result = weighted_mean(models)
    for name in ("w", "b"):
        expected = sum(w * m[name] for m, w in models) / 8.0
        np.testing.assert_allclose(result[name], expected, rtol=0, atol=1e-6)
        assert result[name].dtype == np.float64


def test_weighted_mean_simple_values_and_dtypes() -> None:
    a = {"w": np.array([0.0, 4.0], np.float32), "n": np.array([10], np.int64)}
    b = {"w": np.array([3.0, 0.0], np.float32), "n": np.array([20], np.int64)}
    result = weighted_mean([(a, 1.0), (b, 2.0)])
    assert result["w"].dtype == np.float32 and result["n"].dtype == np.int64
    np.testing.assert_array_equal(result["w"], np.array([2.0, 4.0 / 3.0], np.float32))
    np.testing.assert_array_equal(result["n"], [17])  # 16.67 rounded, not truncated
    # A zero weight drops a model; a single model is returned unchanged.
    np.testing.assert_array_equal(weighted_mean([(a, 0.0), (b, 3.0)])["w"], b["w"])
    np.testing.assert_array_equal(weighted_mean([(a, 0.5)])["w"], a["w"])


def test_float32_sums_are_accumulated_in_float64() -> None:
    # 1000 copies of 0.1f: a float32 running sum drifts; the float64 sum then cast back is exact.
    value = np.full(3, 0.1, np.float32)
    result = weighted_mean([({"w": value}, 1.0)] * 1000)
    np.testing.assert_array_equal(result["w"], value)


@pytest.mark.parametrize(
    ("models", "message"),
    [
        ([], "no models"),
        ([({"w": np.zeros(2)}, 0.0)], "total weight must be positive"),
        ([({"w": np.zeros(2)}, 1.0), ({"w": np.zeros(2)}, -1.0)], "weights must be finite and >= 0"),
        ([({"w": np.zeros(2)}, float("nan"))], "weights must be finite"),
        ([({"w": np.zeros(2)}, 1.0), ({"v": np.zeros(2)}, 1.0)], "missing \\['w'\\], unexpected \\['v'\\]"),
        ([({"w": np.zeros(2)}, 1.0), ({"w": np.zeros(3)}, 1.0)], "tensor 'w': model 1 has float64\\[3\\]"),
        ([({"w": np.zeros(2)}, 1.0), ({"w": np.zeros(2, np.float32)}, 1.0)], "model 1 has float32\\[2\\]"),
    ],
)
def test_weighted_mean_rejects_bad_input(models: list, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        weighted_mean(models)


def test_pairwise_mean_matches_the_analytic_mean_and_is_symmetric() -> None:
    from training.aggregate import pairwise_mean

    rng = np.random.default_rng(3)
    a = {"w": rng.normal(size=(50, 7)).astype(np.float32), "b": rng.normal(size=7).astype(np.float32)}
    b = {"w": rng.normal(size=(50, 7)).astype(np.float32), "b": rng.normal(size=7).astype(np.float32)}
    mixed = pairwise_mean([(a, 1.5), (b, 4.0)])
    for name in a:
        exact = (1.5 * a[name].astype(np.float64) + 4.0 * b[name].astype(np.float64)) / 5.5
        assert mixed[name].dtype == np.float32
        assert np.allclose(mixed[name], exact, rtol=1e-6, atol=1e-7)
        # both peers of an exchange call it with the models the other way round: same bits
        assert np.array_equal(mixed[name], pairwise_mean([(b, 4.0), (a, 1.5)])[name])
    with pytest.raises(ValueError):
        pairwise_mean([(a, 1.0)])
