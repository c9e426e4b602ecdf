r"""Wall time of the whole sinusoid pipeline for one seed, end to end.

Runs `pipeline.run(config, workdir, setting="offline")` with methods
dfl2l, dfl2l_online, va and finetune in a fresh temporary workdir (deleted
afterwards unless --keep), everything included: compilation, zoo training,
both fusions, meta-test of every method at every shot count, checkpoints and
results. The goal is under 120 s.

  python benchmarks/pipeline_time.py
  python benchmarks/pipeline_time.py --seed 3 --config configs/sinusoid.py:smoke

Progress goes to stderr; the last stdout line is one JSON record: total and
per-phase seconds, whether the goal was met, CPU model, cores, date.
"""

import argparse
import datetime
import json
import logging
import os
import re
import shutil
import sys
import tempfile
import time

import jax

from dfl2l_jax import config_lib
from dfl2l_jax import metrics
from dfl2l_jax import pipeline
from dfl2l_jax import results as results_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

METHODS = "dfl2l,dfl2l_online,va,finetune"
GOAL_SECONDS = 120.0
_METATEST_LINE = re.compile(r"^(\S+) (\d+)-shot: ")


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--config", default="configs/sinusoid.py",
                 help="config file, optionally with ':variant'; relative paths are tried "
                 "from the current directory, then from the repository root")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--methods", default=METHODS)
  p.add_argument("--keep", action="store_true", help="keep the temporary workdir")
  return p.parse_args(argv)


def load_config(spec, seed, methods):
  """`path[:variant]` -> the file's `get_config(variant)` with seed and methods set."""
  config = config_lib.load_config_file(spec, REPO)
  config.seed = seed
  config.methods = methods
  return config


class PhaseClock(logging.Handler):
  """Time stamps of pipeline events, from the `hooks` callback and the log.

  An event is a (time, phase) pair: `hooks(phase, step)` after every
  checkpointed chunk of zoo training and fusion, and "metatest/<method>" for
  each meta-test log line. A phase's duration is from the last event of the
  phase before it to its own last event, so it includes the work between
  (zoo quality, building the initialisation of va and finetune, saving).
  """

  def __init__(self):
    super().__init__(level=logging.INFO)
    self.t0 = time.perf_counter()
    self.events = []

  def hooks(self, phase, step):
    del step
    self.events.append((time.perf_counter(), phase))

  def emit(self, record):
    match = _METATEST_LINE.match(record.getMessage())
    if match:
      self.events.append((time.perf_counter(), f"metatest/{match.group(1)}"))

  def phases(self):
    """Ordered {phase: seconds}."""
    ends = {}
    for t, phase in self.events:
      ends.pop(phase, None)  # Keep first-appearance order of the last event.
      ends[phase] = t
    out, prev = {}, self.t0
    for phase, t in sorted(ends.items(), key=lambda kv: kv[1]):
      out[phase] = round(t - prev, 2)
      prev = t
    return out


def main(argv=None):
  args = parse_args(argv)
  config = load_config(args.config, args.seed, args.methods)
  metrics.install_stderr_handler()
  lib_log = metrics.log
  clock = PhaseClock()
  lib_log.addHandler(clock)
  workdir = tempfile.mkdtemp(prefix="dfl2l_pipeline_time_")
  try:
    clock.t0 = t0 = time.perf_counter()
    results = pipeline.run(config, workdir, setting="offline", hooks=clock.hooks)
    total = time.perf_counter() - t0
  finally:
    if args.keep:
      print(f"workdir kept: {workdir}", file=sys.stderr)
    else:
      shutil.rmtree(workdir, ignore_errors=True)
  device = jax.devices()[0]
  print(json.dumps({
      "benchmark": "pipeline_time", "config": args.config,
      "seed": config.seed, "methods": config.methods,
      "total_seconds": round(total, 2), "goal_seconds": GOAL_SECONDS,
      "under_goal": total < GOAL_SECONDS,
      "phase_seconds": clock.phases(),
      "metric": results["metric"],
      "results": {f"{r['method']}@{r['shots']}": round(r["mean"], 4) for r in results["rows"]},
      "cpu": results_lib.cpu_model(), "cores": os.cpu_count(),
      "device": f"{device.platform}:{device.device_kind}", "jax": jax.__version__,
      "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
  }))


if __name__ == "__main__":
  main()
