"""Distributed backends without processes: the version table, cluster discovery from the environment, and which
errors mean a lost peer (the two-process runs: tests/integration/test_distribute.py)."""
from __future__ import annotations

import json
import os

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

from job.distribute.errors import is_peer_lost_error  # noqa: E402
from job.distribute.multiworker import tf_config_from_env, worker_position  # noqa: E402
from job.distribute.versions import check_version_combo, check_versions  # noqa: E402
from job.errors import ConfigError, UserError  # noqa: E402

# ---------------------------------------------------------------------------------------------------- versions


def test_supported_combination_passes():
    check_version_combo("horovod", "2.21.0", "3.15.1", "0.28.1")
    check_version_combo("multiworker", "2.21.3", "3.10.0")


def test_installed_versions_are_supported():
    check_versions("multiworker")


@pytest.mark.parametrize(
    "backend,tf_version,keras_version,horovod_version,named",
    [
        ("horovod", "2.20.0", "3.15.1", "0.28.1", "tensorflow 2.20.0"),
        ("multiworker", "2.21.0", "2.15.0", None, "keras 2.15.0"),
        ("horovod", "2.21.0", "3.15.1", "0.28.0", "horovod 0.28.0"),
        ("horovod", "2.21.0", "3.15.1", None, "horovod not installed"),
        ("multiworker", None, "3.15.1", None, "tensorflow not installed"),
    ],
)
def test_unsupported_combination_is_refused_in_one_line(backend, tf_version, keras_version, horovod_version, named):
    with pytest.raises(UserError) as info:
        check_version_combo(backend, tf_version, keras_version, horovod_version)
    message = str(info.value)
    assert named in message
    assert "supported: tensorflow ==2.21.* with keras >=3.10,<4" in message
    assert "\n" not in message


# ---------------------------------------------------------------------------------------------------- cluster


def test_indexed_job_env_builds_the_cluster():
    env = {"JOB_COMPLETION_INDEX": "1", "WORKER_HOSTS": "train-0.train:2222, train-1.train:2222"}
    tf_config = tf_config_from_env(env)
    assert tf_config == {"cluster": {"worker": ["train-0.train:2222", "train-1.train:2222"]},
                         "task": {"type": "worker", "index": 1}}
    assert worker_position(tf_config) == (1, 2)


def test_tf_config_wins_and_chief_is_worker_zero():
    tf_config = {"cluster": {"chief": ["c:1"], "worker": ["w0:1", "w1:1"]}, "task": {"type": "worker", "index": 1}}
    env = {"TF_CONFIG": json.dumps(tf_config), "JOB_COMPLETION_INDEX": "0", "WORKER_HOSTS": "x:1"}
    assert tf_config_from_env(env) == tf_config
    assert worker_position(tf_config) == (2, 3)
    assert worker_position({**tf_config, "task": {"type": "chief", "index": 0}}) == (0, 3)


@pytest.mark.parametrize(
    "env,named",
    [
        ({}, "TF_CONFIG, or JOB_COMPLETION_INDEX and WORKER_HOSTS"),
        ({"JOB_COMPLETION_INDEX": "2", "WORKER_HOSTS": "a:1,b:1"}, "lists 2 workers"),
        ({"JOB_COMPLETION_INDEX": "0", "WORKER_HOSTS": "a,b:1"}, "'a' is not host:port"),
        ({"TF_CONFIG": "{not json"}, "TF_CONFIG is not valid"),
        ({"TF_CONFIG": '{"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 3}}'}, "task index 3"),
    ],
)
def test_bad_cluster_env_is_a_config_error(env, named):
    with pytest.raises(ConfigError, match=named):
        tf_config_from_env(env)


# ---------------------------------------------------------------------------------------------------- peer loss


def test_peer_lost_errors_are_recognised():
    assert is_peer_lost_error(tf.errors.UnavailableError(None, None, "recvmsg:Connection reset by peer"))
    assert is_peer_lost_error(tf.errors.DeadlineExceededError(None, None, "collective timed out"))
    horovod_text = "Horovod has been shut down. This was caused by an exception on one of the ranks"
    assert is_peer_lost_error(tf.errors.UnknownError(None, None, horovod_text))
    try:
        try:
            raise tf.errors.UnknownError(None, None, "gloo: Timed out waiting 15000ms for recv operation")
        except tf.errors.UnknownError as e:
            raise RuntimeError("step failed") from e
    except RuntimeError as chained:
        assert is_peer_lost_error(chained)


def test_ordinary_errors_are_not_peer_loss():
    assert not is_peer_lost_error(ValueError("shapes (4, 3) and (5,) are incompatible"))
    assert not is_peer_lost_error(tf.errors.InvalidArgumentError(None, None, "logits and labels must match"))
    assert not is_peer_lost_error(tf.errors.ResourceExhaustedError(None, None, "OOM when allocating tensor"))
