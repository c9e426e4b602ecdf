"""Metric logging and progress reporting for long loops."""

import json
import math
import os
import sys
import time

import logging

import jax
import numpy as np

# The library logs to this logger and installs no handler; launch/ does.
log = logging.getLogger("dfl2l_jax")


def install_stderr_handler(level=logging.INFO):
  """Shows the library's progress lines on stderr (for scripts and launchers).

  Only process 0 of a multi-host job logs; the others stay silent (call this
  after `sharding.initialize_distributed`).
  Calling it again changes nothing (a script that runs main() twice logs each line once).
  """
  if any(isinstance(h, (_StderrHandler, logging.NullHandler)) for h in log.handlers):
    return
  if jax.process_index() != 0:
    log.addHandler(logging.NullHandler())
    log.propagate = False
    return
  handler = _StderrHandler()
  handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
  log.setLevel(level)
  log.addHandler(handler)
  log.propagate = False


class _StderrHandler(logging.StreamHandler):
  """Writes to whatever sys.stderr is when a line is logged (not the one at install time,
  which a test harness may have closed since)."""

  @property
  def stream(self):
    return sys.stderr

  @stream.setter
  def stream(self, _):
    pass


def log_info(msg, *args):
  log.info(msg, *args)


class JsonlWriter:
  """`write_scalars(step, dict)` appends one JSON line per call to `path`.

  In a multi-host job only process 0 writes (the others' calls do nothing).
  """

  def __init__(self, path):
    self.path = path
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)

  def write_scalars(self, step, scalars):
    if jax.process_index() != 0:
      return
    row = {"step": int(step), "time": round(time.time(), 3)}
    for k, v in scalars.items():
      v = float(np.asarray(v))
      row[k] = v if math.isfinite(v) else str(v)
    with open(self.path, "a") as f:
      f.write(json.dumps(row) + "\n")


class TensorBoardWriter:
  """`write_scalars(step, dict)` as TensorBoard event files in `logdir` (tensorboardX).

  For watching long runs: `tensorboard --logdir WORKDIR/tensorboard`. The scalars are
  the ones metrics.jsonl gets; each call is flushed, so a killed run loses nothing
  written. Only process 0 writes; non-finite values are skipped (TensorBoard plots
  them badly; metrics.jsonl keeps them).
  """

  def __init__(self, logdir):
    self.logdir = logdir
    self._writer = None

  def write_scalars(self, step, scalars):
    if jax.process_index() != 0:
      return
    if self._writer is None:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      self._writer = SummaryWriter(self.logdir, flush_secs=10)
    for k, v in scalars.items():
      v = float(np.asarray(v))
      if math.isfinite(v):
        self._writer.add_scalar(k, v, int(step))
    self._writer.flush()

  def close(self):
    if self._writer is not None:
      self._writer.close()
      self._writer = None


class MultiWriter:
  """Writes every call to each of `writers`."""

  def __init__(self, *writers):
    self.writers = writers

  def write_scalars(self, step, scalars):
    for w in self.writers:
      w.write_scalars(step, scalars)

  def close(self):
    for w in self.writers:
      getattr(w, "close", lambda: None)()


def workdir_writer(workdir):
  """The writer of a run: workdir/metrics.jsonl and TensorBoard events in
  workdir/tensorboard, the same scalars in both. Close it when the run ends."""
  return MultiWriter(JsonlWriter(os.path.join(workdir, "metrics.jsonl")),
                     TensorBoardWriter(os.path.join(workdir, "tensorboard")))


class NullWriter:
  def write_scalars(self, step, scalars):
    del step, scalars


def _fmt_seconds(s):
  s = int(round(s))
  if s < 60:
    return f"{s}s"
  if s < 3600:
    return f"{s // 60}m{s % 60:02d}s"
  return f"{s // 3600}h{(s % 3600) // 60:02d}m"


class Progress:
  """Logs `name: done/total (pct), elapsed, ETA` as a loop advances.

  The rate is measured from the first update after `start` (which includes
  compilation), so the ETA becomes accurate after the second chunk.
  """

  def __init__(self, name, total, start=0, log=None):
    self.name, self.total, self.start = name, total, start
    self.log = log or log_info
    self.t0 = time.perf_counter()
    self.first = None  # (time, done) at the first update: excludes compile time.

  def update(self, done, extra=""):
    now = time.perf_counter()
    msg = f"{self.name}: {done}/{self.total} ({100.0 * done / max(self.total, 1):.0f}%)"
    msg += f", {_fmt_seconds(now - self.t0)} elapsed"
    if self.first is None:
      self.first = (now, done)
    elif done > self.first[1]:
      rate = (done - self.first[1]) / (now - self.first[0])
      msg += f", ETA {_fmt_seconds((self.total - done) / rate)}"
    if extra:
      msg += f" | {extra}"
    self.log(msg)
