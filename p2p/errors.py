"""The p2p package's exception family: callers catch these, never hivemind's own."""


class P2PError(Exception):
    """Base class of every error raised by fedswarm's network layer."""


class IdentityError(P2PError):
    """The identity key file is missing, unreadable or not a libp2p private key."""


class HostStartError(P2PError):
    """libp2p could not start (bad listen address, port in use, daemon failed)."""


class PeerUnavailable(P2PError):
    """A peer did not answer in time or refused the connection."""


class ProtocolViolation(P2PError):
    """A peer sent bytes that break the wire protocol."""


class ModelRefused(ProtocolViolation):
    """A well-formed model that the validation gate judged bad: refused, but no offence (non-IID
    peers' honest models can look bad on our data), so it earns no rate-limiting strike."""


class NotAuthorized(P2PError):
    """A peer is not allowed to do what it asked."""
