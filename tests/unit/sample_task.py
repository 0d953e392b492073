"""A user task for tests: `TaskSpec(name="tests.unit.sample_task:make")`.

Shows the contract: take the TaskSpec, return (model_factory, TaskData) (or a Task).
"""

import numpy as np
from torch import nn

from training.tasks import Dataset, TaskData, TaskSpec


def make(spec: TaskSpec) -> tuple[object, TaskData]:
    """Two Gaussian blobs in 3-D; this node's rows depend on its partition index."""
    index, count = spec.partition
    rng = np.random.default_rng([spec.seed, index, count])

    def blobs(n: int) -> Dataset:
        y = rng.integers(0, 2, n)
        return Dataset(rng.normal(0, 1, (n, 3)) + 3 * y[:, None], y)

    data = TaskData(train=blobs(40), val=blobs(10), test=blobs(20), num_classes=2, num_features=3)
    return (lambda: nn.Linear(3, 2)), data


def not_a_task(spec: TaskSpec) -> str:
    return "nothing"
