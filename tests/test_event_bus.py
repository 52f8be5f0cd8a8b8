"""events.py: a Subscription's one reader, and what close() does to it."""

from __future__ import annotations

import asyncio

import pytest

from mailsink.events import EventBus, StoreChanged


def test_a_second_task_waiting_on_one_subscription_is_refused_and_close_wakes_the_first():
    """Two readers would each see some events, and one of them never woke, even on close()."""

    async def scenario() -> None:
        bus = EventBus()
        subscription = bus.subscribe(StoreChanged)
        first = asyncio.create_task(subscription.get())
        await asyncio.sleep(0)  # waiting now
        with pytest.raises(RuntimeError, match="one reader"):
            await asyncio.wait_for(subscription.get(), 1)
        bus.publish(StoreChanged())
        assert await asyncio.wait_for(first, 1) == StoreChanged()

        waiting = asyncio.create_task(subscription.get())  # read again, one task at a time
        await asyncio.sleep(0)
        subscription.close()
        with pytest.raises(StopAsyncIteration):
            await asyncio.wait_for(waiting, 1)
        assert not bus.wants(StoreChanged)

    asyncio.run(scenario())


def test_a_reader_that_gave_up_waiting_leaves_the_subscription_to_the_next():
    """A get() cancelled (a timeout) is no longer a reader: the test fixtures' events.next()."""

    async def scenario() -> None:
        bus = EventBus()
        with bus.subscribe(StoreChanged) as subscription:
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(subscription.get(), 0.01)
            bus.publish(StoreChanged())
            assert await asyncio.wait_for(subscription.get(), 1) == StoreChanged()

    asyncio.run(scenario())


def test_closing_ends_the_readers_async_for_with_what_was_published_before():
    async def scenario() -> None:
        bus = EventBus()
        subscription = bus.subscribe(StoreChanged)
        seen: list[StoreChanged] = []

        async def read() -> None:
            async for event in subscription:
                seen.append(event)

        reader = asyncio.create_task(read())
        bus.publish(StoreChanged())
        await asyncio.sleep(0.01)
        subscription.close()
        await asyncio.wait_for(reader, 1)
        assert seen == [StoreChanged()]

    asyncio.run(scenario())
