"""One process per workdir: an advisory lock held for the whole run.

Two runs writing the same checkpoints would remove each other's temporary files and
double the metrics. `hold(workdir)` takes an exclusive `flock` on `<workdir>/.lock`
and writes who holds it (pid, host, start time, command); a second run gets
`WorkdirBusy` naming the holder. The kernel drops the lock when its process ends,
however it ends, so a lock left by a killed run is never in the way: the file stays,
but a new run takes the lock and rewrites it.

Several hosts: only process 0 takes the lock (every process of one job shares the
workdir). On a file system without locks (ENOLCK on some network mounts) a warning
says that concurrent runs are not detected, and the run goes on.
"""

import contextlib
import errno
import fcntl
import os
import socket
import sys
import time

import jax

from dfl2l_jax import metrics
from dfl2l_jax.errors import Dfl2lError

LOCK_NAME = ".lock"


class WorkdirBusy(Dfl2lError):
  """Another process is running in this workdir."""


@contextlib.contextmanager
def hold(workdir):
  """Holds the workdir's lock for the duration of the `with` block."""
  if jax.process_index() != 0:
    yield
    return
  path = os.path.join(workdir, LOCK_NAME)
  fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
      if e.errno in (errno.EAGAIN, errno.EACCES):
        holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "unknown"
        raise WorkdirBusy(
            f"{workdir} is in use by another run ({holder}); wait for it to finish, or "
            "use another --workdir") from e
      if e.errno != errno.ENOLCK:
        raise
      metrics.log.warning("%s: the file system does not support locks; a second run "
                          "in this workdir would not be detected", workdir)
    info = (f"pid {os.getpid()} on {socket.gethostname()}, started "
            f"{time.strftime('%Y-%m-%d %H:%M:%S')}: {' '.join(sys.argv)}")
    os.ftruncate(fd, 0)
    os.pwrite(fd, info.encode(), 0)
    yield
  finally:
    os.close(fd)  # releases the lock.
