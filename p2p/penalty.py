"""Per-peer rate limiting of offenders: a peer that keeps sending what we reject is refused outright
for a while, before we read a byte from it, and logged once per ban instead of once per attempt."""

from __future__ import annotations

import time
from collections import deque

STRIKES = 3  # rejections ...
WINDOW_S = 60.0  # ... within this long earn a ban
BAN_S = 60.0
MAX_TRACKED = 4096  # bounded memory whatever the number of peer IDs an attacker makes up


class PenaltyBox:
    def __init__(
        self, *, strikes: int = STRIKES, window_s: float = WINDOW_S, ban_s: float = BAN_S, clock=time.monotonic
    ):
        self._strikes, self._window_s, self._ban_s, self._clock = strikes, window_s, ban_s, clock
        self._recent: dict[str, deque[float]] = {}
        self._banned_until: dict[str, float] = {}

    def banned(self, peer_id: str) -> bool:
        until = self._banned_until.get(peer_id)
        if until is None:
            return False
        if self._clock() >= until:
            del self._banned_until[peer_id]
            return False
        return True

    def strike(self, peer_id: str) -> bool:
        """Count a rejection; True if it starts a ban (the caller logs that once)."""
        now = self._clock()
        if len(self._recent) >= MAX_TRACKED and peer_id not in self._recent:
            self._recent.pop(next(iter(self._recent)))  # forget the oldest offender
        times = self._recent.setdefault(peer_id, deque(maxlen=self._strikes))
        times.append(now)
        if len(times) == self._strikes and now - times[0] <= self._window_s:
            times.clear()
            if len(self._banned_until) >= MAX_TRACKED:
                self._banned_until.pop(next(iter(self._banned_until)))
            self._banned_until[peer_id] = now + self._ban_s
            return True
        return False
