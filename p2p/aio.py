"""Small asyncio helpers shared by the network loops."""

from __future__ import annotations

import asyncio


async def wait_stopped(stop: asyncio.Event, timeout_s: float) -> bool:
    """Wait up to `timeout_s` seconds for `stop`; True if it was set (the loop should end)."""
    if stop.is_set():
        return True
    try:
        async with asyncio.timeout(max(0.0, timeout_s)):
            await stop.wait()
    except TimeoutError:
        return False
    return True
