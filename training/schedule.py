"""Learning-rate schedules: pure functions of progress, nanoGPT-style `get_lr`."""

import math


def cosine_lr(step: int, total: int, base_lr: float, final_ratio: float = 0.1) -> float:
    """Cosine decay from base_lr at step 0 to base_lr * final_ratio at step `total` (and after).

    Gossip training needs it more than centralized training: a node ends each round on local steps over
    skewed data, and a smaller final rate shrinks that drift, so the swarm settles on a common model.
    """
    if total <= 0:
        return base_lr
    progress = min(max(step / total, 0.0), 1.0)
    return base_lr * (final_ratio + (1 - final_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))
