"""`python -m job serve` under concurrent clients, checked answer by answer (issue 22): THREADS clients, started
together by a barrier, each send REQUESTS requests of distinct images (one or two per request); every answer must be
the one a lone request got for the same image (every class's probability within 1e-5). One request carries a file
that is not an image: it alone fails (422, naming the file), and the requests around it are unaffected. Bounded: 48
images, 24 concurrent requests, 127.0.0.1 only. That server batches as by default (job/serve/batcher.py).

Dynamic batching (issue 25; docs/serving.md "Dynamic batching"), each made to happen by construction, not by timing:
- gathered: a server whose batch is exactly the images of GATHERED concurrent requests and whose wait is far longer
  than any test, so its first model call holds all of them (the metrics say one call of that many images); every
  answer equals a batching-off server's (1e-5); a request with a bad file beside them fails alone and, being refused
  before it is queued, takes no place in the batch (else the batch would fill without one good request).
- a lone request's own reported queue time (X-Queue-Ms and job_serve_queue_seconds) is at least the configured wait
  and within it plus a thread wake-up.
- a wait of 0 turns batching off: concurrent requests make one model call each."""
from __future__ import annotations

import re
import threading

import pytest

from tests.support.serve_server import ServeProcess, digit_images, get, png_bytes, post_files

THREADS, REQUESTS = 6, 4
ALL_CLASSES = "?top=10"  # the digits run has 10 classes: every probability is compared, not just the top 5
TOLERANCE = 1e-5
BAD = ("notes.png", b"a text file with an image's name\n")


def serving(digits_run, tmp_path_factory, *flags: str):
    return ServeProcess.running(["--run-dir", str(digits_run), *flags], tmp_path_factory.mktemp("serve") / "log")


@pytest.fixture(scope="module")
def server(digits_run, tmp_path_factory):
    with serving(digits_run, tmp_path_factory) as server:
        yield server


@pytest.fixture(scope="module")
def unbatched(digits_run, tmp_path_factory):
    with serving(digits_run, tmp_path_factory, "--max-batch-wait-ms", "0") as server:
        yield server


def metric(server, name: str) -> float:
    """One sample of the server's /metrics (no labels)."""
    reply = get(server.url + "/metrics")
    assert reply.status == 200, reply.body
    found = re.search(rf"^{re.escape(name)} (\S+)$", reply.body.decode(), re.MULTILINE)
    assert found, f"{name} not in /metrics:\n{reply.body.decode()[:3000]}"
    return float(found.group(1))


def concurrently(work: list) -> list:
    """Call each of `work` in its own thread, all released at once; their results in order."""
    barrier = threading.Barrier(len(work) + 1, timeout=60)
    results: list = [None] * len(work)
    failures: list[BaseException] = []

    def run(i: int) -> None:
        try:
            barrier.wait()
            results[i] = work[i]()
        except BaseException as e:  # noqa: BLE001 - reported by the test thread
            failures.append(e)

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(len(work))]
    for thread in threads:
        thread.start()
    barrier.wait()
    for thread in threads:
        thread.join(timeout=300)
    assert not failures and not any(t.is_alive() for t in threads), failures
    return results


def probabilities(prediction: dict) -> dict[int, float]:
    return {c["class_id"]: c["probability"] for c in prediction["top"]}


def test_concurrent_requests_get_the_answers_lone_requests_get(server):
    images, _ = digit_images()
    files = [(f"{i:03d}.png", png_bytes(images[i * 7])) for i in range(THREADS * REQUESTS * 2)]  # distinct images
    alone = {}
    for name, data in files:
        reply = post_files(server.url, [(name, data)], ALL_CLASSES)
        assert reply.status == 200, reply.body
        alone[name] = probabilities(reply.json["predictions"][0])
        assert len(alone[name]) == 10

    # Thread t's request r: one image or two (alternating), from its own slice of the files; thread 0's second
    # request also carries the bad file.
    plans = []
    for t in range(THREADS):
        mine = files[t * REQUESTS * 2:(t + 1) * REQUESTS * 2]
        plans.append([mine[2 * r:2 * r + 1 + (r + t) % 2] + ([BAD] if (t, r) == (0, 1) else [])
                      for r in range(REQUESTS)])
    barrier = threading.Barrier(THREADS + 1, timeout=60)
    answers: dict[tuple[int, int], object] = {}
    failures: list[BaseException] = []

    def client(t: int) -> None:
        try:
            barrier.wait()
            for r, request in enumerate(plans[t]):
                answers[t, r] = post_files(server.url, request, ALL_CLASSES, timeout=120)
        except BaseException as e:  # noqa: BLE001 - reported by the test thread
            failures.append(e)

    threads = [threading.Thread(target=client, args=(t,), daemon=True) for t in range(THREADS)]
    for thread in threads:
        thread.start()
    barrier.wait()  # every client sends at once
    for thread in threads:
        thread.join(timeout=300)
    assert not failures and not any(t.is_alive() for t in threads), failures

    checked = 0
    for (t, r), reply in sorted(answers.items()):
        request = plans[t][r]
        if BAD in request:
            assert reply.status == 422 and reply.error.startswith("notes.png:"), reply.body
            continue
        assert reply.status == 200, (t, r, reply.body)
        predictions = reply.json["predictions"]
        assert [p["file"] for p in predictions] == [name for name, _ in request]
        for name, p in zip((name for name, _ in request), predictions):
            got = probabilities(p)
            assert got.keys() == alone[name].keys(), name
            worst = max(abs(got[k] - alone[name][k]) for k in got)
            assert worst <= TOLERANCE, (name, worst, got, alone[name])
            checked += 1
    assert len(answers) == THREADS * REQUESTS
    expected = sum(len(req) for plan in plans for req in plan if BAD not in req)
    assert checked == expected and checked >= THREADS * REQUESTS


# ---------------------------------------------------------------------------------------------- dynamic batching
GATHERED, PER_REQUEST = 6, 2  # 6 concurrent requests of 2 images: exactly one batch of 12


@pytest.mark.timeout(600)
def test_concurrent_requests_share_one_model_call_and_get_their_own_answers(digits_run, tmp_path_factory,
                                                                           unbatched):
    images, _ = digit_images()
    requests = [[(f"g{r}-{i}.png", png_bytes(images[300 + 5 * (r * PER_REQUEST + i)])) for i in range(PER_REQUEST)]
                for r in range(GATHERED)]
    alone = {}
    for request in requests:
        for name, data in request:
            reply = post_files(unbatched.url, [(name, data)], ALL_CLASSES)
            assert reply.status == 200, reply.body
            alone[name] = probabilities(reply.json["predictions"][0])
    bad_request = [("good-beside-bad.png", png_bytes(images[299])), BAD]

    # The batch closes only when full (a wait of 10 minutes never passes here): the GATHERED requests fill it.
    with serving(digits_run, tmp_path_factory, "--max-batch-size", str(GATHERED * PER_REQUEST),
                 "--max-batch-wait-ms", "600000") as server:
        replies = concurrently([lambda request=request: post_files(server.url, request, ALL_CLASSES, timeout=240)
                                for request in requests + [bad_request]])
        *good, bad = replies
        assert bad.status == 422 and bad.error.startswith("notes.png:"), bad.body
        for request, reply in zip(requests, good):
            assert reply.status == 200, reply.body
            predictions = reply.json["predictions"]
            assert [p["file"] for p in predictions] == [name for name, _ in request]
            for (name, _), p in zip(request, predictions):
                got = probabilities(p)
                worst = max(abs(got[k] - alone[name][k]) for k in alone[name])
                assert got.keys() == alone[name].keys() and worst <= TOLERANCE, (name, worst)
            assert float(reply.headers["x-queue-ms"]) >= 0
        # one model call held every image (the load's warm-up call does not go through the batcher)
        assert metric(server, "job_serve_batch_size_count") == 1
        assert metric(server, "job_serve_batch_size_sum") == GATHERED * PER_REQUEST
        assert metric(server, "job_serve_images_total") == GATHERED * PER_REQUEST
        assert metric(server, "job_serve_queue_seconds_count") == GATHERED


def test_a_lone_request_reports_a_queue_time_within_the_configured_wait(digits_run, tmp_path_factory):
    wait_ms = 200
    with serving(digits_run, tmp_path_factory, "--max-batch-wait-ms", str(wait_ms)) as server:
        images, _ = digit_images()
        reply = post_files(server.url, [("lone.png", png_bytes(images[5]))])
        assert reply.status == 200, reply.body
        queued = float(reply.headers["x-queue-ms"])
        # At least the wait (alone, nobody filled the batch); at most the wait plus a thread's wake-up, with room
        # for a loaded machine: a wait counted twice, or per request, would be over.
        assert wait_ms <= queued < 2 * wait_ms, queued
        assert metric(server, "job_serve_queue_seconds_count") == 1
        assert abs(metric(server, "job_serve_queue_seconds_sum") * 1000 - queued) < 0.01
        assert metric(server, "job_serve_batch_size_count") == 1


def test_a_wait_of_zero_turns_batching_off(unbatched):
    images, _ = digit_images()
    before = metric(unbatched, "job_serve_batch_size_count"), metric(unbatched, "job_serve_batch_size_sum")
    replies = concurrently([lambda i=i: post_files(unbatched.url, [(f"{i}.png", png_bytes(images[400 + i]))])
                            for i in range(6)])
    assert all(reply.status == 200 and "x-queue-ms" in reply.headers for reply in replies)
    after = metric(unbatched, "job_serve_batch_size_count"), metric(unbatched, "job_serve_batch_size_sum")
    assert (after[0] - before[0], after[1] - before[1]) == (6, 6)  # one model call per request, one image each
    assert "batching: off (a wait of 0)" in unbatched.log()
