import asyncio
import errno
import logging
import os
import shutil
import subprocess
import sys
import types

import jax.numpy as jnp
import numpy as np
import pytest

from dfl2l_jax import checkpointing
from dfl2l_jax.errors import CheckpointError, WriteError
from tests import helpers


def _tree():
  return {"a": jnp.arange(5.0), "b": {"c": jnp.ones((2, 3), jnp.int32)}, "s": jnp.int32(7)}


def test_round_trip(tmp_path):
  with checkpointing.Checkpointer(str(tmp_path / "ck")) as ck:
    assert ck.latest_step() is None
    ck.save(3, _tree())
    assert ck.latest_step() == 3
    got = ck.restore(3, _tree())
  for k in ("a", "s"):
    np.testing.assert_array_equal(got[k], _tree()[k])
  np.testing.assert_array_equal(got["b"]["c"], _tree()["b"]["c"])
  assert got["b"]["c"].dtype == np.int32


def test_save_tree_and_load_tree(tmp_path):
  checkpointing.save_tree(str(tmp_path / "t"), _tree(), spec={"settings": {"zoo": {"n": 1}}})
  got = checkpointing.load_tree(str(tmp_path / "t"), _tree())
  np.testing.assert_array_equal(got["a"], np.arange(5.0))
  assert checkpointing.read_spec(str(tmp_path / "t")) == {"settings": {"zoo": {"n": 1}}}
  assert checkpointing.read_spec(str(tmp_path)) is None
  with pytest.raises(CheckpointError, match="no checkpoint"):
    checkpointing.load_tree(str(tmp_path / "missing"), _tree())


def _truncate_data_files(directory):
  n = 0
  for root, _, files in os.walk(directory):
    for f in files:
      path = os.path.join(root, f)
      if os.sep + "d" + os.sep in path + os.sep or os.path.basename(root) == "d":
        with open(path, "r+b") as fh:
          fh.truncate(max(os.path.getsize(path) // 3, 1))
        n += 1
  assert n > 0, "found no data files to truncate"


def test_truncated_checkpoint_gives_a_clear_error(tmp_path):
  directory = str(tmp_path / "ck")
  with checkpointing.Checkpointer(directory) as ck:
    ck.save(1, {"big": jnp.arange(10000.0)})
  _truncate_data_files(os.path.join(directory, "1"))
  with checkpointing.Checkpointer(directory) as ck:
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
      ck.restore(1, {"big": jnp.zeros(10000)})


def test_shape_mismatch_is_rejected(tmp_path):
  with checkpointing.Checkpointer(str(tmp_path / "ck")) as ck:
    ck.save(1, {"w": jnp.ones((3, 4))})
    with pytest.raises(CheckpointError):
      ck.restore(1, {"w": jnp.ones((4, 4))})


def test_spec_mismatch_names_the_field(tmp_path):
  d = str(tmp_path / "zoo")
  assert not checkpointing.check_spec(d, {"x": 1}, "zoo")
  checkpointing.write_spec(d, {"x": 1, "y": {"z": (1, 2)}})
  assert checkpointing.check_spec(d, {"x": 1, "y": {"z": (1, 2)}}, "zoo")
  with pytest.raises(CheckpointError, match=r"y\.z: saved \[1, 2\], now \[1, 3\]"):
    checkpointing.check_spec(d, {"x": 1, "y": {"z": (1, 3)}}, "zoo")


# Checksums: every restore verifies the files orbax wrote against the manifest
# written at save.

def _random_tree(n=20000):
  rng = np.random.default_rng(0)  # random data: orbax's compression keeps it large.
  return {"w": rng.standard_normal(n).astype(np.float32), "s": np.int32(3)}


def _largest_file(folder):
  files = [os.path.join(r, f) for r, _, fs in os.walk(folder) for f in fs]
  return max(files, key=os.path.getsize)


def _flip_bit(path):
  with open(path, "r+b") as f:
    f.seek(os.path.getsize(path) // 2)
    byte = f.read(1)[0]
    f.seek(-1, os.SEEK_CUR)
    f.write(bytes([byte ^ 0x10]))


def test_bit_flip_in_a_saved_tree_names_the_file(tmp_path):
  d = str(tmp_path / "t")
  checkpointing.save_tree(d, _random_tree())
  victim = _largest_file(os.path.join(d, "0"))
  _flip_bit(victim)
  with pytest.raises(CheckpointError, match="corrupt") as e:
    checkpointing.load_tree(d, _random_tree())
  msg = str(e.value)
  assert os.path.relpath(victim, os.path.join(d, "0")).replace(os.sep, "/") in msg
  assert os.path.join(d, "0") in msg and "new workdir" in msg


def test_deleted_file_is_reported_missing(tmp_path):
  d = str(tmp_path / "t")
  checkpointing.save_tree(d, _random_tree())
  victim = _largest_file(os.path.join(d, "0"))
  os.remove(victim)
  with pytest.raises(CheckpointError, match="missing: .*" + os.path.basename(victim)):
    checkpointing.load_tree(d, _random_tree())


def test_untouched_checkpoint_verifies_and_restores(tmp_path):
  d = str(tmp_path / "t")
  checkpointing.save_tree(d, _random_tree())
  assert os.path.exists(os.path.join(d, checkpointing.CHECKSUMS_DIR, "0.json"))
  for _ in range(2):  # restoring writes nothing that breaks the next verification.
    got = checkpointing.load_tree(d, _random_tree())
    np.testing.assert_array_equal(got["w"], _random_tree()["w"])


def test_checkpoint_without_manifest_restores_with_a_warning(tmp_path, caplog):
  d = str(tmp_path / "t")
  checkpointing.save_tree(d, _random_tree())
  shutil.rmtree(os.path.join(d, checkpointing.CHECKSUMS_DIR))  # as older versions wrote it.
  with caplog.at_level(logging.WARNING, logger="dfl2l_jax"):
    got = checkpointing.load_tree(d, _random_tree())
  np.testing.assert_array_equal(got["w"], _random_tree()["w"])
  assert any("unverified" in r.getMessage() for r in caplog.records)


def test_max_to_keep_leaves_no_stale_manifests(tmp_path):
  d = str(tmp_path / "ck")
  with checkpointing.Checkpointer(d, max_to_keep=2) as ck:
    for step in range(1, 6):
      ck.save(step, {"w": np.full(100, step, np.float32)})
  manifests = sorted(os.listdir(os.path.join(d, checkpointing.CHECKSUMS_DIR)))
  assert manifests == ["4.json", "5.json"]
  with checkpointing.Checkpointer(d, max_to_keep=2) as ck:
    assert ck.latest_step() == 5
    for step in (4, 5):
      np.testing.assert_array_equal(ck.restore(step, {"w": np.zeros(100, np.float32)})["w"],
                                    np.full(100, step, np.float32))
    _flip_bit(_largest_file(os.path.join(d, "5")))
    with pytest.raises(CheckpointError, match="corrupt"):
      ck.restore(5, {"w": np.zeros(100, np.float32)})


def test_checkpoints_without_spec_are_refused(tmp_path):
  d = str(tmp_path / "zoo")
  assert checkpointing.check_spec(d, {"x": 1}, "zoo") is False  # does not exist.
  os.makedirs(d)
  assert checkpointing.check_spec(d, {"x": 1}, "zoo") is False  # empty.
  checkpointing.write_spec(d, {"x": 1})
  with checkpointing.Checkpointer(d) as ck:
    ck.save(2, {"w": np.ones(3)})
  os.remove(os.path.join(d, "spec.json"))
  with pytest.raises(CheckpointError, match="holds checkpoints .*but no spec.json.*new workdir"):
    checkpointing.check_spec(d, {"x": 2}, "zoo")


# A save past the file-size limit (`ulimit -f`), in a process of its own: orbax's writer
# (tensorstore) fails inside its threads exactly as on a full disk, with the OS error as text.
_SAVE_PAST_LIMIT = """
import os, resource, signal, sys
import numpy as np
from dfl2l_jax import checkpointing
from dfl2l_jax.errors import WriteError
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
with checkpointing.Checkpointer(sys.argv[1]) as ck:
  ck.save(1, {"w": np.zeros(10, np.float32)})
  resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, resource.RLIM_INFINITY))
  try:
    ck.save(2, {"w": np.random.default_rng(0).normal(size=200_000).astype(np.float32)})
  except WriteError as e:
    print("error:", e)
"""


def test_a_save_that_cannot_write_is_one_error_and_leaves_nothing_half_written(tmp_path):
  """The orbax RESOURCE_EXHAUSTED of a full disk ended in a 265-line traceback, orbax's
  logged tracebacks and a `*.orbax-checkpoint-tmp` folder; it is now one line."""
  d = str(tmp_path / "ck")
  out = subprocess.run([sys.executable, "-c", _SAVE_PAST_LIMIT, d], capture_output=True,
                       text=True, cwd=helpers.ROOT, env=helpers.subprocess_env(), timeout=120)
  assert out.returncode == 0, out.stderr
  assert out.stdout.startswith(f"error: could not write checkpoint step 2 in {d}: File too "
                               "large (over the file-size limit, `ulimit -f`). Earlier "
                               "checkpoints and results are unchanged")
  assert "Traceback" not in out.stderr and "orbax" not in out.stderr
  assert sorted(os.listdir(d)) == ["1", checkpointing.CHECKSUMS_DIR]
  assert os.listdir(os.path.join(d, checkpointing.CHECKSUMS_DIR)) == ["1.json"]
  with checkpointing.Checkpointer(d) as ck:
    assert ck.latest_step() == 1
    np.testing.assert_array_equal(ck.restore(1, None)["w"], np.zeros(10))


def test_a_failed_save_tree_keeps_the_earlier_tree(tmp_path, monkeypatch):
  d = str(tmp_path / "inits" / "va")
  checkpointing.save_tree(d, _tree())

  def full_disk(self, step, *args, **kwargs):
    del args, kwargs
    os.makedirs(os.path.join(os.fspath(self.directory), f"{step}.orbax-checkpoint-tmp"))
    raise ValueError("RESOURCE_EXHAUSTED: Error writing ... No space left on device "
                     "[os_error_code='28']")
  monkeypatch.setattr(checkpointing.ocp.CheckpointManager, "save", full_disk)
  with pytest.raises(WriteError, match=r"could not write checkpoint step 0 in .*inits.*the "
                     r"disk is full \(No space left on device\)"):
    checkpointing.save_tree(d, {"a": jnp.zeros(5), "b": {"c": jnp.zeros((2, 3), jnp.int32)},
                                "s": jnp.int32(0)})
  monkeypatch.undo()
  assert os.listdir(tmp_path / "inits") == ["va"]
  np.testing.assert_array_equal(checkpointing.load_tree(d, _tree())["s"], 7)


def test_a_spec_that_cannot_be_written_is_one_error_and_no_temporary(tmp_path, monkeypatch):
  real_open = open

  def full_disk(path, mode="r", *a, **k):
    if str(path).endswith(".tmp") and "w" in mode:
      f = real_open(path, mode, *a, **k)
      f.close()
      raise OSError(errno.ENOSPC, "No space left on device", str(path))
    return real_open(path, mode, *a, **k)
  monkeypatch.setattr("builtins.open", full_disk)
  with pytest.raises(WriteError, match=r"spec\.json: the disk is full .* is unchanged"):
    checkpointing.write_spec(str(tmp_path), {"a": 1})
  monkeypatch.undo()
  assert os.listdir(tmp_path) == []


def test_only_the_closed_loop_callbacks_of_a_failed_read_are_silenced(monkeypatch):
  """A failed orbax read closes its event loop while tensorstore still completes other
  reads; their callbacks printed "Event loop is closed" tracebacks after the error line."""
  seen = []
  monkeypatch.setattr(sys, "unraisablehook", lambda args: seen.append(args.exc_value))
  monkeypatch.setattr(checkpointing, "_hook_before", [])
  checkpointing._drop_closed_loop_callbacks()  # pylint: disable=protected-access
  checkpointing._drop_closed_loop_callbacks()  # pylint: disable=protected-access  # once
  loop = asyncio.new_event_loop()
  loop.close()
  for exc in _raised(lambda: loop.call_soon_threadsafe(print)), _raised(lambda: 1 / 0):
    sys.unraisablehook(types.SimpleNamespace(exc_type=type(exc), exc_value=exc,
                                             exc_traceback=exc.__traceback__,
                                             err_msg=None, object=None))
  assert [type(e) for e in seen] == [ZeroDivisionError]


def _raised(fn):
  try:
    fn()
  except Exception as e:  # pylint: disable=broad-except
    return e
  raise AssertionError("no exception")
