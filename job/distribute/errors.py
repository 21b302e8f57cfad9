"""Recognising "another worker is gone" among the errors a collective raises, for every backend.

The trainer maps such an error to job.errors.EXIT_PEER_LOST, so the orchestrator restarts the whole job (which then
resumes from the last committed checkpoint) instead of counting it as a crash of this worker.
"""
from __future__ import annotations

import tensorflow as tf

# tf.distribute collectives: a peer that is down (Unavailable), a collective that timed out (DeadlineExceeded), and
# collectives aborted by the strategy's peer health check or after another collective failed (Cancelled/Aborted).
_PEER_LOST_TF_ERRORS = (
    tf.errors.UnavailableError,
    tf.errors.DeadlineExceededError,
    tf.errors.CancelledError,
    tf.errors.AbortedError,
)

# Message fragments of collectives failing because a peer went away. Horovod surfaces every failure as a generic
# UnknownError, so only the text tells a lost peer from a bug (messages measured with 0.28.1 + gloo).
_PEER_LOST_MESSAGES = (
    "collective ops is aborted",  # TF: collectives aborted after a failed one or a failed peer health check
    "cluster check alive failed",
    "connection reset by peer",  # gRPC / gloo TCP: the peer process died
    "connection closed by peer",
    "socket closed",
    "failed to connect to",
    "horovod has been shut down",  # Horovod: its background loop stopped after a collective failed
    "timed out waiting",  # gloo: HOROVOD_GLOO_TIMEOUT_SECONDS passed (peer hung or partitioned)
)


def is_peer_lost_error(exc: BaseException) -> bool:
    """True when `exc` (or an exception it was raised from) says another worker died or a collective timed out."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, _PEER_LOST_TF_ERRORS):
            return True
        if type(exc).__name__ == "HorovodInternalError":
            return True
        message = str(exc).lower()
        if any(fragment in message for fragment in _PEER_LOST_MESSAGES):
            return True
        exc = exc.__cause__ or exc.__context__
    return False
