"""Membership records: only the owner of a peer ID can speak for it, and the table is honest."""

from __future__ import annotations

import dataclasses

import msgpack
import pytest
from hivemind.dht.crypto import RSASignatureValidator
from hivemind.dht.validation import DHTRecord

from p2p.identity import load_or_create_identity
from p2p.membership import (
    MAX_RECORD_BYTES,
    InvalidRecord,
    MemberRecord,
    decode_record,
    encode_record,
    live_peers,
)

NOW = 1_000_000.0


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    root = tmp_path_factory.mktemp("ids")
    ids = [load_or_create_identity(root / f"id{i}")[0] for i in range(3)]
    return [(i, RSASignatureValidator(i.signing_key)) for i in ids]


def record_of(identity, *, left=False, updated_at=NOW - 1, **overrides) -> MemberRecord:
    fields = dict(
        peer_id=identity.peer_id,
        addrs=(f"/ip4/127.0.0.1/tcp/1/p2p/{identity.peer_id}",),
        updated_at=updated_at,
        started_at=NOW - 100,
        left=left,
    )
    fields.update(overrides)
    return MemberRecord(**fields)


def test_round_trip(keys):
    identity, validator = keys[0]
    record = record_of(identity)
    assert decode_record(validator.local_public_key, encode_record(record)) == record


def test_record_claiming_another_peer_is_rejected(keys):
    (victim, _), (forger, forger_validator) = keys[0], keys[1]
    forged = encode_record(record_of(forger, peer_id=victim.peer_id))
    with pytest.raises(InvalidRecord, match="signed by"):
        decode_record(forger_validator.local_public_key, forged)


def test_dht_signature_binds_the_value_to_the_subkey_owner(keys):
    """hivemind's validator (which every DHT node runs) rejects a value not signed by the subkey's key."""
    (owner, owner_validator), (_, other_validator) = keys[0], keys[1]
    value = encode_record(record_of(owner))
    record = DHTRecord(key=b"k", subkey=owner_validator.local_public_key, value=value, expiration_time=NOW)
    signed = dataclasses.replace(record, value=owner_validator.sign_value(record))
    assert other_validator.validate(signed)  # anyone can check the owner's signature
    tampered = dataclasses.replace(signed, value=signed.value.replace(b"tcp/1", b"tcp/2"))
    assert not other_validator.validate(tampered)
    unsigned = dataclasses.replace(record, value=value)
    assert not other_validator.validate(unsigned)


@pytest.mark.parametrize(
    "value",
    [
        b"\xc1garbage",
        msgpack.packb([1, 2, 3]),
        msgpack.packb({"v": 99}),
        b"x" * (MAX_RECORD_BYTES + 1),
        "not bytes",
    ],
)
def test_malformed_values_are_rejected(keys, value):
    _, validator = keys[0]
    with pytest.raises(InvalidRecord):
        decode_record(validator.local_public_key, value)


def test_live_peers_drops_self_tombstones_expired_and_invalid(keys):
    (me, my_v), (alive, alive_v), (gone, gone_v) = keys
    found = {
        my_v.local_public_key: (encode_record(record_of(me)), NOW + 10),
        alive_v.local_public_key: (encode_record(record_of(alive)), NOW + 10),
        gone_v.local_public_key: (encode_record(record_of(gone, left=True)), NOW + 10),
        b"[owner:junk]": (b"junk", NOW + 10),
    }
    assert set(live_peers(found, me=me.peer_id, now=NOW)) == {alive.peer_id}

    expired = {alive_v.local_public_key: (encode_record(record_of(alive)), NOW - 0.1)}
    assert live_peers(expired, me=me.peer_id, now=NOW) == {}


def test_last_seen_is_time_since_the_owners_refresh(keys):
    identity, validator = keys[1]
    found = {validator.local_public_key: (encode_record(record_of(identity, updated_at=NOW - 2.5)), NOW + 10)}
    (peer,) = live_peers(found, me="me", now=NOW).values()
    row = peer.as_json(NOW)
    assert row["peer_id"] == identity.peer_id and row["last_seen_s"] == pytest.approx(2.5)
    assert row["addrs"] == [f"/ip4/127.0.0.1/tcp/1/p2p/{identity.peer_id}"]
