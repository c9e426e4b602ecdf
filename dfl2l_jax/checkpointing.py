"""Checkpoints: one small wrapper around orbax's CheckpointManager.

`Checkpointer` saves numbered pytrees of arrays synchronously and restores them. A
run killed during a save leaves no step that looks finished; a step that is present
but unreadable raises `CheckpointError` naming the folder. After each save, process 0
writes the sha256 of every file of the step to `<directory>/checksums/<step>.json`,
and `restore` checks them before orbax reads anything (a step without a manifest is
restored unverified, with a warning). `write_spec`/`check_spec` keep a JSON
description of what produced the checkpoints, so that a workdir made by another
configuration, or holding checkpoints but no spec.json, is rejected.

A save that fails for a full disk or a read-only folder removes what it had written
(orbax's `<step>.orbax-checkpoint-tmp` folder) and raises one `errors.WriteError` line;
orbax's own log lines of that failure are held back, and other failures pass through.

Several hosts: every process calls `save` and `restore`; the workdir must be one
shared file system seen by every host at the same path.
Why and details: docs/implementation.md, "checkpointing.py".
"""

import contextlib
import glob
import hashlib
import json
import logging
import os
import shutil
import sys
import traceback

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from dfl2l_jax import config_lib
from dfl2l_jax.errors import CheckpointError, write_error

log = logging.getLogger("dfl2l_jax")

CHECKSUMS_DIR = "checksums"  # <directory>/checksums/<step>.json, one manifest a step.
_CHUNK = 1 << 20
_warned_unverified = set()  # (directory, step) already warned about.


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
    """Saves `tree` as `step` (synchronously), then writes its checksum manifest."""
    step = int(step)
    tree = _host_local_to_numpy(tree)
    _drop_closed_loop_callbacks()
    try:
      with _orbax_errors_held() as held:
        self._manager.save(step, args=ocp.args.StandardSave(tree), force=True)
        self._manager.wait_until_finished()
        if jax.process_index() == 0:
          manifest = _hash_folder(self._step_dir(step))
          os.makedirs(os.path.join(self.directory, CHECKSUMS_DIR), exist_ok=True)
          write_json_atomic(self._manifest_path(step), {"sha256": manifest})
          self._prune_manifests()
    except Exception as e:  # orbax raises ValueError for tensorstore's write errors.
      error = write_error(e, f"checkpoint step {step} in {self.directory}",
                          "Earlier checkpoints and results are unchanged")
      if error is None:
        _emit(held)
        raise
      self._remove_unfinished(step)
      raise error from None
    _emit(held)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices(f"checksums:{self.directory}:{step}")

  def restore(self, step, template):
    """Restores `step` into numpy arrays shaped like `template`; with template
    None, as saved (no structure check).

    The step's files are first checked against the manifest written at save:
    a changed or missing file raises CheckpointError naming it. A step without
    a manifest (saved by an earlier version) is restored unverified, with a
    warning.
    """
    step = int(step)
    self._verify(step)
    target = None if template is None else jax.tree.map(
        lambda x: np.zeros(np.shape(x), np.asarray(x).dtype), template)
    _drop_closed_loop_callbacks()
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

  def _remove_unfinished(self, step):
    """Removes what a failed save of `step` wrote: orbax's temporary folder, the step's
    folder (a step without its manifest would read as unverified) and the manifest's
    temporary file."""
    if jax.process_index() != 0:
      return
    for path in (glob.glob(os.path.join(self.directory, f"{step}.orbax-checkpoint-tmp*"))
                 + [self._step_dir(step)]):
      shutil.rmtree(path, ignore_errors=True)
    for path in (self._manifest_path(step), self._manifest_path(step) + ".tmp"):
      if os.path.exists(path):
        os.remove(path)

  def _step_dir(self, step):
    return os.path.join(self.directory, str(step))

  def _manifest_path(self, step):
    return os.path.join(self.directory, CHECKSUMS_DIR, f"{step}.json")

  def _prune_manifests(self):
    """Deletes the manifests of steps whose folder is gone (orbax's max_to_keep)."""
    folder = os.path.join(self.directory, CHECKSUMS_DIR)
    for name in os.listdir(folder):
      stem = name[:-len(".json")] if name.endswith(".json") else None
      if stem is not None and stem.isdigit() and not os.path.isdir(self._step_dir(int(stem))):
        try:
          os.remove(os.path.join(folder, name))
        except FileNotFoundError:
          pass

  def _verify(self, step):
    """Raises CheckpointError unless the files of `step` match its manifest."""
    step_dir = self._step_dir(step)
    fix = (f"Delete {step_dir} to fall back to an earlier step, or use a new workdir.")
    if not os.path.isdir(step_dir):
      raise CheckpointError(f"checkpoint step {step} is missing: {step_dir} does not exist. "
                            f"Use an existing step or a new workdir.")
    path = self._manifest_path(step)
    if not os.path.exists(path):
      if (self.directory, step) not in _warned_unverified:
        _warned_unverified.add((self.directory, step))
        log.warning("checkpoint %s has no checksum manifest (%s; saved by an earlier "
                    "version?): restoring it unverified", step_dir, path)
      return
    try:
      with open(path) as f:
        want = json.load(f)["sha256"]
      if not isinstance(want, dict):
        raise ValueError("'sha256' is not a mapping")
    except (OSError, ValueError, KeyError, TypeError) as e:
      raise CheckpointError(f"the checksum manifest {path} of checkpoint {step_dir} is "
                            f"unreadable ({e}). {fix}") from e
    missing, changed = [], []
    for rel, digest in sorted(want.items()):
      file = os.path.join(step_dir, rel)
      if not os.path.isfile(file):
        missing.append(rel)
      elif _sha256(file) != digest:
        changed.append(rel)
    if missing or changed:
      what = []
      if changed:
        what.append(f"changed since it was saved: {_list(changed)}")
      if missing:
        what.append(f"missing: {_list(missing)}")
      raise CheckpointError(
          f"checkpoint {step_dir} is truncated or corrupt: its files do not match the "
          f"checksums recorded at save ({path}); {'; '.join(what)}. {fix}")

  def close(self):
    self._manager.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


@contextlib.contextmanager
def _orbax_errors_held():
  """Holds back the ERROR records orbax's threads log (with tracebacks) while the block
  runs; yields the list they go to. The caller re-emits them (`_emit`) unless it reports
  the failure itself, in one line."""
  held = []

  def hold(record):
    if record.levelno >= logging.ERROR and f"{os.sep}orbax{os.sep}" in (record.pathname or ""):
      held.append(record)
      return False
    return True

  logger = logging.getLogger("absl")  # orbax logs through absl.logging.
  logger.addFilter(hold)
  try:
    yield held
  finally:
    logger.removeFilter(hold)


def _emit(records):
  for record in records:
    logging.getLogger("absl").handle(record)


_hook_before = []  # the sys.unraisablehook replaced by _drop_closed_loop_callbacks.


def _drop_closed_loop_callbacks():
  """Drops tensorstore's late "Event loop is closed" after orbax failed to read or write.

  orbax runs a restore or save in an event loop that it closes as soon as one array
  fails; tensorstore then completes the other arrays' reads or writes and calls back into
  the closed loop, and each call prints a traceback (through sys.unraisablehook) around
  our one-line error. Called before orbax reads or writes, this installs, once, a hook
  that drops exactly those and passes every other unraisable exception to the hook it
  replaces.
  """
  if _hook_before:
    return
  _hook_before.append(sys.unraisablehook)

  def hook(args):
    if not _is_closed_loop_callback(args.exc_value, args.exc_traceback):
      _hook_before[0](args)

  sys.unraisablehook = hook


def _is_closed_loop_callback(exc, tb):
  """Whether `exc` is asyncio's "Event loop is closed" from a call_soon_threadsafe."""
  return (isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed"
          and any(f.name == "call_soon_threadsafe" for f in traceback.extract_tb(tb)))


def _host_local_to_numpy(tree):
  """With several processes, arrays that live on one process only become numpy.

  Such arrays must hold the same value on every process; global arrays (spanning
  several processes' devices) are left to orbax. Why: docs/implementation.md,
  "checkpointing.py".
  """
  if jax.process_count() == 1:
    return tree
  def convert(x):
    if isinstance(x, jax.Array) and x.is_fully_addressable:
      return np.asarray(x)
    return x
  return jax.tree.map(convert, tree)


def _sha256(path):
  h = hashlib.sha256()
  with open(path, "rb") as f:
    while chunk := f.read(_CHUNK):
      h.update(chunk)
  return h.hexdigest()


def _hash_folder(folder):
  """{path relative to folder (with /): sha256} of every file under `folder`."""
  out = {}
  for root, dirs, files in os.walk(folder):
    dirs.sort()
    for name in sorted(files):
      path = os.path.join(root, name)
      out[os.path.relpath(path, folder).replace(os.sep, "/")] = _sha256(path)
  return out


def _list(names, limit=5):
  more = f" and {len(names) - limit} more" if len(names) > limit else ""
  return ", ".join(names[:limit]) + more


def _step_folders(directory):
  """Names of the numbered (finished) step folders in `directory`."""
  if not os.path.isdir(directory):
    return []
  return sorted((n for n in os.listdir(directory)
                 if n.isdigit() and os.path.isdir(os.path.join(directory, n))), key=int)


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


def save_tree(directory, tree, spec=None):
  """Saves one pytree (a final result such as a meta-initialisation), replacing
  whatever `directory` held once the new tree is complete.

  The tree (and `spec`, a JSON-able description of what made it, as spec.json; read it
  with `read_spec`) is saved to a hidden sibling folder `.<name>.saving` first and
  swapped in when complete: a failed save (a full disk) leaves the earlier tree as it was.
  """
  directory = os.path.abspath(directory)
  new = os.path.join(os.path.dirname(directory), f".{os.path.basename(directory)}.saving")
  if os.path.exists(new) and jax.process_index() == 0:
    shutil.rmtree(new)
  _sync(f"save_tree:{directory}")
  try:
    with Checkpointer(new, max_to_keep=1) as ckpt:
      ckpt.save(0, tree)
    if spec is not None:
      write_spec(new, spec)
  except BaseException:
    if jax.process_index() == 0:
      shutil.rmtree(new, ignore_errors=True)
    raise
  _sync(f"save_tree_done:{directory}")
  if jax.process_index() == 0:
    if os.path.exists(directory):
      shutil.rmtree(directory)
    os.replace(new, directory)
  _sync(f"save_tree_swapped:{directory}")


def _sync(name):
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


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
  try:
    with open(tmp, "w") as f:
      json.dump(obj, f, indent=1, sort_keys=True)
      f.write("\n")
    os.replace(tmp, path)
  except OSError as e:
    if os.path.exists(tmp):
      os.remove(tmp)
    error = write_error(e, path, f"{path} is unchanged")
    if error is None:
      raise
    raise error from None


def write_spec(directory, spec):
  os.makedirs(directory, exist_ok=True)
  write_json_atomic(os.path.join(directory, "spec.json"), spec)


def read_spec(directory):
  """The spec.json of `directory` (`save_tree`, `write_spec`), or None if it has none."""
  path = os.path.join(directory, "spec.json")
  if not os.path.exists(path):
    return None
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError) as e:
    raise CheckpointError(f"{path} is unreadable ({e}); delete {directory} or use a new "
                          "workdir") from e


def check_spec(directory, spec, what):
  """Raises CheckpointError if `directory/spec.json` differs from `spec`.

  Returns True when a matching spec exists, False when there is none and the
  directory holds no checkpoint (it is new or empty). Checkpoints without a
  spec.json raise CheckpointError: what produced them cannot be checked.
  """
  path = os.path.join(directory, "spec.json")
  if not os.path.exists(path):
    steps = _step_folders(directory)
    if steps:
      raise CheckpointError(
          f"{directory} holds checkpoints (steps {_list(steps)}) but no spec.json, so "
          f"what produced them (the {what}'s configuration) cannot be checked. Delete "
          f"{directory} or use a new workdir.")
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
