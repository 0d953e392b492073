"""The local trainer (training/trainer.py): real learning, exact parameter I/O, determinism, locking."""

import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import replace

import numpy as np
import pytest
import torch

from training.tasks import Task, TaskSpec, load_task
from training.trainer import LocalTrainer, TrainerConfig, fingerprint, tensor_specs

pytestmark = pytest.mark.timeout(30)


@pytest.fixture(scope="module")
def digits() -> Task:
    return load_task(TaskSpec(name="digits"))  # partition (0, 1): all training rows


def make_trainer(task: Task, config: TrainerConfig | None = None, init_seed: int = 0) -> LocalTrainer:
    torch.manual_seed(init_seed)
    return LocalTrainer(task.make_model(), task.data, config or TrainerConfig())


def poll_until(condition: Callable[[], bool], timeout_s: float) -> None:
    """Wait for `condition` by polling, failing at the deadline (tests/polling.py is not importable here)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"condition not met within {timeout_s} s"
        time.sleep(0.001)


def assert_same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert list(a) == list(b)
    assert all(np.array_equal(a[k], b[k]) for k in a)


def test_digits_alone_on_all_data_learns(digits: Task) -> None:
    trainer = make_trainer(digits, TrainerConfig(lr=0.05, momentum=0.9))
    before = trainer.evaluate("test")
    trainer.train_steps(300)
    after = trainer.evaluate("test")
    assert before["accuracy"] < 0.3  # an untrained 10-class model is near chance
    assert after["accuracy"] >= 0.9
    assert after["loss"] < before["loss"] / 3
    assert trainer.steps_done == 300


def test_train_steps_defaults_to_local_steps_and_returns_mean_loss(digits: Task) -> None:
    trainer = make_trainer(digits, TrainerConfig(local_steps=7))
    loss = trainer.train_steps()
    assert trainer.steps_done == 7
    assert 1.0 < loss < 2.5  # cross-entropy of a barely trained 10-class model, near ln 10 = 2.30


def test_evaluate_does_not_change_params(digits: Task) -> None:
    trainer = make_trainer(digits)
    trainer.train_steps(5)
    before = trainer.named_arrays()
    for split in ("train", "val", "test"):
        result = trainer.evaluate(split)
        assert set(result) == {"loss", "accuracy"} and 0.0 <= result["accuracy"] <= 1.0
    assert_same(before, trainer.named_arrays())
    assert trainer.model.training  # back in training mode
    with pytest.raises(ValueError, match="split must be one of"):
        trainer.evaluate("holdout")


def test_named_arrays_load_arrays_round_trip(digits: Task) -> None:
    source, target = make_trainer(digits, init_seed=1), make_trainer(digits, init_seed=2)
    source.train_steps(10)
    arrays = source.named_arrays()
    assert list(arrays) == list(source.model.state_dict())
    assert all(isinstance(a, np.ndarray) and a.dtype == np.float32 for a in arrays.values())
    arrays["0.bias"][:] = 7.0  # a copy: editing it must not touch the model
    assert not np.any(source.named_arrays()["0.bias"] == 7.0)
    target.load_arrays(source.named_arrays())
    assert_same(target.named_arrays(), source.named_arrays())
    assert target.evaluate("test") == source.evaluate("test")


def test_load_arrays_rejects_mismatches_and_changes_nothing(digits: Task) -> None:
    trainer = make_trainer(digits)
    good = trainer.named_arrays()
    fresh = {k: np.zeros_like(v) for k, v in good.items()}
    bad_cases = [
        ({k: v for k, v in fresh.items() if k != "2.bias"}, "missing \\['2.bias'\\]"),
        ({**fresh, "extra": np.zeros(1, np.float32)}, "unexpected \\['extra'\\]"),
        (
            {**fresh, "2.bias": np.zeros(11, np.float32)},
            "tensor '2.bias': got float32\\[11\\], the model has float32\\[10\\]",
        ),
        ({**fresh, "0.weight": fresh["0.weight"].astype(np.float64)}, "got float64\\[128, 64\\]"),
    ]
    for arrays, message in bad_cases:
        with pytest.raises(ValueError, match=message):
            trainer.load_arrays(arrays)
    assert_same(trainer.named_arrays(), good)


def test_add_deltas_adds_exactly(digits: Task) -> None:
    trainer = make_trainer(digits)
    before = trainer.named_arrays()
    rng = np.random.default_rng(0)
    deltas = {k: rng.normal(0, 0.1, v.shape).astype(np.float32) for k, v in before.items() if k != "2.bias"}
    trainer.add_deltas(deltas)
    after = trainer.named_arrays()
    for name in before:
        expected = before[name] + deltas[name] if name in deltas else before[name]
        assert np.array_equal(after[name], expected), name  # float32 + float32, same rounding as numpy
    with pytest.raises(ValueError, match="unknown tensor names: \\['nope'\\]"):
        trainer.add_deltas({"nope": np.zeros(1, np.float32)})
    with pytest.raises(ValueError, match="got float64"):
        trainer.add_deltas({"2.bias": np.zeros(10)})
    assert_same(trainer.named_arrays(), after)


def test_fingerprint_is_about_architecture_not_values(digits: Task) -> None:
    a, b = make_trainer(digits, init_seed=1).named_arrays(), make_trainer(digits, init_seed=2).named_arrays()
    assert not np.array_equal(a["0.weight"], b["0.weight"])
    assert fingerprint(a) == fingerprint(b) == fingerprint(tensor_specs(a))
    assert fingerprint(dict(reversed(list(a.items())))) == fingerprint(a)  # order does not matter
    assert len(fingerprint(a)) == 16 and int(fingerprint(a), 16) >= 0
    torch.manual_seed(0)
    other = load_task(TaskSpec(name="breast_cancer")).make_model().state_dict()
    assert fingerprint({k: v.numpy() for k, v in other.items()}) != fingerprint(a)
    assert fingerprint({**a, "2.bias": a["2.bias"].astype(np.float64)}) != fingerprint(a)
    assert tensor_specs({"w": np.zeros((2, 3), np.float32)}) == [("w", "float32", (2, 3))]


@pytest.mark.parametrize("config", [TrainerConfig(), TrainerConfig(optimizer="adam", lr=1e-3, batch_size=500)])
def test_training_is_deterministic_for_a_seed(digits: Task, config: TrainerConfig) -> None:
    runs = []
    for batch_seed in (0, 0, 1):
        trainer = make_trainer(digits, replace(config, seed=batch_seed))
        losses = [trainer.train_steps(10) for _ in range(3)]
        runs.append((losses, trainer.named_arrays()))
    assert runs[0][0] == runs[1][0]
    assert_same(runs[0][1], runs[1][1])
    assert not np.array_equal(runs[0][1]["0.weight"], runs[2][1]["0.weight"])


def test_resumed_trainer_continues_the_batch_stream(digits: Task) -> None:
    # Plain SGD has no optimizer state, so weights + steps_done are the whole training state.
    straight = make_trainer(digits)
    straight.train_steps(60)
    first = make_trainer(digits)
    first.train_steps(25)
    resumed = LocalTrainer(digits.make_model(), digits.data, TrainerConfig())
    resumed.load_arrays(first.named_arrays())
    resumed.steps_done = first.steps_done
    resumed.train_steps(35)
    assert_same(resumed.named_arrays(), straight.named_arrays())


def test_mixing_lands_between_steps_while_training(digits: Task) -> None:
    trainer = make_trainer(digits)
    total_steps = 2000  # ~0.5 s: far longer than one mixing call takes to get the lock
    worker = threading.Thread(target=trainer.train_steps, args=(total_steps,))
    worker.start()
    try:
        poll_until(lambda: trainer.steps_done >= 5, timeout_s=10)
        trainer.add_deltas({name: np.zeros_like(a) for name, a in trainer.named_arrays().items()})
        mixed_at = trainer.steps_done
    finally:
        worker.join(timeout=20)
    assert not worker.is_alive()
    assert mixed_at < total_steps  # the lock is taken per step, not for the whole call
    assert trainer.steps_done == total_steps


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"optimizer": "rmsprop"}, "optimizer must be one of"),
        ({"lr": 0.0}, "lr must be a positive number"),
        ({"local_steps": 0}, "local_steps must be >= 1"),
        ({"batch_size": 0}, "batch_size must be >= 1"),
        ({"momentum": 1.0}, "momentum must be in"),
    ],
)
def test_trainer_config_rejects_bad_values(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TrainerConfig(**kwargs)


def test_cosine_lr_decays_from_base_to_the_final_ratio() -> None:
    from training.schedule import cosine_lr

    assert cosine_lr(0, 100, 0.05) == pytest.approx(0.05)
    assert cosine_lr(50, 100, 0.05) == pytest.approx(0.05 * 0.55)
    assert cosine_lr(100, 100, 0.05) == pytest.approx(0.005)
    assert cosine_lr(500, 100, 0.05) == pytest.approx(0.005)
    lrs = [cosine_lr(s, 100, 0.05) for s in range(101)]
    assert all(a >= b for a, b in itertools.pairwise(lrs))
