"""One way the gateway runs a background loop for the lifetime of its app (reaper, sweeps)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Coroutine
from typing import Any


@contextlib.asynccontextmanager
async def background(loop: Coroutine[Any, Any, None] | None) -> AsyncIterator[None]:
    """Run ``loop`` as a task while the block runs, then cancel it (nothing when ``loop`` is None)."""
    task = asyncio.create_task(loop) if loop is not None else None
    try:
        yield
    finally:
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
