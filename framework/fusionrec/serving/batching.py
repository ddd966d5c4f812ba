"""Micro-batching for the scoring service: the encoded inputs of concurrent requests merged into one
model run.

Every array of an encoded request has the batch first, so requests concatenate along axis 0, run
once, and each gets its own slice of the outputs back. Fewer, larger runs are what keeps a CPU busy
with arithmetic instead of per-call overhead when many clients call at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

Arrays = dict[str, np.ndarray]


@dataclass
class _Waiting:
    inputs: Arrays
    rows: int
    result: asyncio.Future


class MicroBatcher:
    """Runs ``run({field: [B, ...]}) -> {task: [B, ...]}`` on merged requests.

    A worker takes the oldest waiting request, then adds later ones until the batch holds
    ``max_batch_rows`` rows or ``max_wait_ms`` has passed since it took the first; a request that
    would overflow the batch opens the next one. The model runs in one dedicated thread, so the
    event loop keeps accepting (and validating) requests meanwhile; whatever queued up during a run
    joins the next without waiting. ``max_wait_ms=0`` never waits, but still merges what is queued.

    Counters for ``/healthz``: ``requests``, ``runs`` and ``rows`` served so far.
    """

    def __init__(self, run: Callable[[Arrays], Arrays], max_batch_rows: int, max_wait_ms: float):
        self.run, self.max_batch_rows, self.max_wait = run, max_batch_rows, max_wait_ms / 1000
        self.requests = self.runs = self.rows = 0
        self._queue: asyncio.Queue[_Waiting] | None = None
        self._overflow: _Waiting | None = None
        self._worker: asyncio.Task | None = None
        self._thread: ThreadPoolExecutor | None = None

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fusionrec-model")
        self._worker = asyncio.create_task(self._serve_forever())

    async def stop(self) -> None:
        self._worker.cancel()
        await asyncio.gather(self._worker, return_exceptions=True)
        self._thread.shutdown(wait=True)

    async def submit(self, inputs: Arrays, rows: int) -> Arrays:
        """One request's encoded inputs (``rows`` <= ``max_batch_rows``) -> its rows of the outputs."""
        if not 0 < rows <= self.max_batch_rows:
            raise ValueError(f"a request must hold 1 to {self.max_batch_rows} rows, got {rows}")
        waiting = _Waiting(inputs, rows, asyncio.get_running_loop().create_future())
        self._queue.put_nowait(waiting)
        return await waiting.result

    async def _serve_forever(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._next_batch()
            merged = batch[0].inputs if len(batch) == 1 else {
                name: np.concatenate([waiting.inputs[name] for waiting in batch]) for name in batch[0].inputs}
            try:
                outputs = await loop.run_in_executor(self._thread, self.run, merged)
            except Exception as error:  # the model failed: every request of the batch learns why
                for waiting in batch:
                    if not waiting.result.done():
                        waiting.result.set_exception(error)
                continue
            self.requests, self.runs = self.requests + len(batch), self.runs + 1
            self.rows += sum(waiting.rows for waiting in batch)
            start = 0
            for waiting in batch:
                if not waiting.result.done():  # done = cancelled: the client went away
                    waiting.result.set_result({task: value[start:start + waiting.rows]
                                               for task, value in outputs.items()})
                start += waiting.rows

    async def _next_batch(self) -> list[_Waiting]:
        first, self._overflow = self._overflow or await self._queue.get(), None
        batch, rows = [first], first.rows
        deadline = asyncio.get_running_loop().time() + self.max_wait
        while rows < self.max_batch_rows:
            if self._queue.empty():
                remaining = deadline - asyncio.get_running_loop().time()
                if remaining <= 0:
                    break
                try:
                    waiting = await asyncio.wait_for(self._queue.get(), remaining)
                except asyncio.TimeoutError:
                    break
            else:
                waiting = self._queue.get_nowait()
            if rows + waiting.rows > self.max_batch_rows:
                self._overflow = waiting
                break
            batch.append(waiting)
            rows += waiting.rows
        return batch
