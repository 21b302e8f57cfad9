"""Dynamic batching for `job serve`: the images of concurrent requests gathered into one model call.

    batcher = Batcher(classifier.predict, max_batch_size=32, max_wait_s=0.002)   # or Direct(classifier.predict)
    probabilities, queue_seconds = await batcher.run(images)     # images: one request's decoded (n, S, S, 3) uint8

One thread calls the model. A request's images wait in a queue until the batch they start is full (max_batch_size
images) or the first of them has waited max_wait_s; then every request gathered so far goes into one call and each
gets its own rows back. A request is never split: one that would overflow the batch starts the next one, and one
larger than the batch runs alone (Classifier.predict cuts it into its own chunks). While the model runs, new requests
queue; the next batch starts as soon as it returns, without waiting again if its first request has already waited
long enough. This is Triton's dynamic batcher (max_queue_delay) and TF Serving's batch_timeout_micros.

A lone client pays up to max_wait_s per request for the chance of company. Direct is what a wait of 0 means: no
queue, each request calls the model itself, one at a time (the model uses every core per call).

`queue_seconds` is from the request entering the queue to its model call starting: the X-Queue-Ms header and the
job_serve_queue_seconds metric. A failing model call fails every request of its batch with the same exception. A
request cancelled while it queues (its awaiting task cancelled) is dropped before its batch is formed; once in a
batch it can no longer be cancelled, so the thread never sets the result of a cancelled future.
"""
from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np

log = logging.getLogger("job")

Predict = Callable[[np.ndarray], np.ndarray]
BatchObserver = Callable[[int], None]  # called with each model call's number of images (the metrics)


@dataclass(frozen=True)
class Batching:
    """--max-batch-size and --max-batch-wait-ms. A wait of 0 turns batching off."""
    max_batch_size: int = 32
    max_wait_ms: float = 2.0

    @property
    def enabled(self) -> bool:
        return self.max_wait_ms > 0

    def runner(self, predict: Predict, on_batch: BatchObserver | None = None) -> Batcher | Direct:
        if not self.enabled:
            return Direct(predict, on_batch)
        return Batcher(predict, self.max_batch_size, self.max_wait_ms / 1000.0, on_batch)

    def as_dict(self) -> dict:
        return {"max_batch_size": self.max_batch_size, "max_batch_wait_ms": self.max_wait_ms}


@dataclass
class _Pending:
    images: np.ndarray
    enqueued: float = field(default_factory=time.monotonic)
    future: Future = field(default_factory=Future)


class Batcher:
    def __init__(self, predict: Predict, max_batch_size: int, max_wait_s: float,
                 on_batch: BatchObserver | None = None):
        if max_batch_size < 1 or not max_wait_s > 0:
            raise ValueError(f"a batcher needs max_batch_size >= 1 and max_wait_s > 0, got {max_batch_size}, "
                             f"{max_wait_s}")
        self.max_batch_size, self.max_wait_s = max_batch_size, max_wait_s
        self._predict, self._on_batch = predict, on_batch
        self._queue: queue.Queue[_Pending | None] = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name="batcher", daemon=True)
        self._thread.start()

    async def run(self, images: np.ndarray) -> tuple[np.ndarray, float]:
        """This request's probabilities (its rows of the batch it joined) and how long it queued."""
        return await asyncio.wrap_future(self.submit(images))

    def submit(self, images: np.ndarray) -> Future:
        pending = _Pending(images)
        self._queue.put(pending)
        return pending.future

    def close(self) -> None:
        """Stop the thread after the requests already queued."""
        self._queue.put(None)
        self._thread.join(timeout=30)

    # -------------------------------------------------------------------------------------------- the thread
    def _loop(self) -> None:
        carried: _Pending | None = None
        while True:
            first = carried if carried is not None else self._queue.get()
            carried = None
            if first is None:
                return
            if not first.future.set_running_or_notify_cancel():
                continue  # its request was cancelled while it queued (a client gone, a shutdown): no place for it
            batch, size = [first], len(first.images)
            deadline = first.enqueued + self.max_wait_s
            while size < self.max_batch_size:
                remaining = deadline - time.monotonic()
                try:
                    item = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
                except queue.Empty:
                    if remaining > 0:
                        continue  # a timed wait may end a hair early: the wait is served in full
                    break
                if item is None:
                    self._queue.put(None)  # stop after this batch
                    break
                if size + len(item.images) > self.max_batch_size:
                    carried = item  # the next batch's first
                    break
                if not item.future.set_running_or_notify_cancel():
                    continue
                batch.append(item)
                size += len(item.images)
            self._call(batch)

    def _call(self, batch: list[_Pending]) -> None:
        started = time.monotonic()
        try:
            images = batch[0].images if len(batch) == 1 else np.concatenate([p.images for p in batch])
            probabilities = self._predict(images)
        except BaseException as e:  # noqa: BLE001 - every request of the batch gets the failure
            for pending in batch:
                pending.future.set_exception(e)
            return
        if self._on_batch is not None:
            self._on_batch(len(images))
        row = 0
        for pending in batch:
            n = len(pending.images)
            pending.future.set_result((probabilities[row:row + n], started - pending.enqueued))
            row += n


class Direct:
    """No batching (a wait of 0): each request's own model call, one at a time; the wait for the model is its queue
    time. Runs in the caller's worker thread."""

    def __init__(self, predict: Predict, on_batch: BatchObserver | None = None):
        self._predict, self._on_batch = predict, on_batch
        self._lock = threading.Lock()  # in front of the classifier's own, so the wait for it can be measured

    async def run(self, images: np.ndarray) -> tuple[np.ndarray, float]:
        import anyio

        return await anyio.to_thread.run_sync(self._call, images)

    def _call(self, images: np.ndarray) -> tuple[np.ndarray, float]:
        enqueued = time.monotonic()
        with self._lock:
            started = time.monotonic()
            probabilities = self._predict(images)
        if self._on_batch is not None:
            self._on_batch(len(images))
        return probabilities, started - enqueued

    def close(self) -> None:
        pass
