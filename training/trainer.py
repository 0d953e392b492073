"""The local trainer: N optimizer steps on this node's data between gossip exchanges.

The node runs `train_steps` on a worker thread while the network thread reads the parameters
(`named_arrays`) and mixes peers' parameters in (`add_deltas`). `lock` serialises the two: it is
held for each single optimizer step, never for a whole round, so mixing waits at most one step.

Batches are drawn from an endless stream of epochs, epoch e being a permutation of the training
rows seeded from (config.seed, e). Batch k is therefore a pure function of the seed and k: a
trainer resumed with `steps_done = k` sees exactly the batches it would have seen.
"""

import math
import threading
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from training.specs import TensorSpec, fingerprint, tensor_specs
from training.tasks import Dataset, TaskData

__all__ = ["LocalTrainer", "TensorSpec", "TrainerConfig", "fingerprint", "tensor_specs"]

OPTIMIZERS = ("sgd", "adam")
EVAL_BATCH_ROWS = 8192  # evaluate in chunks so a large CSV's val split does not need one huge tensor


@dataclass(frozen=True, kw_only=True)
class TrainerConfig:
    """Local training settings. Invalid values raise ValueError naming the setting."""

    local_steps: int = 20  # optimizer steps per round (between exchanges)
    batch_size: int = 32  # rows per step
    optimizer: str = "sgd"  # "sgd" | "adam"
    lr: float = 0.05  # learning rate
    momentum: float = 0.0  # SGD momentum; ignored by Adam
    seed: int = 0  # seeds the batch order (not the model's initial weights)

    def __post_init__(self) -> None:
        if self.local_steps < 1:
            raise ValueError(f"local_steps must be >= 1, got {self.local_steps}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a positive number, got {self.lr}")
        if not 0.0 <= self.momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")


class LocalTrainer:
    """Trains `model` on `data.train`; evaluates on any split; reads and writes parameters as numpy.

    One thread may call `train_steps`; any other thread may call the other methods meanwhile.
    """

    def __init__(self, model: nn.Module, data: TaskData, config: TrainerConfig) -> None:
        self.model = model
        self.data = data
        self.config = config
        self.lock = threading.Lock()
        self.steps_done = 0  # set it when resuming from a checkpoint: the batch stream continues
        # torch.from_numpy shares memory with the task's arrays: no copy, and nothing writes to them.
        self._splits = {name: _tensors(getattr(data, name)) for name in ("train", "val", "test")}
        self._optimizer = _make_optimizer(model, config)
        self._epoch = -1
        self._order = torch.empty(0, dtype=torch.int64)
        model.train()

    def train_steps(self, n: int | None = None) -> float:
        """Run n optimizer steps (default config.local_steps); return their mean training loss (nats)."""
        n = self.config.local_steps if n is None else n
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        x_all, y_all = self._splits["train"]
        total = 0.0
        for _ in range(n):
            rows = self._batch_rows(self.steps_done)
            x, y = x_all[rows], y_all[rows]
            with self.lock:  # per step, so a mixing thread can get in between steps
                loss = F.cross_entropy(self.model(x), y)
                self._optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self._optimizer.step()
                self.steps_done += 1
            total += loss.item()
        return total / n

    @torch.no_grad()
    def set_lr(self, lr: float) -> None:
        """Change the learning rate from the next step on (schedules live in training/schedule.py)."""
        for group in self._optimizer.param_groups:
            group["lr"] = lr

    def evaluate(self, split: str = "val") -> dict[str, float]:
        """Mean cross-entropy loss (nats) and accuracy (0..1) on "train", "val" or "test".

        An empty split gives NaN for both.
        """
        return self._score(split, None)

    def evaluate_arrays(self, arrays: Mapping[str, np.ndarray], split: str = "val") -> dict[str, float]:
        """Score another model of the same architecture (a peer's) on our split, without loading it."""
        _check_like(self.model.state_dict(), arrays)
        return self._score(split, {name: _as_tensor(a) for name, a in arrays.items()})

    def _score(self, split: str, params: dict[str, torch.Tensor] | None) -> dict[str, float]:
        if split not in self._splits:
            raise ValueError(f"split must be one of {sorted(self._splits)}, got {split!r}")
        x_all, y_all = self._splits[split]
        loss_sum, correct = 0.0, 0
        with self.lock, torch.no_grad():
            self.model.eval()
            try:
                for start in range(0, len(y_all), EVAL_BATCH_ROWS):
                    x, y = x_all[start : start + EVAL_BATCH_ROWS], y_all[start : start + EVAL_BATCH_ROWS]
                    logits = self.model(x) if params is None else torch.func.functional_call(self.model, params, (x,))
                    loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
                    correct += int((logits.argmax(dim=1) == y).sum())
            finally:
                self.model.train()
        rows = len(y_all)
        if rows == 0:
            return {"loss": math.nan, "accuracy": math.nan}
        return {"loss": loss_sum / rows, "accuracy": correct / rows}

    def named_arrays(self) -> dict[str, np.ndarray]:
        """Copies of every parameter and buffer, in state_dict order, as numpy arrays."""
        with self.lock:
            return {name: t.detach().cpu().numpy().copy() for name, t in self.model.state_dict().items()}

    def load_arrays(self, arrays: Mapping[str, np.ndarray]) -> None:
        """Set every parameter and buffer to `arrays` exactly.

        Raises ValueError, changing nothing, if the names, shapes or dtypes differ from the model's.
        """
        with self.lock:
            state = self.model.state_dict()
            if set(arrays) != set(state):
                missing, extra = sorted(set(state) - set(arrays)), sorted(set(arrays) - set(state))
                raise ValueError(f"tensor names differ from the model's: missing {missing}, unexpected {extra}")
            _check_like(state, arrays)
            with torch.no_grad():
                for name, tensor in state.items():
                    tensor.copy_(_as_tensor(arrays[name]))

    def add_deltas(self, deltas: Mapping[str, np.ndarray]) -> None:
        """params += delta for each named tensor (a subset of the model's names is allowed).

        This is how gossip mixing lands while training continues. Raises ValueError, changing
        nothing, on an unknown name or a shape or dtype that differs from the model's.
        """
        with self.lock:
            state = self.model.state_dict()
            unknown = sorted(set(deltas) - set(state))
            if unknown:
                raise ValueError(f"unknown tensor names: {unknown}")
            _check_like(state, deltas)
            with torch.no_grad():
                for name, delta in deltas.items():
                    state[name].add_(_as_tensor(delta))

    def _batch_rows(self, step: int) -> torch.Tensor:
        """Row indices of batch `step`: positions [step*B, (step+1)*B) of the epoch stream."""
        n_rows, batch = len(self.data.train), self.config.batch_size
        pieces = []
        position = step * batch
        while batch > 0:
            epoch, offset = divmod(position, n_rows)
            if epoch != self._epoch:
                generator = torch.Generator().manual_seed(_epoch_seed(self.config.seed, epoch))
                self._order = torch.randperm(n_rows, generator=generator)
                self._epoch = epoch
            piece = self._order[offset : offset + batch]
            pieces.append(piece)
            position += len(piece)
            batch -= len(piece)
        return pieces[0] if len(pieces) == 1 else torch.cat(pieces)


def _check_like(state: Mapping[str, torch.Tensor], arrays: Mapping[str, np.ndarray]) -> None:
    for name, array in arrays.items():
        expected = state[name]
        array = np.asarray(array)
        expected_dtype = torch.empty(0, dtype=expected.dtype).numpy().dtype
        if array.shape != tuple(expected.shape) or array.dtype != expected_dtype:
            raise ValueError(
                f"tensor {name!r}: got {array.dtype.name}{list(array.shape)}, "
                f"the model has {expected_dtype.name}{list(expected.shape)}"
            )


def _as_tensor(array: np.ndarray) -> torch.Tensor:
    # torch.from_numpy warns on read-only arrays (np.frombuffer views, broadcasts) and needs
    # positive strides; a private copy of those is cheap at these model sizes.
    array = np.asarray(array)
    if not (array.flags.writeable and array.flags.c_contiguous):
        array = np.array(array, order="C")
    return torch.from_numpy(array)


def _tensors(data: Dataset) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.from_numpy(data.X), torch.from_numpy(data.y)


def _make_optimizer(model: nn.Module, config: TrainerConfig) -> torch.optim.Optimizer:
    if config.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=config.lr)
    return torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum)


def _epoch_seed(seed: int, epoch: int) -> int:
    # Seeds of neighbouring (seed, epoch) pairs must not collide: mix them through SeedSequence.
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1, dtype=np.uint64)[0] >> 1)
