"""The small models of the built-in tasks. Factories seed nothing: callers seed torch first."""

from torch import nn


def mlp(n_inputs: int, n_hidden: int, n_classes: int) -> nn.Module:
    """One hidden ReLU layer; outputs logits (the loss applies the softmax)."""
    return nn.Sequential(nn.Linear(n_inputs, n_hidden), nn.ReLU(), nn.Linear(n_hidden, n_classes))


def logistic_regression(n_inputs: int, n_classes: int) -> nn.Module:
    """Multinomial logistic regression: a single linear layer producing logits."""
    return nn.Linear(n_inputs, n_classes)
