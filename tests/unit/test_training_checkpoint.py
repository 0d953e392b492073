"""Checkpoints (training/checkpoint.py): exact round trip, torn or corrupt pairs detected, atomic writes."""

import json
from pathlib import Path

import numpy as np
import pytest

from training.checkpoint import META_FILE, TENSORS_FILE, CheckpointError, load_checkpoint, save_checkpoint

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


def test_absent_checkpoint_is_none(tmp_path: Path) -> None:
    assert load_checkpoint(tmp_path / "never-written") is None
    assert load_checkpoint(tmp_path) is None


def test_overwrite_replaces_and_leaves_no_tmp_files(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, arrays(0), {"round": 1})
    save_checkpoint(tmp_path, arrays(1), {"round": 2})
    assert sorted(p.name for p in tmp_path.iterdir()) == [META_FILE, TENSORS_FILE]
    loaded, meta = load_checkpoint(tmp_path)
    assert meta == {"round": 2} and np.array_equal(loaded["a.bias"], arrays(1)["a.bias"])


def test_bad_meta_fails_before_touching_disk(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, arrays(0), {"round": 1})
    with pytest.raises(TypeError):
        save_checkpoint(tmp_path, arrays(1), {"round": object()})
    assert load_checkpoint(tmp_path)[1] == {"round": 1}  # the previous checkpoint is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == [META_FILE, TENSORS_FILE]


def test_truncated_tensor_file_is_detected(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, arrays(), META)
    path = tmp_path / TENSORS_FILE
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(CheckpointError, match="does not match its record's sha256"):
        load_checkpoint(tmp_path)


def test_modified_tensor_file_is_detected(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, arrays(), META)
    path = tmp_path / TENSORS_FILE
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01  # one flipped bit in the last tensor's payload
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="sha256"):
        load_checkpoint(tmp_path)


def test_torn_pair_is_detected(tmp_path: Path) -> None:
    # A crash between the two renames: new tensors next to the old record.
    save_checkpoint(tmp_path / "old", arrays(0), {"round": 1})
    save_checkpoint(tmp_path / "new", arrays(1), {"round": 2})
    (tmp_path / "old" / TENSORS_FILE).write_bytes((tmp_path / "new" / TENSORS_FILE).read_bytes())
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
    (tmp_path / TENSORS_FILE).unlink()
    with pytest.raises(CheckpointError, match="is missing"):
        load_checkpoint(tmp_path)


def test_checkpoint_error_is_a_value_error() -> None:
    assert issubclass(CheckpointError, ValueError)
