"""Who may be in a permissioned swarm: the peer IDs of the member institutions.

From `members` (peer IDs in the config) and `members_file` (one peer ID per line, then an optional
label: `QmX... Ministry of Health`; `#` starts a comment). No list at all means an open swarm.
libp2p authenticates peer IDs on every connection (Noise/TLS), so checking the remote peer ID of a
stream or the owner of a signed DHT record is enough to keep strangers out.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

log = logging.getLogger("fedswarm.members")

_PEER_ID_RE = re.compile(r"[1-9A-HJ-NP-Za-km-z]{40,60}")


class MembersError(ValueError):
    pass


def parse_members_file(text: str, source: str) -> dict[str, str]:
    """{peer ID: label} from a members file's text; raises MembersError naming the bad line."""
    members: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        peer_id, _, label = line.partition(" ")
        if not _PEER_ID_RE.fullmatch(peer_id):
            raise MembersError(f"{source} line {number}: {peer_id!r} is not a peer ID")
        members[peer_id] = label.strip()
    return members


class Members:
    """The current allowlist; `reload()` re-reads the file (SIGHUP or the control API)."""

    def __init__(self, peer_ids: tuple[str, ...], members_file: str):
        self._configured = {p: "" for p in peer_ids}
        self._file = Path(members_file) if members_file else None
        self._members: dict[str, str] | None = None
        self.reload()

    @property
    def open(self) -> bool:
        return self._members is None

    def reload(self) -> dict[str, object]:
        """Re-read the members file. On a bad file the previous list stays in force (and the error is raised)."""
        members = dict(self._configured)
        if self._file is not None:
            try:
                text = self._file.read_text()
            except OSError as e:
                raise MembersError(f"cannot read members file {self._file}: {e.strerror}") from e
            members.update(parse_members_file(text, str(self._file)))
        before = self._members
        self._members = members if (members or self._file is not None) else None
        if before is not None and self._members is not None:
            for peer_id in sorted(self._members.keys() - before.keys()):
                log.info("member added: %s %s", peer_id, self._members[peer_id])
            for peer_id in sorted(before.keys() - self._members.keys()):
                log.info("member removed: %s", peer_id)
        return {"open": self.open, "members": len(self._members or {})}

    def allowed(self, peer_id: str) -> bool:
        return self._members is None or peer_id in self._members

    def label(self, peer_id: str) -> str:
        return (self._members or {}).get(peer_id, "")
