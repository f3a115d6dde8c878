"""The body read timeout's watchdog: one timer per request, not a timeout scope per read."""

from __future__ import annotations

import asyncio

import pytest

from imageport.api.body_timeout import BodyReadTimeout, _Exchange

TIMEOUT = 0.3


def _exchange(pieces: asyncio.Queue) -> _Exchange:
    async def receive() -> dict:
        return await pieces.get()

    async def send(message: dict) -> None:
        pass

    return _Exchange(receive, send, TIMEOUT)


def _piece(more: bool = True) -> dict:
    return {"type": "http.request", "body": b"x", "more_body": more}


def test_a_stalled_read_times_out_after_the_timeout():
    async def run() -> float:
        exchange = _exchange(asyncio.Queue())
        started = asyncio.get_running_loop().time()
        with pytest.raises(BodyReadTimeout):
            await exchange.timed_receive()
        assert exchange.timed_out
        return asyncio.get_running_loop().time() - started

    assert TIMEOUT <= asyncio.run(run()) < TIMEOUT + 0.5


def test_each_read_has_its_own_allowance_and_the_watchdog_ends_with_the_body():
    async def run() -> _Exchange:
        pieces: asyncio.Queue = asyncio.Queue()
        exchange = _exchange(pieces)

        async def trickle() -> None:
            for more in (True,) * 5 + (False,):
                await asyncio.sleep(TIMEOUT * 0.6)  # the reads together take 3 timeouts
                pieces.put_nowait(_piece(more))

        feeder = asyncio.create_task(trickle())
        while True:
            message = await exchange.timed_receive()
            if not message["more_body"]:
                break
        await feeder
        assert exchange._watchdog is None  # nothing left scheduled once the body is complete
        await asyncio.sleep(TIMEOUT * 1.5)
        return exchange

    assert not asyncio.run(run()).timed_out


def test_another_cancellation_is_not_taken_for_a_timeout():
    async def run() -> None:
        exchange = _exchange(asyncio.Queue())
        reader = asyncio.create_task(exchange.timed_receive())
        await asyncio.sleep(TIMEOUT / 3)
        reader.cancel()
        with pytest.raises(asyncio.CancelledError):
            await reader
        assert not exchange.timed_out
        await asyncio.sleep(TIMEOUT)  # the watchdog, when it wakes, finds no read waiting
        assert not exchange.timed_out
        exchange.stop_watching()

    asyncio.run(run())
