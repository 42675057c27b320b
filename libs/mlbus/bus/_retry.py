"""How the bus tries again: one backoff policy and one loop for work that must land.

The handler path (`Consumer`), the work done at the commit (`before_commit`) and
the dead-letter publish all wait out a failing dependency the same way: capped
exponential backoff, until the work lands or `stop()` comes (or, for a caller that
sets one, a deadline passes).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from mlbus.errors import RetryableError

log = logging.getLogger("mlbus.bus")

RETRYABLE: tuple[type[Exception], ...] = (RetryableError, TimeoutError, ConnectionError)
"""What a dependency that is down raises: tried again, never dead-lettered for it."""


@dataclass(frozen=True)
class RetryPolicy:
    initial_backoff_s: float = 0.1
    max_backoff_s: float = 5.0
    unexpected_attempts: int = 3

    def backoff_s(self, attempt: int) -> float:
        return float(min(self.max_backoff_s, self.initial_backoff_s * 2 ** (attempt - 1)))


async def until_done(
    work: Callable[[], Awaitable[None]],
    *,
    policy: RetryPolicy,
    stopping: asyncio.Event,
    retry_on: tuple[type[Exception], ...],
    what: str,
    on_retry: Callable[[], None] | None = None,
    give_up_after_s: float | None = None,
) -> Exception | None:
    """`work()` until it returns: an error in `retry_on` is tried again after the
    policy's backoff. None once it landed; the last error if `stopping` was set
    first, or if the next try would start more than `give_up_after_s` after this
    call began (the caller decides what either means). Other errors raise at once:
    a bug must not be retried forever."""
    give_up_at = None if give_up_after_s is None else time.monotonic() + give_up_after_s
    attempt = 0
    while True:
        try:
            await work()
        except retry_on as exc:
            attempt += 1
            if stopping.is_set():
                return exc
            delay = policy.backoff_s(attempt)
            if give_up_at is not None and time.monotonic() + delay > give_up_at:
                log.warning(
                    "%s failed (attempt %d), giving up after %.1fs: %s",
                    what,
                    attempt,
                    give_up_after_s,
                    exc,
                )
                return exc
            if on_retry is not None:
                on_retry()
            log.warning("%s failed (attempt %d), retrying in %.2fs: %s", what, attempt, delay, exc)
            try:
                await asyncio.wait_for(stopping.wait(), delay)
            except TimeoutError:
                continue
            return exc
        else:
            if attempt:
                log.info("%s succeeded after %d failed attempts", what, attempt)
            return None
