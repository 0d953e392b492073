"""Scoring a finished testnet: each node's final checkpoint on the common test split, and baselines."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from node.config import TrainingConfig
from node.learner import build_trainer, task_spec, trainer_config
from training.baselines import epochs_of, train_alone, train_centralized
from training.checkpoint import load_checkpoint
from training.tasks import load_task


def _training_config(options: Any, index: int) -> TrainingConfig:
    return TrainingConfig(
        task=options.task,
        partition=f"{index}/{options.nodes}",
        alpha=options.alpha,
        seed=options.seed,
        rounds=options.rounds,
        local_steps=options.local_steps,
        lr=options.lr,
    )


def score_testnet(options: Any, data_dirs: list[Path], peer_ids: list[str], exchanges: list[int], say) -> dict:
    nodes = []
    for i, data_dir in enumerate(data_dirs):
        cfg = _training_config(options, i)
        task = load_task(task_spec(cfg))
        trainer = build_trainer(cfg, task)
        found = load_checkpoint(data_dir / "checkpoint")
        if found is None:
            raise RuntimeError(f"node-{i} left no checkpoint in {data_dir}")
        trainer.load_arrays(found[0])
        node = {"peer_id": peer_ids[i], "accuracy": trainer.evaluate("test")["accuracy"], "exchanges_ok": exchanges[i]}
        if options.baseline:
            say(f"baseline: node-{i} alone on its own data ...")
            alone = train_alone(task, trainer_config(cfg), options.rounds, seed=cfg.init_seed)
            node["local_only_accuracy"] = alone.evaluate("test")["accuracy"]
        nodes.append(node)
    result: dict[str, Any] = {"nodes": nodes, "centralized_accuracy": None}
    if options.baseline:
        cfg = _training_config(options, 0)
        # the centralized model sees all the data for as many epochs as an average node did on its part
        epochs = statistics.fmean(
            epochs_of(load_task(task_spec(_training_config(options, i))), trainer_config(cfg), options.rounds)
            for i in range(options.nodes)
        )
        say(f"baseline: centralized on all data, {epochs:.1f} epochs ...")
        central = train_centralized(task_spec(cfg), trainer_config(cfg), epochs, seed=cfg.init_seed)
        result["centralized_accuracy"] = central.evaluate("test")["accuracy"]
    return result
