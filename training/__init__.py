"""Training: tasks and their data, partitioners, the local trainer, aggregation math, checkpoints.

Nothing here knows about the network: the node drives a `LocalTrainer` and mixes parameters in
through `add_deltas`. This package must never import `p2p`, `node` or `hivemind`.
"""
