"""The main job: train on local data, average with a peer, repeat.

This is the one place where training (torch, in worker threads) meets the network (the gossip
exchange, in the event loop). `ModelStateAdapter` lets the exchange read and mix the trainer's
parameters as numpy arrays without knowing torch.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from node.claims import NoFreePart, claim_partition
from node.config import NodeConfig, TrainingConfig
from node.metrics_log import METRICS_FILE, MetricsLog
from p2p.aio import wait_stopped
from p2p.exchange import ExchangeRecord, GossipExchange, Outcome, Snapshot
from p2p.membership import Membership, Peer
from p2p.wire import specs_of
from training.aggregate import ROBUST_RULES
from training.checkpoint import load_checkpoint, save_checkpoint
from training.errors import TaskError
from training.schedule import cosine_lr
from training.tasks import Task, TaskSpec, load_task
from training.trainer import LocalTrainer, TrainerConfig, fingerprint

log = logging.getLogger("fedswarm.learner")

PEERS_TRIED_PER_ROUND = 3
IDLE_WAIT_S = 0.5  # with nobody to average with and nothing to train, do not spin
WAIT_POLL_S = 0.5  # membership polls while waiting for min_peers
DONE_REFRESH_S = 1.0  # how often a finished node re-scores a model that peers keep averaging into
SETTLE_MAX_S = 30.0  # the final gossip-only exchanges give up after this long
GATE_LOSS_FLOOR = 0.1  # nats: the gate never compares against a loss below this
RETRY_MAX_S = 30.0  # longest pause before retrying a peer whose exchanges failed


def task_spec(cfg: TrainingConfig, partition: tuple[int, int] | None = None) -> TaskSpec:
    """`partition` overrides cfg.partition (needed when that is "auto/n": see resolve_partition)."""
    return TaskSpec(
        name=cfg.task,
        csv=Path(cfg.data) if cfg.data else None,
        label_column=cfg.label_column,
        partition=partition or cfg.partition_pair,
        alpha=cfg.alpha or None,
        seed=cfg.seed,
    )


def resolve_partition(cfg: TrainingConfig, peer_id: str) -> tuple[int, int]:
    """i/n as configured, or for "auto/n" the part this node claims in the shared claim_dir."""
    index, count = cfg.partition_pair
    if index is not None:
        return index, count
    if not cfg.claim_dir:
        raise TaskError("partition auto/n needs claim_dir: a directory shared by the replicas")
    try:
        index = claim_partition(Path(cfg.claim_dir), count, peer_id)
    except (NoFreePart, OSError) as e:
        raise TaskError(str(e)) from e
    log.info("claimed part %d of %d in %s", index, count, cfg.claim_dir)
    return index, count


def trainer_config(cfg: TrainingConfig) -> TrainerConfig:
    return TrainerConfig(
        local_steps=cfg.local_steps,
        batch_size=cfg.batch_size,
        optimizer=cfg.optimizer,
        lr=cfg.lr,
        momentum=cfg.momentum,
        seed=cfg.seed,
    )


def build_trainer(cfg: TrainingConfig, task: Task) -> LocalTrainer:
    torch.manual_seed(cfg.init_seed)  # same seed on every node => every node starts from one model
    return LocalTrainer(task.make_model(), task.data, trainer_config(cfg))


class ModelStateAdapter:
    """The trainer's parameters, weight and round as the gossip exchange sees them."""

    def __init__(self, trainer: LocalTrainer, weight: float, round_: int):
        self.trainer = trainer
        self.weight = weight
        self.round = round_
        arrays = trainer.named_arrays()
        self.version = 0  # counts applied exchanges: tells the learner its metrics went stale
        self.specs = specs_of(arrays)
        self.fingerprint = fingerprint(arrays)

    def snapshot(self) -> Snapshot:
        return Snapshot(self.trainer.named_arrays(), self.weight, self.round)

    def apply(self, before: Snapshot, mixed: dict[str, np.ndarray], weight: float) -> None:
        # mixed - before, not mixed: keep whatever the trainer learnt while the exchange ran
        self.trainer.add_deltas({name: mixed[name] - before.arrays[name] for name in mixed})
        self.weight = weight
        self.version += 1


@dataclass
class Progress:
    round: int = 0
    done: bool = False
    train_loss: float | None = None
    val: dict[str, float] = field(default_factory=dict)
    test: dict[str, float] = field(default_factory=dict)
    started_from: str = "init"  # "init" | "checkpoint" | "peer <id>"
    start_test: dict[str, float] = field(default_factory=dict)  # test metrics of the model we started from


class Learner:
    def __init__(self, config: NodeConfig, membership: Membership, host_peer_id: str):
        self.config = config
        self.cfg = config.training
        self.membership = membership
        self.peer_id = host_peer_id
        torch.set_num_threads(self.cfg.torch_threads)
        self.task = load_task(task_spec(self.cfg, resolve_partition(self.cfg, host_peer_id)))
        self.trainer = build_trainer(self.cfg, self.task)
        self.state = ModelStateAdapter(self.trainer, self.cfg.weight, 0)
        self.progress = Progress()
        self.exchange: GossipExchange | None = None
        self.checkpoint_dir = config.data_dir / "checkpoint"
        self._retry_at: dict[str, tuple[float, float]] = {}  # peer -> (monotonic time, current delay)
        self.history = MetricsLog(config.data_dir / METRICS_FILE)
        self.ready = self.cfg.min_peers == 0  # see wait_for_peers

    # --- what the node shows ----------------------------------------------------------------------

    def membership_info(self) -> dict[str, Any]:
        return {
            "round": self.state.round,
            "fingerprint": self.state.fingerprint,
            "done": self.progress.done,
            "ready": self.ready,
        }

    def status(self) -> dict[str, Any]:
        return {
            "task": self.cfg.task,
            "round": self.state.round,
            "rounds": self.cfg.rounds,
            "done": self.progress.done,
            "weight": self.state.weight,
            "model_fingerprint": self.state.fingerprint,
            "started_from": self.progress.started_from,
            "start_test": dict(self.progress.start_test),
            # loss and accuracy on the local validation split; train_loss is the last rounds' mean batch loss
            "train": {**self.progress.val, "train_loss": self.progress.train_loss},
            "test": dict(self.progress.test),
            "exchanges": self.exchange.stats.as_json() if self.exchange else {o.value: 0 for o in Outcome},
        }

    # --- start: resume, or copy a live peer, or start fresh -------------------------------------

    def resume(self) -> bool:
        """Load the last checkpoint of this data dir, if any. Raises CheckpointError if it is corrupt."""
        found = load_checkpoint(self.checkpoint_dir)
        if found is None:
            return False
        arrays, meta = found
        if meta.get("fingerprint") != self.state.fingerprint:
            raise ValueError(
                f"the checkpoint in {self.checkpoint_dir} is for another model "
                f"(fingerprint {meta.get('fingerprint')!r}, task {meta.get('task')!r}); move it away or fix 'task'"
            )
        self.trainer.load_arrays(arrays)
        self.state.weight = float(meta["weight"])
        self.state.round = int(meta["round"])
        self.trainer.steps_done = int(meta.get("steps_done", 0))  # continue the same batch order
        self.progress.round = self.state.round
        self.progress.started_from = "checkpoint"
        log.info("resumed from checkpoint at round %d (weight %.4g)", self.state.round, self.state.weight)
        return True

    async def start_from_peer(self, stop: asyncio.Event) -> None:
        """A newcomer to a swarm that is already training copies a live peer's model first."""
        if not (self.config.p2p.join or self.config.p2p.join_file) or self.cfg.pull_wait_s <= 0:
            return
        deadline = time.monotonic() + self.cfg.pull_wait_s
        while time.monotonic() < deadline and not stop.is_set():
            candidates = [p for p in self._partners() if int(p.record.info.get("round", 0)) > 0]
            for peer in sorted(candidates, key=lambda p: -int(p.record.info.get("round", 0))):
                snap = await self.exchange.pull(peer.peer_id, peer.record.addrs)
                if snap is not None:
                    await asyncio.to_thread(self.trainer.load_arrays, snap.arrays)
                    self.state.round = snap.round
                    self.progress.started_from = f"peer {peer.peer_id}"
                    await self.measure_start()
                    log.info("starting from the model of %s at round %d", peer.peer_id, snap.round)
                    return
            if self.membership.peers():
                return  # peers are there but none has trained yet: start together from the init
            await asyncio.sleep(0.25)
        log.info(
            "no live peer to copy a model from within %.0f s; starting from the initial model", self.cfg.pull_wait_s
        )

    # --- the loop ---------------------------------------------------------------------------------

    async def wait_for_peers(self, stop: asyncio.Event) -> None:
        """Hold the first round until `min_peers` peers are live and ready too, so a swarm starts
        training together (otherwise the first node runs through its rounds mixing with idle models).

        A node is ready once it sees `min_peers` peers; it says so in its membership record at once.
        """
        want = self.cfg.min_peers
        logged = None
        while not stop.is_set():
            peers = self.membership.peers()
            if not self.ready and len(peers) >= want:
                self.ready = True
                await self.membership.publish()  # now, not at the next refresh
            ready = [p for p in peers if p.record.info.get("ready") or int(p.record.info.get("round", 0)) > 0]
            if self.ready and len(ready) >= want:
                return
            if (len(peers), len(ready)) != logged:
                log.info("waiting for peers before training: %d live, %d ready, want %d", len(peers), len(ready), want)
                logged = (len(peers), len(ready))
            await wait_stopped(stop, WAIT_POLL_S)
            await self.membership.poll()

    def vet(self, arrays: dict[str, np.ndarray]) -> str | None:
        """The validation gate (a local vote, no stake or chain): a reason to refuse a peer's model, or None.

        Runs in a worker thread during an exchange. A floor on our own loss keeps a well-trained node from
        refusing honest peers whose loss is merely a little higher on our (skewed) data.
        """
        if self.cfg.gate_factor <= 0:
            return None
        ours = self.trainer.evaluate("val")["loss"]
        theirs = self.trainer.evaluate_arrays(arrays, "val")["loss"]
        if not theirs <= self.cfg.gate_factor * max(ours, GATE_LOSS_FLOOR):  # NaN counts as refused
            return f"its validation loss {theirs:.3g} exceeds {self.cfg.gate_factor:g} x ours ({ours:.3g})"
        return None

    def record_exchange(self, record: ExchangeRecord) -> None:
        """Exchange hook: every finished exchange, either role, goes to the history."""
        self.history.append(
            "exchange",
            round=self.state.round,
            peer=record.peer_id,
            role=record.role,
            outcome=record.outcome.value,
            bytes=record.bytes_sent,
            duration_s=round(record.duration_s, 4),
            reason=record.reason[:200],
        )

    def _record_round(self) -> None:
        val, test = self.progress.val, self.progress.test
        self.history.append(
            "round",
            round=self.state.round,
            train_loss=self.progress.train_loss,
            val_loss=val.get("loss"),
            val_accuracy=val.get("accuracy"),
            test_loss=test.get("loss"),
            test_accuracy=test.get("accuracy"),
            weight=self.state.weight,
            peers=len(self.membership.peers()),
        )

    async def measure_start(self) -> None:
        """Score the model we start from, before peers can average into it (see Node._start_learner)."""
        await self._evaluate()
        self.progress.start_test = dict(self.progress.test)

    async def run(self, stop: asyncio.Event) -> None:
        await self._evaluate()
        self.history.append(
            "start",
            peer_id=self.peer_id,
            swarm=self.config.swarm,
            task=self.cfg.task,
            started_from=self.progress.started_from,
            round=self.state.round,
        )
        self._record_round()
        await self.wait_for_peers(stop)
        while not stop.is_set() and (self.cfg.rounds == 0 or self.state.round < self.cfg.rounds):
            if self.cfg.train and self.cfg.local_steps > 0:
                if self.cfg.rounds:
                    self.trainer.set_lr(cosine_lr(self.state.round, self.cfg.rounds, self.cfg.lr))
                self.progress.train_loss = await asyncio.to_thread(self.trainer.train_steps)
            exchanged = await self._average_once()
            if not exchanged and not self.cfg.train:
                await asyncio.sleep(IDLE_WAIT_S)
                continue  # gossip-only: a round is an exchange
            self.state.round += 1
            await self._rescore()
            if self.state.round % self.cfg.checkpoint_every == 0:
                await self.save()
        if stop.is_set():
            return
        await self._settle(stop)
        self.progress.done = True
        await self.save()
        log.info(
            "finished %d rounds: test accuracy %.4f; still answering peers until stopped",
            self.state.round,
            self.progress.test.get("accuracy", float("nan")),
        )
        # Peers may still average with us: keep the shown metrics true to the model we hold.
        seen = self.state.version
        while not await wait_stopped(stop, DONE_REFRESH_S):
            if self.state.version != seen:
                seen = self.state.version
                await self._rescore()  # the history's last word is the model we hold, not the last round

    async def _settle(self, stop: asyncio.Event) -> None:
        """After the last round, average a few more times without training: each round ends on a local
        step on skewed data, and a node should not finish on that drift but on the swarm's mix."""
        done, deadline = 0, time.monotonic() + SETTLE_MAX_S
        while done < self.cfg.final_exchanges and time.monotonic() < deadline and not stop.is_set():
            if await self._average_once():
                done += 1
            elif not self._partners():
                break  # alone: nothing to settle with
            else:
                await wait_stopped(stop, IDLE_WAIT_S)
        if done:
            await self._rescore()

    def _partners(self) -> list[Peer]:
        return [
            p
            for p in self.membership.peers()
            if p.record.info.get("fingerprint", self.state.fingerprint) == self.state.fingerprint
        ]

    async def _average_once(self) -> bool:
        """One averaging step: a robust pull-and-combine if configured, else a pairwise exchange."""
        return await (self._robust_round() if self.cfg.robust else self._exchange_once())

    async def _robust_round(self) -> bool:
        """Pull up to robust_k peers' models and move ours to a robust combination of them and ours.

        One-sided: only this node changes, and no weight is conserved (a robust rule is not a mean), so
        a poisoned peer can at most be outvoted or clipped, never mixed in at full weight.
        """
        peers = self._partners()
        random.shuffle(peers)
        pulled = []
        for peer in peers[: self.cfg.robust_k]:
            snap = await self.exchange.pull(peer.peer_id, peer.record.addrs)
            if snap is not None and (reason := await asyncio.to_thread(self.vet, snap.arrays)) is None:
                pulled.append(snap.arrays)
            elif snap is not None:
                log.warning("robust round: refused the model of %s: %s", peer.peer_id, reason)
        if not pulled:
            return False
        before = await asyncio.to_thread(self.state.snapshot)
        rule = ROBUST_RULES[self.cfg.robust]
        models = [(before.arrays, 1.0)] + [(arrays, 1.0) for arrays in pulled]
        combined = await asyncio.to_thread(rule, models, own=before.arrays)
        await asyncio.to_thread(self.state.apply, before, combined, self.state.weight)
        return True

    async def _exchange_once(self) -> bool:
        """Average with one peer: random, preferring those not averaged with recently."""
        now = time.monotonic()
        peers = [p for p in self._partners() if self._retry_at.get(p.peer_id, (0.0, 0.0))[0] <= now]
        if not peers:
            return False
        last_ok = self.exchange.stats.last_ok_at
        random.shuffle(peers)
        peers.sort(key=lambda p: last_ok.get(p.peer_id, 0.0))  # stable: random among equals
        for peer in peers[:PEERS_TRIED_PER_ROUND]:
            if peer.peer_id not in {p.peer_id for p in self.membership.peers()}:
                continue  # it left (or we lost it) while we tried another
            outcome = await self.exchange.exchange(peer.peer_id, peer.record.addrs)
            if outcome is Outcome.OK:
                self._retry_at.pop(peer.peer_id, None)
                return True
            if outcome in (Outcome.FAILED, Outcome.REJECTED):
                # A dead or misbehaving peer stays in the member table until its record lapses: do not
                # hammer it every round meanwhile (busy peers are fine to retry at once).
                delay = min(max(self._retry_at.get(peer.peer_id, (0.0, 0.5))[1] * 2, 1.0), RETRY_MAX_S)
                self._retry_at[peer.peer_id] = (time.monotonic() + delay, delay)
        return False

    async def _rescore(self) -> None:
        """Score the model we hold now and append it to the history."""
        await self._evaluate()
        self._record_round()

    async def _evaluate(self) -> None:
        self.progress.val = await asyncio.to_thread(self.trainer.evaluate, "val")
        self.progress.test = await asyncio.to_thread(self.trainer.evaluate, "test")

    async def save(self) -> None:
        snap = await asyncio.to_thread(self.state.snapshot)
        meta = {
            "round": snap.round,
            "weight": snap.weight,
            "fingerprint": self.state.fingerprint,
            "task": self.cfg.task,
            "peer_id": self.peer_id,
            "steps_done": self.trainer.steps_done,
            "done": self.progress.done,
            "test": self.progress.test,
            "config": {k: getattr(self.cfg, k) for k in self.cfg.__dataclass_fields__},
        }
        await asyncio.to_thread(save_checkpoint, self.checkpoint_dir, snap.arrays, meta)
