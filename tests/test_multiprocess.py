"""Two real processes on this machine, joined by `jax.distributed` (issue 5's multi-host path).

Each process has 2 CPU devices; the mesh spans the 4 devices of both processes,
with cross-process collectives through gloo. This runs the same code a TPU pod
slice or several GPU hosts run (one process per host, a coordinator address),
short of the network: the launcher with config.mesh.distributed, zoo training,
fusion and meta-test sharded across processes, checkpoints written by both,
logs and results by process 0 only, and a second invocation resuming from
those checkpoints. Its numbers must equal one process with 4 devices.
"""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from dfl2l_jax import pipeline
from tests import helpers

CONFIG = "--config=configs/sinusoid.py:smoke"


def _free_port():
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _launch_two_processes(workdir, methods):
  port = _free_port()
  env = helpers.subprocess_env(JAX_NUM_CPU_DEVICES="2",
                               JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo")
  procs = [
      subprocess.Popen(
          [sys.executable, "-m", "launch.offline", CONFIG, f"--workdir={workdir}",
           f"--config.methods={methods}", "--config.mesh.distributed=True",
           f"--config.mesh.coordinator_address=localhost:{port}",
           "--config.mesh.num_processes=2", f"--config.mesh.process_id={i}"],
          cwd=helpers.ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
      for i in range(2)]
  outs = []
  try:
    for p in procs:
      _, err = p.communicate(timeout=300)
      outs.append((p.returncode, err))
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  for i, (rc, err) in enumerate(outs):
    assert rc == 0, f"process {i} failed:\n{err[-3000:]}"
  return [err for _, err in outs]


def _metric_records(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [(r["step"], sorted(k for k in r if k != "time")) for r in map(json.loads, f)]


def _means(results):
  return {(r["method"], r["shots"]): r["mean"] for r in results["rows"]}


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="gloo CPU collectives: Linux only")
def test_two_processes_equal_one_process_and_resume(tmp_path):
  workdir = str(tmp_path / "two")
  errs = _launch_two_processes(workdir, "dfl2l,va")
  # Process 0 logs progress and writes results; process 1 computes and saves silently.
  assert "zoo: 200/200" in errs[0] and "wrote" in errs[0]
  assert "zoo: 200/200" not in errs[1] and "wrote" not in errs[1]
  with open(os.path.join(workdir, "results.json")) as f:
    first = json.load(f)

  # One process with the 4 devices of conftest.py, the same config.
  config = helpers.smoke_config(methods="dfl2l,va", metatest__step_bound=1.9)  # as the launcher
  single = pipeline.run(config, str(tmp_path / "one"), "offline")
  got, want = _means(first), _means(single)
  assert got.keys() == want.keys()
  for k in want:
    np.testing.assert_allclose(got[k], want[k], rtol=1e-5, err_msg=str(k))
  # metrics.jsonl: written once (by process 0), the same records as one process.
  assert _metric_records(workdir) == _metric_records(str(tmp_path / "one"))

  # Again on the same workdir with one more method: both processes restore the zoo and
  # the dfl2l fusion from the checkpoints both wrote, and run the online fusion, whose
  # arrivals stream across both processes. (The host-side methods, OT fusion and the
  # merging baselines, see the zoo gathered on every host exactly as dfl2l does.)
  errs = _launch_two_processes(workdir, "dfl2l,dfl2l_online,va")
  assert "zoo: resumed from step 200" in errs[0]
  assert "dfl2l: resumed from step" in errs[0]
  with open(os.path.join(workdir, "results.json")) as f:
    second = _means(json.load(f))
  for k in got:
    assert second[k] == got[k], k
  assert {m for m, _ in second} == {"dfl2l", "dfl2l_online", "va"}
