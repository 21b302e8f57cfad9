"""Stop requests (job/stopping.py): what one worker asks, what all agree on, and that preempting wins."""
import signal

import numpy as np
import pytest

from job.stopping import FINISH, PREEMPT, StopRequest


class TwoWorkers:
    """A backend of two workers whose other worker's votes are given: all_reduce_sum adds them."""
    num_workers = 2

    def __init__(self, other: dict[str, float]):
        self.other = other

    def all_reduce_sum(self, values):
        return {k: v + self.other[k] for k, v in values.items()}


def test_nothing_asked_nothing_agreed():
    stop = StopRequest()
    stop.agree((0.0, 0.0))
    assert not stop and not stop.preempted
    np.testing.assert_array_equal(stop.votes.numpy(), [0, 0])


def test_a_finish_request_becomes_the_agreement_once_summed():
    stop = StopRequest()
    stop.request("early stopping")
    assert not stop, "a request alone stops nothing: all workers must agree first"
    np.testing.assert_array_equal(stop.votes.numpy(), [0, 1])
    stop.agree(stop.votes)
    assert stop and not stop.preempted and stop.reason == "early stopping"


def test_preempting_wins_over_finishing_and_a_later_finish_does_not_undo_it():
    stop = StopRequest()
    stop.request("pruned", FINISH)
    stop.request("SIGTERM received", PREEMPT)
    assert stop.kind == PREEMPT and stop.reason == "SIGTERM received"
    stop.request("early stopping", FINISH)
    assert stop.kind == PREEMPT
    stop.agree((1.0, 1.0))
    assert stop.preempted
    stop.agree((0.0, 1.0))
    assert stop.preempted


def test_another_workers_request_reaches_this_one_through_the_sum(caplog):
    stop = StopRequest()
    stop.agree((0.0, 1.0))  # the other worker's finish, summed by a step
    assert stop and not stop.preempted and stop.kind == ""
    assert "another worker was asked to stop" in caplog.text


def test_settle_sums_the_votes_between_steps():
    stop = StopRequest()
    stop.settle(TwoWorkers({"preempt": 1.0, "finish": 0.0}))
    assert stop.preempted
    quiet = StopRequest()
    quiet.settle(TwoWorkers({"preempt": 0.0, "finish": 0.0}))
    assert not quiet


def test_a_signal_asks_to_preempt_and_a_second_one_interrupts():
    stop = StopRequest()
    stop._on_signal(signal.SIGTERM, None)
    assert stop.kind == PREEMPT and stop.reason == "SIGTERM received"
    with pytest.raises(KeyboardInterrupt):
        stop._on_signal(signal.SIGINT, None)
