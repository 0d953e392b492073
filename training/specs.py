"""Tensor specs and architecture fingerprints: pure numpy, shared by the trainer and checkpoints.

A spec is (name, dtype name, shape). Two nodes can train together only if their models have the
same specs; the fingerprint lets them check that with 16 hex digits instead of the full list.
"""

import hashlib
import json
from collections.abc import Iterable, Mapping

import numpy as np

TensorSpec = tuple[str, str, tuple[int, ...]]

# Domain prefix: a fingerprint can never collide with a hash of some other JSON we sign or send.
_FINGERPRINT_DOMAIN = b"fedswarm/model-spec/v1\n"


def tensor_specs(arrays: Mapping[str, np.ndarray]) -> list[TensorSpec]:
    """(name, dtype name such as "float32", shape) for each array, in the mapping's order."""
    return [(name, np.asarray(a).dtype.name, tuple(int(d) for d in np.shape(a))) for name, a in arrays.items()]


def fingerprint(arrays_or_specs: Mapping[str, np.ndarray] | Iterable[TensorSpec]) -> str:
    """16 hex digits of sha256 over the sorted (name, dtype, shape) specs, not the values.

    Two nodes whose models have the same architecture agree, whatever their weights; the order
    the tensors are listed in does not matter.
    """
    specs = tensor_specs(arrays_or_specs) if isinstance(arrays_or_specs, Mapping) else arrays_or_specs
    canonical = sorted([str(name), str(dtype), [int(d) for d in shape]] for name, dtype, shape in specs)
    payload = json.dumps(canonical, separators=(",", ":")).encode()
    return hashlib.sha256(_FINGERPRINT_DOMAIN + payload).hexdigest()[:16]
