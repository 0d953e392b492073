"""Checkpoints: tensors in safetensors, metadata in JSON, both written atomically. Never pickle.

A checkpoint is directory/checkpoint.json (the commit record) naming a tensor file
directory/checkpoint-<sha256 prefix>.safetensors. Each file is written to a temporary file in the
same directory, fsynced, then renamed into place (os.replace is atomic on POSIX). The tensors go
first under a new, content-addressed name; the JSON rename is the commit; only then is the previous
tensor file removed. A crash at any point leaves the previous checkpoint whole and loadable: nothing
is lost but the save that was in progress. The record's sha256 still catches a corrupted file.
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

TENSORS_PREFIX = "checkpoint-"
TENSORS_SUFFIX = ".safetensors"
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
    digest = hashlib.sha256(tensor_bytes).hexdigest()
    tensors_file = f"{TENSORS_PREFIX}{digest[:16]}{TENSORS_SUFFIX}"
    record = {
        "format": FORMAT,
        "version": VERSION,
        "tensors_file": tensors_file,
        "tensors_sha256": digest,
        "tensors": [[name, dtype, list(shape)] for name, dtype, shape in tensor_specs(arrays)],
        "meta": dict(meta),
    }
    record_bytes = json.dumps(record, indent=1, sort_keys=True, allow_nan=False).encode()
    directory.mkdir(parents=True, exist_ok=True)
    _write_atomic(directory / tensors_file, tensor_bytes)
    _fsync_directory(directory)  # the tensors are durable before the record that points at them
    _write_atomic(directory / META_FILE, record_bytes)
    _fsync_directory(directory)  # the commit itself is durable
    for old in directory.glob(f"{TENSORS_PREFIX}*{TENSORS_SUFFIX}"):
        if old.name != tensors_file:
            old.unlink(missing_ok=True)


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

    tensors_file = record.get("tensors_file")
    if not isinstance(tensors_file, str) or "/" in tensors_file or not tensors_file.startswith(TENSORS_PREFIX):
        raise CheckpointError(f"{directory / META_FILE} names no valid tensor file")
    try:
        tensor_bytes = (directory / tensors_file).read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"{directory / META_FILE} exists but {tensors_file} is missing") from None
    # Hash the exact bytes that are then parsed: no window for the file to change in between.
    if hashlib.sha256(tensor_bytes).hexdigest() != record.get("tensors_sha256"):
        raise CheckpointError(f"{directory / tensors_file} does not match its record's sha256 (torn or corrupt)")
    try:
        arrays = safetensors.numpy.load(tensor_bytes)
    except Exception as exc:  # safetensors raises its own SafetensorError; the hash makes this rare
        raise CheckpointError(f"{directory / tensors_file} cannot be parsed: {exc}") from exc

    listed = record.get("tensors")
    found = [[name, dtype, list(shape)] for name, dtype, shape in tensor_specs(arrays)]
    if not isinstance(listed, list) or sorted(listed, key=str) != sorted(found, key=str):
        raise CheckpointError(f"{directory / tensors_file} holds other tensors than its record lists")
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
