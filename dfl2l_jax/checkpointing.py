"""Checkpoints: one small wrapper around orbax's CheckpointManager.

Everything the project saves is a pytree of arrays, saved synchronously (the
states here are small and every save is followed by more work that may be
killed). Orbax writes each step to a temporary folder and renames it when
complete, so a run killed during a save leaves no step that looks finished.
A step that is present but unreadable (truncated or corrupted files) raises
`CheckpointError` naming the folder.

Several hosts: every process calls `save` and `restore` (orbax coordinates the
writes of a sharded array's shards and needs all of them); the small JSON files
are written by process 0 only. The workdir must be one shared file system
(NFS, a gcsfuse mount) seen by every host at the same path.

Beside the checkpoints, `write_spec`/`check_spec` keep a small JSON description
of what produced them (architecture, config), so that a workdir made by another
configuration is rejected instead of silently reused.
"""

import json
import os
import shutil

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from dfl2l_jax import config_lib
from dfl2l_jax.errors import CheckpointError


class Checkpointer:
  """Saves and restores numbered pytree checkpoints in one directory."""

  def __init__(self, directory, max_to_keep=2):
    self.directory = os.path.abspath(directory)
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, create=True, enable_async_checkpointing=False)
    self._manager = ocp.CheckpointManager(self.directory, options=options)

  def latest_step(self):
    return self._manager.latest_step()

  def save(self, step, tree):
    tree = _host_local_to_numpy(tree)
    self._manager.save(int(step), args=ocp.args.StandardSave(tree), force=True)
    self._manager.wait_until_finished()

  def restore(self, step, template):
    """Restores `step` into numpy arrays shaped like `template`; with template
    None, as saved (no structure check)."""
    target = None if template is None else jax.tree.map(
        lambda x: np.zeros(np.shape(x), np.asarray(x).dtype), template)
    try:
      restored = self._manager.restore(int(step), args=ocp.args.StandardRestore(target))
    except Exception as e:  # orbax raises many types for damaged files.
      raise CheckpointError(
          f"checkpoint step {step} in {self.directory} cannot be read "
          f"({type(e).__name__}: {str(e)[:300]}). It is truncated or corrupt: delete "
          f"{os.path.join(self.directory, str(step))} to fall back to an earlier "
          "step, or use a new workdir.") from e
    if template is None:
      return jax.tree.map(np.asarray, restored)
    _check_like(restored, template, self.directory)
    return restored

  def close(self):
    self._manager.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


def _host_local_to_numpy(tree):
  """With several processes, arrays that live on one process only become numpy.

  Orbax refuses to save a host-local jax.Array in a multi-process job (it cannot
  tell which process's copy is the value). Such arrays here (an initialisation
  computed on one device, a step counter) hold the same value on every process,
  and orbax writes a numpy array once, from the primary process. Global arrays
  (spanning several processes' devices) are left to orbax, which writes each
  process's shards.
  """
  if jax.process_count() == 1:
    return tree
  def convert(x):
    if isinstance(x, jax.Array) and x.is_fully_addressable:
      return np.asarray(x)
    return x
  return jax.tree.map(convert, tree)


def _check_like(restored, template, where):
  got = jax.tree.structure(restored)
  want = jax.tree.structure(template)
  if got != want:
    raise CheckpointError(f"checkpoint in {where} has structure {got}, expected {want}")
  for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(template)):
    if np.shape(a) != np.shape(b):
      raise CheckpointError(
          f"checkpoint in {where} holds an array of shape {np.shape(a)} where "
          f"{np.shape(b)} was expected: it was written by another configuration")


def save_tree(directory, tree):
  """Saves one pytree (a final result such as a meta-initialisation), replacing
  whatever `directory` held."""
  if os.path.exists(directory) and jax.process_index() == 0:
    shutil.rmtree(directory)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(f"save_tree:{directory}")
  with Checkpointer(directory, max_to_keep=1) as ckpt:
    ckpt.save(0, tree)


def load_tree(directory, template):
  """Loads a pytree written by `save_tree`."""
  if not os.path.isdir(directory):
    raise CheckpointError(f"no checkpoint at {directory}")
  with Checkpointer(directory, max_to_keep=1) as ckpt:
    step = ckpt.latest_step()
    if step is None:
      raise CheckpointError(f"{directory} holds no complete checkpoint")
    return ckpt.restore(step, template)


def write_json_atomic(path, obj):
  """Writes JSON to `path` through a temporary file and a rename (process 0 only)."""
  if jax.process_index() != 0:
    return
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=1, sort_keys=True)
    f.write("\n")
  os.replace(tmp, path)


def write_spec(directory, spec):
  os.makedirs(directory, exist_ok=True)
  write_json_atomic(os.path.join(directory, "spec.json"), spec)


def check_spec(directory, spec, what):
  """Raises CheckpointError if `directory/spec.json` differs from `spec`.

  Returns True when a matching spec exists, False when there is none.
  """
  path = os.path.join(directory, "spec.json")
  if not os.path.exists(path):
    return False
  try:
    with open(path) as f:
      found = json.load(f)
  except (OSError, ValueError) as e:
    raise CheckpointError(f"{path} is unreadable ({e}); delete {directory} or use a new workdir")
  spec = json.loads(json.dumps(spec))  # tuples -> lists, as stored.
  if found != spec:
    diffs = config_lib.dict_diff(found, spec)
    raise CheckpointError(
        f"{directory} holds a {what} made with another configuration "
        f"({'; '.join(diffs[:6])}). Use a new --workdir, or delete {directory}.")
  return True
