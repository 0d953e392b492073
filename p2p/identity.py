"""A node's persistent libp2p identity: an RSA key file and the peer ID derived from it.

The same key signs the node's DHT membership record, so a record can be checked against the
peer ID it claims (libp2p derives RSA peer IDs from the public key: sha256 multihash of the
protobuf-encoded key).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import base58
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from hivemind.proto import crypto_pb2
from hivemind.utils.crypto import RSAPrivateKey

from p2p.errors import IdentityError

IDENTITY_FILE_MODE = 0o400
_SHA2_256_MULTIHASH_PREFIX = bytes([0x12, 0x20])  # multihash code sha2-256, digest length 32


@dataclass(frozen=True)
class Identity:
    path: Path
    peer_id: str
    signing_key: RSAPrivateKey  # hivemind's wrapper, as its record validator expects


def peer_id_from_public_key(public_key: rsa.RSAPublicKey) -> str:
    """The base58 libp2p peer ID of an RSA public key."""
    der = public_key.public_bytes(
        encoding=serialization.Encoding.DER, format=serialization.PublicFormat.SubjectPublicKeyInfo
    )
    encoded = crypto_pb2.PublicKey(key_type=crypto_pb2.RSA, data=der).SerializeToString()
    return base58.b58encode(_SHA2_256_MULTIHASH_PREFIX + hashlib.sha256(encoded).digest()).decode()


def peer_id_from_ssh_public_key(ssh_public_key: bytes) -> str:
    """The peer ID of a key in OpenSSH format (how hivemind's record validator embeds owners)."""
    try:
        key = serialization.load_ssh_public_key(ssh_public_key)
    except (ValueError, TypeError) as e:
        raise ValueError(f"not an OpenSSH public key: {e}") from e
    if not isinstance(key, rsa.RSAPublicKey):
        raise ValueError("not an RSA public key")
    return peer_id_from_public_key(key)


def create_identity(path: Path) -> None:
    """Write a new RSA identity key to `path` (mode 0400); refuses to overwrite."""
    der = RSAPrivateKey().to_bytes()
    blob = crypto_pb2.PrivateKey(key_type=crypto_pb2.KeyType.RSA, data=der).SerializeToString()
    path.parent.mkdir(parents=True, exist_ok=True)
    # O_EXCL: two processes creating the same identity at once must not both win.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, IDENTITY_FILE_MODE)
    with os.fdopen(fd, "wb") as f:
        f.write(blob)
        f.flush()
        os.fsync(f.fileno())


def load_identity(path: Path) -> Identity:
    """Read an identity key file; raises IdentityError saying what is wrong with it."""
    try:
        blob = path.read_bytes()
    except OSError as e:
        raise IdentityError(f"cannot read identity file {path}: {e.strerror}") from e
    try:
        pb = crypto_pb2.PrivateKey.FromString(blob)
        if pb.key_type != crypto_pb2.KeyType.RSA:
            raise ValueError("only RSA identities are supported")
        private_key = serialization.load_der_private_key(pb.data, password=None)
        if not isinstance(private_key, rsa.RSAPrivateKey):
            raise ValueError("key is not RSA")
    except Exception as e:  # protobuf and cryptography raise a zoo of types for bad bytes
        raise IdentityError(f"identity file {path} is not a libp2p RSA private key ({e})") from e
    signing_key = RSAPrivateKey.__new__(RSAPrivateKey)  # wrap the loaded key, do not generate one
    signing_key.__setstate__({"_private_key": pb.data})
    return Identity(path=path, peer_id=peer_id_from_public_key(private_key.public_key()), signing_key=signing_key)


def load_or_create_identity(path: Path) -> tuple[Identity, bool]:
    """Load the identity at `path`, creating it first if missing. Returns (identity, created)."""
    created = False
    if not path.exists():
        try:
            create_identity(path)
            created = True
        except FileExistsError:
            pass  # another process created it a moment ago: use theirs
        except OSError as e:
            raise IdentityError(f"cannot create identity file {path}: {e.strerror}") from e
    return load_identity(path), created
