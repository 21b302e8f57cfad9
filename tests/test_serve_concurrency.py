"""`python -m job serve` under concurrent clients, checked answer by answer (issue 22): THREADS clients, started
together by a barrier, each send REQUESTS requests of distinct images (one or two per request); every answer must be
the one a lone request got for the same image (every class's probability within 1e-5). One request carries a file
that is not an image: it alone fails (422, naming the file), and the requests around it are unaffected. Bounded: 48
images, 24 concurrent requests, 127.0.0.1 only."""
from __future__ import annotations

import threading

import pytest

from serve_server import ServeProcess, digit_images, png_bytes, post_files

THREADS, REQUESTS = 6, 4
ALL_CLASSES = "?top=10"  # the digits run has 10 classes: every probability is compared, not just the top 5
TOLERANCE = 1e-5
BAD = ("notes.png", b"a text file with an image's name\n")


@pytest.fixture(scope="module")
def server(digits_run, tmp_path_factory):
    server = ServeProcess.start(["--run-dir", str(digits_run)], log_path=tmp_path_factory.mktemp("serve") / "log")
    try:
        server.wait_ready(timeout=300)
        yield server
    finally:
        server.stop()
    assert server.process.returncode == 0 and "Traceback" not in server.log(), server.log()[-3000:]


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
