"""The Python loop around compiled chunks: resume, metrics, progress, checkpoints.

A phase (zoo training, offline or online fusion) is a state -> state function
compiled per chunk of steps. `run_chunked` restores the latest checkpoint if
there is one, runs the remaining chunks, and after each chunk fetches the chunk's
metrics in one `device_get`, writes them, checks them for NaN/Inf, saves a
checkpoint and logs progress with an ETA. Chunk boundaries depend only on
`chunk_steps`, so an interrupted and resumed run repeats exactly the same
computations as an uninterrupted one.
"""

import math
from typing import Callable, Optional

import jax
import numpy as np

from dfl2l_jax import metrics as metrics_lib
from dfl2l_jax import sharding as sharding_lib
from dfl2l_jax.errors import CheckpointError, Dfl2lError


class DivergenceError(Dfl2lError, FloatingPointError):
  """A training metric became NaN or Inf."""


def run_chunked(*, name: str, state, total_steps: int, chunk_steps: int,
                run_chunk: Callable, checkpointer=None, writer=None,
                hooks: Optional[Callable] = None, summarize: Optional[Callable] = None,
                to_saved: Optional[Callable] = None, from_saved: Optional[Callable] = None):
  """Runs `run_chunk(state, start, length) -> (state, stacked_metrics)` to the end.

  Args:
    name: phase name, used in logs, metric keys and errors.
    state: the initial state (a pytree with an int `step` field); replaced by
      the latest checkpoint when `checkpointer` has one.
    total_steps: steps of the whole phase.
    chunk_steps: steps per compiled chunk.
    run_chunk: the compiled chunk.
    checkpointer: a `checkpointing.Checkpointer`, or None.
    writer: has `write_scalars(step, dict)`; None for no metrics.
    hooks: called as `hooks(name, step)` after each chunk is saved (tests use
      it to interrupt a run).
    summarize: maps the fetched stacked metrics (numpy) to a dict of scalars;
      default: the mean over the chunk of each metric.
    to_saved: maps the state to what is checkpointed (default: the state); the
      zoo trainer cuts off its sharding padding here, so checkpoints do not
      depend on the device count.
    from_saved: maps a restored checkpoint (numpy arrays shaped like
      `to_saved(state)`) back to a state on the devices (default: device_put).

  Returns:
    The final state.
  """
  start = 0
  to_saved = to_saved or (lambda st: st)
  from_saved = from_saved or jax.device_put
  if checkpointer is not None and checkpointer.latest_step() is not None:
    start = int(checkpointer.latest_step())
    if start > total_steps:
      raise CheckpointError(
          f"{name}: checkpoint at step {start} in {checkpointer.directory} is past the "
          f"phase's {total_steps} steps: it belongs to another configuration")
    state = from_saved(checkpointer.restore(start, to_saved(state)))
    if int(state.step) != start:
      raise CheckpointError(
          f"{name}: checkpoint {start} holds step {int(state.step)}; it is inconsistent")
    metrics_lib.log.info("%s: resumed from step %d (%s)", name, start,
                             checkpointer.directory)
  writer = writer or metrics_lib.NullWriter()
  summarize = summarize or (lambda m: {k: np.mean(v) for k, v in m.items()})
  progress = metrics_lib.Progress(name, total_steps, start)
  while start < total_steps:
    length = min(chunk_steps, total_steps - start)
    state, chunk_metrics = run_chunk(state, start, length)
    start += length
    scalars = summarize(sharding_lib.to_host(chunk_metrics))
    bad = [k for k, v in scalars.items() if not math.isfinite(float(v))]
    if bad:
      raise DivergenceError(
          f"{name}: {', '.join(bad)} became non-finite in the chunk ending at step "
          f"{start}; lower the learning rates or check the inputs")
    writer.write_scalars(start, {f"{name}/{k}": v for k, v in scalars.items()})
    if checkpointer is not None:
      checkpointer.save(start, to_saved(state))
    progress.update(start, ", ".join(f"{k}={float(v):.4g}" for k, v in scalars.items()))
    if hooks is not None:
      hooks(name, start)
  return state
