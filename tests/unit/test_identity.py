from __future__ import annotations

import stat

import pytest

from p2p.errors import IdentityError
from p2p.identity import load_identity, load_or_create_identity, peer_id_from_ssh_public_key


def test_identity_is_created_once_then_reused(tmp_path):
    path = tmp_path / "state" / "identity"
    first, created = load_or_create_identity(path)
    assert created and path.exists()
    assert stat.S_IMODE(path.stat().st_mode) == 0o400
    blob = path.read_bytes()

    second, created_again = load_or_create_identity(path)
    assert not created_again
    assert second.peer_id == first.peer_id
    assert path.read_bytes() == blob  # not rewritten


def test_peer_id_matches_libp2p_derivation(tmp_path):
    from hivemind.p2p import PeerID  # libp2p's own derivation, as the daemon computes it

    identity, _ = load_or_create_identity(tmp_path / "identity")
    assert PeerID.from_identity((tmp_path / "identity").read_bytes()).to_base58() == identity.peer_id
    # the signing key used for DHT records maps back to the same peer ID
    assert peer_id_from_ssh_public_key(identity.signing_key.get_public_key().to_bytes()) == identity.peer_id


def test_distinct_nodes_get_distinct_ids(tmp_path):
    a, _ = load_or_create_identity(tmp_path / "a")
    b, _ = load_or_create_identity(tmp_path / "b")
    assert a.peer_id != b.peer_id


@pytest.mark.parametrize("content", [b"", b"garbage", b"\x08\x00\x12\x03abc"])
def test_corrupt_identity_is_a_clear_error(tmp_path, content):
    path = tmp_path / "identity"
    path.write_bytes(content)
    with pytest.raises(IdentityError, match="identity file"):
        load_identity(path)


def test_missing_identity_file_is_a_clear_error(tmp_path):
    with pytest.raises(IdentityError, match="cannot read"):
        load_identity(tmp_path / "nope")
