"""Checkpoints: tensors in safetensors, metadata in JSON, both written atomically. Never pickle.

A checkpoint is the pair directory/checkpoint.safetensors + directory/checkpoint.json. Each file
is written to a temporary file in the same directory, fsynced, then renamed over the old one
(os.replace is atomic on POSIX). The JSON goes last and records the sha256 of the safetensors
bytes, so it is the commit record: a crash between the two renames leaves a torn pair that
`load_checkpoint` detects by the hash, instead of silently pairing old metadata with new weights.
"""

import hashlib
import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.numpy

from training.errors import CheckpointError
from training.specs import tensor_specs

__all__ = ["CheckpointError", "load_checkpoint", "save_checkpoint"]

TENSORS_FILE = "checkpoint.safetensors"
META_FILE = "checkpoint.json"
FORMAT = "fedswarm-checkpoint"
VERSION = 1


def save_checkpoint(directory: Path, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> None:
    """Atomically replace the checkpoint in `directory` (created if needed) with `arrays` and `meta`.

    `meta` must be JSON-serialisable (step, config, task name...); it is checked before anything
    is written, so a bad meta leaves the previous checkpoint intact.
    """
    directory = Path(directory)
    # Serialise both first: any error (a non-JSON meta, an unsupported dtype) happens before disk.
    # asarray(order="C"), not np.ascontiguousarray: the latter turns 0-d buffers into shape (1,).
    tensor_bytes = safetensors.numpy.save({name: np.asarray(a, order="C") for name, a in arrays.items()})
    record = {
        "format": FORMAT,
        "version": VERSION,
        "tensors_sha256": hashlib.sha256(tensor_bytes).hexdigest(),
        "tensors": [[name, dtype, list(shape)] for name, dtype, shape in tensor_specs(arrays)],
        "meta": dict(meta),
    }
    record_bytes = json.dumps(record, indent=1, sort_keys=True, allow_nan=False).encode()
    directory.mkdir(parents=True, exist_ok=True)
    _write_atomic(directory / TENSORS_FILE, tensor_bytes)
    _write_atomic(directory / META_FILE, record_bytes)
    _fsync_directory(directory)  # make the renames themselves durable


def load_checkpoint(directory: Path) -> tuple[dict[str, np.ndarray], dict[str, Any]] | None:
    """(arrays, meta) of the checkpoint in `directory`, or None if there is none.

    "None" means no JSON commit record (a first save that crashed midway counts as none). Raises
    CheckpointError if the record is unreadable, the tensor file is missing, or its hash or
    tensor list does not match the record.
    """
    directory = Path(directory)
    try:
        record_bytes = (directory / META_FILE).read_bytes()
    except FileNotFoundError:
        return None
    try:
        record = json.loads(record_bytes)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{directory / META_FILE} is not valid JSON: {exc}") from exc
    if not isinstance(record, dict) or record.get("format") != FORMAT or record.get("version") != VERSION:
        raise CheckpointError(f"{directory / META_FILE} is not a {FORMAT} v{VERSION} record")

    try:
        tensor_bytes = (directory / TENSORS_FILE).read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"{directory / META_FILE} exists but {TENSORS_FILE} is missing") from None
    # Hash the exact bytes that are then parsed: no window for the file to change in between.
    if hashlib.sha256(tensor_bytes).hexdigest() != record.get("tensors_sha256"):
        raise CheckpointError(f"{directory / TENSORS_FILE} does not match its record's sha256 (torn or corrupt)")
    try:
        arrays = safetensors.numpy.load(tensor_bytes)
    except Exception as exc:  # safetensors raises its own SafetensorError; the hash makes this rare
        raise CheckpointError(f"{directory / TENSORS_FILE} cannot be parsed: {exc}") from exc

    listed = record.get("tensors")
    found = [[name, dtype, list(shape)] for name, dtype, shape in tensor_specs(arrays)]
    if not isinstance(listed, list) or sorted(listed, key=str) != sorted(found, key=str):
        raise CheckpointError(f"{directory / TENSORS_FILE} holds other tensors than its record lists")
    meta = record.get("meta")
    if not isinstance(meta, dict):
        raise CheckpointError(f"{directory / META_FILE} has no meta object")
    # Return the saved order (model.state_dict order), whatever order the file format keeps.
    return {spec[0]: arrays[spec[0]] for spec in listed}, meta


def _write_atomic(path: Path, payload: bytes) -> None:
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
