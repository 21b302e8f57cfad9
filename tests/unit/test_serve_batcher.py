"""job/serve/batcher.py in process, with a predict function that records its calls and can be held (a threading.Event)
so the batcher is busy by construction while requests queue. No model: the batcher's contract is about rows (each
request gets its own rows back), which a row-wise function shows exactly. The server-level checks are in
tests/integration/test_serve_concurrency.py."""
from __future__ import annotations

import threading

import numpy as np
import pytest

from job.serve.batcher import Batcher

LONG = 600.0  # seconds: a wait that never passes in these tests, so only a full batch (or a held model) decides


class HeldPredict:
    """Row i's answer is [sum of its pixels]; the first call blocks until `release` is set."""

    def __init__(self):
        self.calls: list[int] = []
        self.entered, self.release = threading.Event(), threading.Event()

    def __call__(self, images: np.ndarray) -> np.ndarray:
        self.calls.append(len(images))
        if len(self.calls) == 1:
            self.entered.set()
            assert self.release.wait(60), "the test never released the model"
        return images.reshape(len(images), -1).sum(axis=1, keepdims=True).astype(np.float64)


def images(n: int, start: int) -> np.ndarray:
    return np.arange(start, start + n, dtype=np.float64)[:, None, None, None] * np.ones((1, 2, 2, 3))


def answer(future, timeout: float = 60):
    probabilities, queued = future.result(timeout=timeout)
    return probabilities[:, 0].tolist(), queued


def test_a_full_batch_goes_without_waiting_and_a_request_is_never_split():
    predict = HeldPredict()
    predict.release.set()  # not held here
    batcher = Batcher(predict, max_batch_size=4, max_wait_s=LONG)
    try:
        a, b = batcher.submit(images(3, 0)), batcher.submit(images(1, 3))  # 3 + 1 = 4: full
        assert answer(a)[0] == [0.0, 12.0, 24.0] and answer(b)[0] == [36.0]
        c = batcher.submit(images(6, 10))  # larger than the batch: runs alone, whole
        assert answer(c)[0] == [12.0 * i for i in range(10, 16)]
        assert predict.calls == [4, 6]
    finally:
        batcher.close()


def test_a_request_cancelled_while_queued_is_dropped_and_the_batcher_goes_on():
    """Also: requests queued while the model is busy share the next call."""
    predict = HeldPredict()
    batcher = Batcher(predict, max_batch_size=2, max_wait_s=LONG)
    try:
        held = [batcher.submit(images(1, 0)), batcher.submit(images(1, 1))]  # a full batch: the model holds it
        assert predict.entered.wait(60)
        gone = batcher.submit(images(1, 2))
        assert gone.cancel()  # queued, not yet in a batch
        later = [batcher.submit(images(1, 3)), batcher.submit(images(1, 4))]
        predict.release.set()
        assert [answer(f)[0] for f in held + later] == [[0.0], [12.0], [36.0], [48.0]]
        assert gone.cancelled() and predict.calls == [2, 2]
    finally:
        predict.release.set()
        batcher.close()


def test_a_failing_model_call_fails_each_request_of_its_batch():
    def broken(batch):
        raise RuntimeError("out of memory")

    batcher = Batcher(broken, max_batch_size=2, max_wait_s=LONG)
    try:
        futures = [batcher.submit(images(1, 0)), batcher.submit(images(1, 1))]
        for future in futures:
            with pytest.raises(RuntimeError, match="out of memory"):
                future.result(timeout=60)
    finally:
        batcher.close()


def test_a_lone_request_waits_the_configured_wait():
    predict = HeldPredict()
    predict.release.set()
    batcher = Batcher(predict, max_batch_size=8, max_wait_s=0.05)
    try:
        rows, queued = answer(batcher.submit(images(1, 7)))
        assert rows == [84.0] and queued >= 0.05  # served in full, not cut short by an early wake-up
    finally:
        batcher.close()
