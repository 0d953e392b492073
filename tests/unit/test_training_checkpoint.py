"""Checkpoints (training/checkpoint.py): exact round trip, torn or corrupt pairs detected, atomic writes."""

import json
from pathlib import Path

import numpy as np
import pytest

from training.checkpoint import META_FILE, CheckpointError, load_checkpoint, save_checkpoint

pytestmark = pytest.mark.timeout(30)

META = {"round": 12, "weight": 0.25, "task": "digits", "config": {"lr": 0.05, "optimizer": "sgd"}}


def arrays(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "z.weight": rng.normal(size=(4, 3)).astype(np.float32),
        "a.bias": rng.normal(size=4),  # float64
        "count": np.array(7, dtype=np.int64),  # a 0-d buffer
    }


def test_round_trip_is_exact(tmp_path: Path) -> None:
    saved = arrays()
    save_checkpoint(tmp_path / "ckpt", saved, META)  # creates the directory
    loaded, meta = load_checkpoint(tmp_path / "ckpt")
    assert list(loaded) == list(saved)  # the saved order, not safetensors' sorted order
    for name, array in saved.items():
        assert loaded[name].dtype == array.dtype and loaded[name].shape == array.shape
        assert np.array_equal(loaded[name], array)
    assert meta == META


def tensors_path(directory: Path) -> Path:
    return directory / json.loads((directory / META_FILE).read_text())["tensors_file"]


def test_absent_checkpoint_is_none(tmp_path: Path) -> None:
    assert load_checkpoint(tmp_path / "never-written") is None
    assert load_checkpoint(tmp_path) is None


def test_overwrite_replaces_and_leaves_no_tmp_files(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, arrays(0), {"round": 1})
    save_checkpoint(tmp_path, arrays(1), {"round": 2})
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([META_FILE, tensors_path(tmp_path).name])
    loaded, meta = load_checkpoint(tmp_path)
    assert meta == {"round": 2} and np.array_equal(loaded["a.bias"], arrays(1)["a.bias"])


def test_bad_meta_fails_before_touching_disk(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, arrays(0), {"round": 1})
    with pytest.raises(TypeError):
        save_checkpoint(tmp_path, arrays(1), {"round": object()})
    assert load_checkpoint(tmp_path)[1] == {"round": 1}  # the previous checkpoint is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([META_FILE, tensors_path(tmp_path).name])


def test_truncated_tensor_file_is_detected(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, arrays(), META)
    path = tensors_path(tmp_path)
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(CheckpointError, match="does not match its record's sha256"):
        load_checkpoint(tmp_path)


def test_modified_tensor_file_is_detected(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, arrays(), META)
    path = tensors_path(tmp_path)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01  # one flipped bit in the last tensor's payload
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="sha256"):
        load_checkpoint(tmp_path)


def test_a_crash_before_the_commit_keeps_the_previous_checkpoint(tmp_path: Path, monkeypatch) -> None:
    save_checkpoint(tmp_path, arrays(0), {"round": 1})
    import training.checkpoint as checkpoint

    real_write = checkpoint._write_atomic

    def crash_on_the_record(path: Path, payload: bytes) -> None:
        if path.name == META_FILE:
            raise OSError("power cut")  # the new tensors are on disk, the commit record is not
        real_write(path, payload)

    monkeypatch.setattr(checkpoint, "_write_atomic", crash_on_the_record)
    with pytest.raises(OSError, match="power cut"):
        save_checkpoint(tmp_path, arrays(1), {"round": 2})
    loaded, meta = load_checkpoint(tmp_path)
    assert meta == {"round": 1} and np.array_equal(loaded["a.bias"], arrays(0)["a.bias"])


def test_torn_pair_is_detected(tmp_path: Path) -> None:
    # Old record, tensor file overwritten by other bytes: caught by the hash.
    save_checkpoint(tmp_path / "old", arrays(0), {"round": 1})
    save_checkpoint(tmp_path / "new", arrays(1), {"round": 2})
    tensors_path(tmp_path / "old").write_bytes(tensors_path(tmp_path / "new").read_bytes())
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "old")


def test_missing_tensors_or_broken_record_is_an_error(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, arrays(), META)
    record = json.loads((tmp_path / META_FILE).read_text())
    assert record["format"] == "fedswarm-checkpoint" and len(record["tensors_sha256"]) == 64
    (tmp_path / META_FILE).write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_checkpoint(tmp_path)
    (tmp_path / META_FILE).write_text(json.dumps({**record, "version": 99}))
    with pytest.raises(CheckpointError, match="is not a fedswarm-checkpoint v1 record"):
        load_checkpoint(tmp_path)
    (tmp_path / META_FILE).write_text(json.dumps(record))
    tensors_path(tmp_path).unlink()
    with pytest.raises(CheckpointError, match="is missing"):
        load_checkpoint(tmp_path)


def test_checkpoint_error_is_a_value_error() -> None:
    assert issubclass(CheckpointError, ValueError)
