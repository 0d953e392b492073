"""Baselines that say whether swarm training is worth it, on the same test split:

- train_alone: a node trains only on its own part, for as many steps as it would in the swarm;
- train_centralized: one trainer sees all training rows, for the same number of epochs.

A swarm run should land near the centralized accuracy and above the alone accuracy.
"""

import math

import torch

from training.tasks import Task, TaskSpec, load_full_task
from training.trainer import LocalTrainer, TrainerConfig


def train_alone(task: Task, config: TrainerConfig, rounds: int, seed: int) -> LocalTrainer:
    """rounds * config.local_steps steps on the node's own train split; evaluate it on "test".

    `seed` seeds the model's initial weights; config.seed orders the batches.
    """
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    trainer = LocalTrainer(_fresh_model(task, seed), task.data, config)
    trainer.train_steps(rounds * config.local_steps)
    return trainer


def train_centralized(spec: TaskSpec, config: TrainerConfig, epochs: float, seed: int) -> LocalTrainer:
    """Train on ALL training rows (load_full_task) for `epochs` passes: ceil(epochs * rows / batch) steps.

    `seed` seeds the model's initial weights; config.seed orders the batches.
    """
    if not (math.isfinite(epochs) and epochs > 0):
        raise ValueError(f"epochs must be a positive number, got {epochs}")
    task = load_full_task(spec)
    trainer = LocalTrainer(_fresh_model(task, seed), task.data, config)
    trainer.train_steps(math.ceil(epochs * len(task.data.train) / config.batch_size))
    return trainer


def epochs_of(task: Task, config: TrainerConfig, rounds: int) -> float:
    """Passes over the node's train split that `rounds` rounds make: rounds*local_steps*batch/rows."""
    return rounds * config.local_steps * config.batch_size / len(task.data.train)


def _fresh_model(task: Task, seed: int) -> torch.nn.Module:
    # fork_rng: seed the initial weights without touching the caller's global torch RNG.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return task.make_model()
