"""`mlbus.bus.until_done`: the one backoff loop, and the deadline a caller may give it."""

from __future__ import annotations

import asyncio
import time

from mlbus.bus import RetryPolicy, until_done
from mlbus.errors import RetryableError

# The same pause after every failure, long enough that scheduling noise cannot reorder it.
EVERY_HALF_SECOND = RetryPolicy(initial_backoff_s=0.5, max_backoff_s=0.5)


async def test_a_deadline_ends_the_retries_before_a_try_that_would_start_after_it() -> None:
    tries: list[float] = []
    retries: list[None] = []

    async def down() -> None:
        tries.append(time.monotonic())
        raise RetryableError(f"still down (try {len(tries)})")

    started = time.monotonic()
    async with asyncio.timeout(10):  # without the deadline the loop never ends
        error = await until_done(
            down,
            policy=EVERY_HALF_SECOND,
            stopping=asyncio.Event(),
            retry_on=(RetryableError,),
            what="reaching the dependency",
            on_retry=lambda: retries.append(None),
            give_up_after_s=0.8,
        )
    # tries at 0 s and 0.5 s; a third would start at 1.0 s, past 0.8 s: the last error stands
    assert isinstance(error, RetryableError)
    assert str(error) == "still down (try 2)"
    assert len(tries) == 2
    assert len(retries) == 1
    assert time.monotonic() - started < 1.0  # no third pause was waited out


async def test_without_a_deadline_it_retries_until_the_work_lands() -> None:
    tries = 0

    async def lands_on_the_fourth_try() -> None:
        nonlocal tries
        tries += 1
        if tries < 4:
            raise ConnectionError("refused")

    error = await until_done(
        lands_on_the_fourth_try,
        policy=RetryPolicy(initial_backoff_s=0.001, max_backoff_s=0.001),
        stopping=asyncio.Event(),
        retry_on=(ConnectionError,),
        what="reaching the dependency",
    )
    assert error is None
    assert tries == 4


async def test_a_stop_during_the_pause_ends_it_with_the_last_error() -> None:
    stopping = asyncio.Event()

    async def down() -> None:
        asyncio.get_running_loop().call_later(0.05, stopping.set)
        raise RetryableError("down")

    async with asyncio.timeout(2):  # the pause is 60 s: only the stop can end it in time
        error = await until_done(
            down,
            policy=RetryPolicy(initial_backoff_s=60, max_backoff_s=60),
            stopping=stopping,
            retry_on=(RetryableError,),
            what="reaching the dependency",
            give_up_after_s=600,
        )
    assert isinstance(error, RetryableError)
