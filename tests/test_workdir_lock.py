"""One process per workdir (dfl2l_jax/workdir_lock.py)."""

import os
import signal
import subprocess
import sys

import pytest

from dfl2l_jax import workdir_lock

_HOLD = """
import sys, time
from dfl2l_jax import workdir_lock
with workdir_lock.hold(sys.argv[1]):
  print("held", flush=True)
  time.sleep(600)
"""


def _holder(workdir):
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  proc = subprocess.Popen([sys.executable, "-c", _HOLD, workdir], cwd=root,
                          stdout=subprocess.PIPE, text=True,
                          env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert proc.stdout.readline().strip() == "held"
  return proc


def test_a_second_run_is_refused_and_named_while_the_first_holds_the_lock(tmp_path):
  workdir = str(tmp_path)
  with workdir_lock.hold(workdir):
    with pytest.raises(workdir_lock.WorkdirBusy, match=rf"{workdir} is in use .*pid {os.getpid()}"):
      with workdir_lock.hold(workdir):
        pass
  with workdir_lock.hold(workdir):  # released at the end of the block
    pass


def test_the_lock_of_a_killed_process_is_stale_and_taken_over(tmp_path):
  workdir = str(tmp_path)
  proc = _holder(workdir)
  try:
    with pytest.raises(workdir_lock.WorkdirBusy, match=f"pid {proc.pid}"):
      with workdir_lock.hold(workdir):
        pass
  finally:
    proc.send_signal(signal.SIGKILL)
    proc.wait()
  assert os.path.exists(os.path.join(workdir, workdir_lock.LOCK_NAME))  # left behind
  with workdir_lock.hold(workdir):
    with open(os.path.join(workdir, workdir_lock.LOCK_NAME)) as f:
      assert f"pid {os.getpid()}" in f.read()
