"""The Python loop around compiled chunks: resume, metrics, progress, checkpoints.

A phase (zoo training, offline or online fusion) is a state -> state function
compiled per chunk of steps. `run_chunked` restores the latest checkpoint if
there is one, runs the remaining chunks, and after each chunk fetches the chunk's
metrics in one `device_get`, writes them, checks them for NaN/Inf, saves a
checkpoint and logs progress with an ETA. Chunk boundaries depend only on
`chunk_steps`, so an interrupted and resumed run repeats exactly the same
computations as an uninterrupted one. `with_rate_halving` restarts a loop that
diverged with its rates halved.
"""

import json
import math
import os
from typing import Callable, Optional

import jax
import numpy as np

from dfl2l_jax import checkpointing
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


def attempt_name(name, halvings):
  """The name of the loop `name` after `halvings` halvings of its rates."""
  return name if halvings == 0 else f"{name}_rates_x{0.5 ** halvings:g}"


MARKER = "diverged.json"  # in an attempt's folder: it diverged, with this spec


def with_rate_halving(run_attempt: Callable, *, name: str, halvings: int,
                      spec_of: Callable, folder_of: Optional[Callable] = None,
                      halvings_from: str = ""):
  """Runs a training loop; when it diverges, again from step 0 with its rates halved.

  A policy any method's training may use: it looks at nothing but the loop raising
  DivergenceError (a non-finite training metric), never a validation or test task.
  Attempt k (k = 0..halvings) runs with every rate times 0.5^k under its own name
  (`attempt_name`: `name`, then `name`_rates_x0.5, ...), so each keeps its own
  checkpoints. A diverged attempt leaves a MARKER in its folder recording the error
  and its spec, so that a resumed run skips it instead of diverging again.

  Args:
    run_attempt: `(scale, attempt) -> result`: the loop from its start with every rate
      multiplied by `scale`, checkpointed under the name `attempt`; raises
      DivergenceError when it diverges.
    name: the loop's name.
    halvings: restarts allowed after the first attempt.
    spec_of: `scale -> spec`, the JSON-able settings an attempt's state depends on; a
      marker whose spec differs (another configuration) is ignored.
    folder_of: `attempt -> folder` of the attempt's checkpoints, where its marker
      goes; None: no markers (a run without a workdir).
    halvings_from: where `halvings` is set (a config field), named by the final error.

  Returns:
    (result of the first attempt that finished, its rate scale).
  """
  error = None
  for k in range(halvings + 1):
    scale, attempt = 0.5 ** k, attempt_name(name, k)
    marker = None if folder_of is None else os.path.join(folder_of(attempt), MARKER)
    spec = spec_of(scale)
    error = _diverged_before(marker, spec)
    if error is None:
      try:
        return run_attempt(scale, attempt), scale
      except DivergenceError as e:
        error = e
        _record_divergence(marker, spec, e)
    else:
      metrics_lib.log.info("%s: skipped, it diverged before (%s)", attempt, marker)
    if k < halvings:
      metrics_lib.log.warning(
          "%s diverged (%s); restarting from step 0 with the rates halved (x%g, attempt %d "
          "of %d)", attempt, error, 0.5 ** (k + 1), k + 2, halvings + 1)
  if not halvings:
    raise DivergenceError(str(error))
  where = f"; {halvings_from}" if halvings_from else ""
  raise DivergenceError(
      f"{error} (after {halvings} halving{'s' if halvings != 1 else ''} of the rates{where})")


def _diverged_before(marker, spec):
  """The error recorded by an earlier attempt with this exact spec, or None."""
  if marker is None or not os.path.exists(marker):
    return None
  try:
    with open(marker) as f:
      found = json.load(f)
    return found["error"] if found["spec"] == json.loads(json.dumps(spec)) else None
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise CheckpointError(f"{marker} is unreadable ({e!r}); delete it to run that attempt "
                          "again") from e


def _record_divergence(marker, spec, error):
  if marker is None:
    return
  os.makedirs(os.path.dirname(marker), exist_ok=True)
  checkpointing.write_json_atomic(marker, {"error": str(error), "spec": spec})
