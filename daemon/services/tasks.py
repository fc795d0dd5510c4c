"""At most one background task per key (a server id), each removing itself when done."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Hashable
from typing import Any


class KeyedTasks:
    def __init__(self) -> None:
        self._tasks: dict[Hashable, asyncio.Task] = {}

    def get(self, key: Hashable) -> asyncio.Task | None:
        """The live task for ``key``, or None."""
        task = self._tasks.get(key)
        return task if task is not None and not task.done() else None

    def __contains__(self, key: Hashable) -> bool:
        return self.get(key) is not None

    def spawn(self, key: Hashable, coro: Coroutine[Any, Any, Any], name: str | None = None) -> asyncio.Task:
        """Start ``coro`` as the task of ``key`` (the caller cancels any old one first)."""
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks[key] = task
        task.add_done_callback(lambda t: self._tasks.pop(key, None) if self._tasks.get(key) is t else None)
        return task

    def cancel(self, key: Hashable) -> None:
        task = self._tasks.pop(key, None)
        if task is not None:
            task.cancel()

    async def stop(self) -> None:
        """Cancel every task and wait for them to end."""
        tasks = list(self._tasks.values())
        self._tasks.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
