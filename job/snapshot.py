"""Checkpoint writes that block training only while the variables are copied into host memory.

`SnapshotWriter(ckpt).write(prefix)` copies every variable of a tf.train.Checkpoint into a host-memory twin (one
compiled call, so on a GPU one device-to-host copy per variable) and returns; an ordinary `tf.train.Checkpoint.write`
of the twins then runs on a background thread. The twins sit in a tree with the checkpoint's own object graph (the
same child names, the same shared objects) and carry the live variables' names (the object graph records them), so
the files are byte for byte the ones `ckpt.write(prefix)` would have written, and `ckpt.read` restores them.

At most one write is in flight: a write asked for while the previous one is still being written waits for it (logged),
so memory holds one snapshot, which the twins are: they are made at the first write and reused.

Why not TensorFlow's own `tf.train.CheckpointOptions(experimental_enable_async_checkpoint=True)`, which does the same:
with Keras 3 variables its second write fails ("tf.function only supports singleton tf.Variables created on the first
call": keras/src/backend/tensorflow/core.py `_copy_trackable_to_cpu` creates a new tf.Variable at every copy, inside
TensorFlow's compiled copy function). Checked with TF 2.21 and Keras 3.15; tests/unit/test_snapshot.py keeps checking
it, so the day it works this module can go.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

import keras
import tensorflow as tf
from tensorflow.python.checkpoint.util import get_full_name  # the name a checkpoint records for a variable
from tensorflow.python.trackable.base import Trackable  # the base class TF documents for custom trackables

log = logging.getLogger(__name__)


class SnapshotError(Exception):
    """The checkpoint cannot be snapshotted (it holds state other than variables)."""


@dataclass
class Snapshot:
    """One background write: `done` is set when it ends; `error` is why it failed, if it did."""
    prefix: str
    done: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None

    def wait(self, timeout: float | None = None) -> bool:
        return self.done.wait(timeout)


class _Node(Trackable):
    """A node of the twin tree: no state of its own, the children of the node it stands for."""

    def __init__(self, children: dict[str, Trackable]):
        self._twin_children = children

    def _trackable_children(self, save_type="checkpoint", **kwargs):
        return dict(self._twin_children)


def _live_variable(node) -> tf.Variable | None:
    """The tf.Variable (or distributed variable) holding a node's value; None if the node is no variable."""
    if isinstance(node, keras.Variable):
        return node.value
    if isinstance(node, tf.Variable):
        return node
    return None


def _has_own_state(node) -> bool:
    """True if the node would write tensors of its own that are not a variable's (a lookup table, an iterator)."""
    kind = type(node)
    return (kind._serialize_to_tensors is not Trackable._serialize_to_tensors
            or kind._gather_saveables_for_checkpoint is not Trackable._gather_saveables_for_checkpoint)


class _Twins:
    """Host-memory twins of a checkpoint's variables, in a tree shaped like its object graph."""

    def __init__(self, ckpt: tf.train.Checkpoint):
        pairs: list[tuple[tf.Variable, tf.Variable, bool]] = []  # (twin, live, whether live is in host memory)
        made: dict[int, Trackable] = {}  # id(original) -> its twin: shared objects stay shared

        def twin(node, path: str) -> Trackable:
            if id(node) in made:
                return made[id(node)]
            live = _live_variable(node)
            if live is not None:
                with tf.device("/cpu:0"):  # the live variable's name: the object graph records it (full_name)
                    copy = tf.Variable(tf.zeros(live.shape, live.dtype), trainable=False, name=get_full_name(live))
                # A variable in host memory already would only share its buffer with its twin (copy-on-write),
                # moving the copy into the next training step: it is copied explicitly, so the snapshot pays for it.
                pairs.append((copy, live, "CPU" in live.device.upper() or not live.device))
                made[id(node)] = copy
                return copy
            if _has_own_state(node):
                raise SnapshotError(f"{path} ({type(node).__name__}) holds checkpointed state that is not a variable; "
                                    f"snapshot checkpoints cannot copy it")
            made[id(node)] = _Node({})  # before the children: a cycle back to it finds it
            made[id(node)]._twin_children.update(
                (name, twin(child, f"{path}/{name}")) for name, child in tf.train.TrackableView.children(node).items())
            return made[id(node)]

        root = {name: twin(child, name) for name, child in tf.train.TrackableView.children(ckpt).items()}
        self.checkpoint = tf.train.Checkpoint(**root)

        @tf.function(autograph=False)
        def copy() -> tf.Tensor:
            for copy_of, live, on_host in pairs:
                value = live.read_value()
                copy_of.assign(tf.raw_ops.DeepCopy(x=value) if on_host else value)
            return tf.constant(len(pairs))  # a tf.function returns once all its assignments have run

        self.copy = copy


class SnapshotWriter:
    """Snapshots of one tf.train.Checkpoint, written in the background one at a time."""

    def __init__(self, ckpt: tf.train.Checkpoint):
        self.ckpt = ckpt
        self._twins: _Twins | None = None  # made at the first snapshot, when every optimizer slot exists
        self._last: Snapshot | None = None
        self.waited_seconds = 0.0  # how long the last take() waited for the write before it

    def take(self) -> None:
        """Copy the variables into host memory (waiting first for a write still in flight). Every worker of a
        multi-worker run takes each snapshot: reading a variable synchronised on read all-reduces it."""
        self.waited_seconds = 0.0
        if self._last is not None and not self._last.done.is_set():
            log.info("waiting for the background write of %s before the next snapshot (one at a time)",
                     self._last.prefix)
            began = time.perf_counter()
            self._last.wait()
            self.waited_seconds = time.perf_counter() - began
            log.info("waited %.2f s for the write of %s", self.waited_seconds, self._last.prefix)
        if self._twins is None:
            self._twins = _Twins(self.ckpt)
        self._twins.copy().numpy()

    def write(self, prefix: str) -> Snapshot:
        """Take a snapshot and start writing it to `prefix` in the background; returns at once after the copy."""
        self.take()
        snapshot = Snapshot(prefix=prefix)
        self._last = snapshot
        threading.Thread(target=self._write, args=(snapshot,), name=f"write {prefix}", daemon=True).start()
        return snapshot

    def wait(self) -> None:
        """Until the write in flight, if any, has ended."""
        if self._last is not None:
            self._last.wait()

    def _write(self, snapshot: Snapshot) -> None:
        try:
            self._twins.checkpoint.write(snapshot.prefix)
        except BaseException as e:  # noqa: BLE001 - handed to whoever waits for the snapshot
            snapshot.error = e
        finally:
            snapshot.done.set()
