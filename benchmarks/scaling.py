r"""Scaling of DRO fusion with the zoo size: time and peak memory, offline and online.

  python -m benchmarks.scaling [--sinusoid 100,1000,10000] [--conv4 100,1000]
      [--conv-hw 84] [--workdir DIR] [--small]

For every zoo size N the zoo is first written to disk as a `zoo_store.ZooStore`
(synthetic models, chunk by chunk, by this parent process). Then each of
offline and online fusion runs in a fresh Python subprocess, so that its peak
resident memory (`resource.getrusage(...).ru_maxrss`) is its own:

  offline  `methods/dfl2l.offline_fusion` (Algorithm 1) with the whole zoo in
           memory (it samples any model of S and Q at every step), for ONE epoch:
           N steps, one step per model;
  online   `methods/dfl2l.online_fusion` (Algorithm 2) with the zoo read from
           the store: only Q and the models arriving during the current chunk
           are in memory; one pass over S: |S| = 0.8 N steps, one per arrival.

So the number of steps is fixed per model (1 per model offline, 1 per arrival
online), not per size. A step costs the same whatever N is (it touches one
meta-training and one validation model and their embedding rows), so time
should grow linearly with N; memory should grow with N offline (the zoo, about
N x params x 4 bytes, plus its S and Q copies) and stay flat online (plus the
embedding table, N x d floats, and Q). The config's fusion settings are used
(meta-batch 1, K = 1, embedding 100 for the sinusoid zoo and 50 for Conv4).

Each worker prints one JSON line: total seconds (compile included), the
compile-free steady rate (the median full-length chunk after the first two) and
the steps at that rate (`steady_seconds`), the peak RSS and its increase over the RSS measured after start-up
(imports and JAX initialised), and on an accelerator the device's
`memory_stats()` peak. The parent then prints, per zoo and loop, the ratios of
time and steps to the smallest size and the memory increase.
"""

import argparse
import datetime
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np


def _rss_bytes():
  """Peak resident set size of this process so far (Linux reports KiB)."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _current_rss_bytes():
  try:
    with open("/proc/self/statm") as f:
      return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
  except OSError:
    return _rss_bytes()


def _now():
  return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def write_store(kind, n, directory, conv_hw, chunk_models=500):
  """Writes a synthetic zoo of n models to a ZooStore in chunks (never all in memory)."""
  from benchmarks import fusion_throughput  # pylint: disable=g-import-not-at-top
  from benchmarks import zoo_store  # pylint: disable=g-import-not-at-top
  tmpl = fusion_throughput.template(kind, conv_hw)
  store = zoo_store.ZooStore.create(directory, tmpl, n)
  for start in range(0, n, chunk_models):
    store.write(start, fusion_throughput.synthetic_models(tmpl, start,
                                                          min(chunk_models, n - start)))
  return store


def worker(args):
  """One fusion run in this (fresh) process; prints its JSON line."""
  import jax  # pylint: disable=g-import-not-at-top
  from benchmarks import fusion_throughput  # pylint: disable=g-import-not-at-top
  from dfl2l_jax import results  # pylint: disable=g-import-not-at-top
  from benchmarks import zoo_store  # pylint: disable=g-import-not-at-top
  from dfl2l_jax.methods import base  # pylint: disable=g-import-not-at-top
  from dfl2l_jax.methods import dfl2l  # pylint: disable=g-import-not-at-top

  device = jax.devices()[0]
  jax.block_until_ready(jax.numpy.zeros(()))
  rss_start = _current_rss_bytes()
  store = zoo_store.ZooStore(args.store)
  n = len(store)
  config = fusion_throughput.zoo_config(args.kind)
  fc = config.fusion
  with fc.unlocked():
    fc.epochs = 1
    fc.chunk_steps = args.chunk_steps
  perm = np.random.default_rng(0).permutation(n)
  n_q = int(round(0.2 * n))
  ends = []
  t0 = time.perf_counter()
  if args.mode == "offline":
    zoo = jax.device_put(store.load())     # Algorithm 1 samples from the whole zoo
  else:
    zoo = store                            # Algorithm 2 streams the arrivals
  ctx = base.MethodContext(config=config, benchmark=None, zoo=zoo, s_idx=perm[n_q:],
                           q_idx=perm[:n_q], key=jax.random.key(0),
                           hooks=lambda name, step: ends.append((step, time.perf_counter())))
  fuse = dfl2l.offline_fusion if args.mode == "offline" else dfl2l.online_fusion
  state = jax.block_until_ready(fuse(ctx, fc))
  total = time.perf_counter() - t0
  steps = int(state.step)
  # Steady rate: the median duration of the full-length chunks after the first
  # two (the first compiles; a second compile can follow when the returned
  # state's shardings differ from the initial state's).
  durations = [t1 - t0_ for (s0, t0_), (s1, t1) in zip(ends, ends[1:])
               if s1 - s0 == args.chunk_steps][1:]
  steady = args.chunk_steps / float(np.median(durations)) if durations else None
  stats = {}
  try:
    stats = device.memory_stats() or {}
  except Exception:  # pylint: disable=broad-except
    pass
  row = {"benchmark": "scaling", "zoo": args.kind, "loop": args.mode, "models": n,
         "params_per_model": int(sum(np.size(x) for x in jax.tree.leaves(store.template))),
         "zoo_mb": round(sum(os.path.getsize(os.path.join(args.store, f))
                             for f in os.listdir(args.store)) / 2**20, 1),
         "steps": steps, "chunk_steps": args.chunk_steps, "seconds": round(total, 3),
         "steady_steps_per_s": round(steady, 1) if steady else None,
         "steady_seconds": round(steps / steady, 3) if steady else None,
         "peak_rss_mb": round(_rss_bytes() / 2**20, 1),
         "rss_after_startup_mb": round(rss_start / 2**20, 1),
         "peak_rss_increase_mb": round((_rss_bytes() - rss_start) / 2**20, 1),
         "device_peak_mb": (round(stats["peak_bytes_in_use"] / 2**20, 1)
                            if "peak_bytes_in_use" in stats else None),
         "device": str(device.device_kind), "backend": jax.default_backend(),
         "cpu": results.cpu_model(), "date": _now()}
  if args.kind == "conv4":
    row["conv_hw"] = args.conv_hw
  print(json.dumps(row), flush=True)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--sinusoid", default="100,1000,10000", help="zoo sizes ('' = none)")
  parser.add_argument("--conv4", default="100,1000", help="zoo sizes ('' = none)")
  parser.add_argument("--conv-hw", type=int, default=84)
  parser.add_argument("--loops", default="offline,online")
  parser.add_argument("--chunk-steps", type=int, default=20,
                      help="steps per compiled chunk (= arriving models per chunk online)")
  parser.add_argument("--workdir", default=None, help="where the stores go (default: a temp dir)")
  parser.add_argument("--small", action="store_true", help="sinusoid 100, 1000 only")
  # Internal: one measurement in a fresh process.
  parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
  parser.add_argument("--kind", help=argparse.SUPPRESS)
  parser.add_argument("--mode", help=argparse.SUPPRESS)
  parser.add_argument("--store", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.worker:
    return worker(args)
  if args.small:
    args.sinusoid, args.conv4 = "100,1000", ""
  sizes = {"sinusoid": [int(s) for s in args.sinusoid.split(",") if s],
           "conv4": [int(s) for s in args.conv4.split(",") if s]}
  workdir = args.workdir or tempfile.mkdtemp(prefix="dfl2l_scaling_")
  rows = []
  for kind, ns in sizes.items():
    for n in ns:
      directory = os.path.join(workdir, f"{kind}_{n}")
      t0 = time.perf_counter()
      write_store(kind, n, directory, args.conv_hw)
      print(json.dumps({"benchmark": "scaling_store_written", "zoo": kind, "models": n,
                        "seconds": round(time.perf_counter() - t0, 2)}), flush=True)
      for mode in args.loops.split(","):
        cmd = [sys.executable, "-m", "benchmarks.scaling", "--worker", "--kind", kind,
               "--mode", mode, "--store", directory, "--chunk-steps", str(args.chunk_steps),
               "--conv-hw", str(args.conv_hw)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        row = json.loads([l for l in out.splitlines() if l.startswith("{")][-1])
        print(json.dumps(row), flush=True)
        rows.append(row)
  for kind in sizes:
    for mode in args.loops.split(","):
      sel = sorted((r for r in rows if r["zoo"] == kind and r["loop"] == mode),
                   key=lambda r: r["models"])
      if len(sel) < 2:
        continue
      first = sel[0]
      print(json.dumps({
          "benchmark": "scaling_summary", "zoo": kind, "loop": mode,
          "models": [r["models"] for r in sel],
          "models_ratio": [round(r["models"] / first["models"], 1) for r in sel],
          "time_ratio": [round(r["seconds"] / first["seconds"], 2) for r in sel],
          "steady_time_ratio": [round(r["steady_seconds"] / first["steady_seconds"], 2)
                                if r["steady_seconds"] and first["steady_seconds"] else None
                                for r in sel],
          "steady_steps_per_s": [r["steady_steps_per_s"] for r in sel],
          "peak_rss_increase_mb": [r["peak_rss_increase_mb"] for r in sel],
          "device_peak_mb": [r["device_peak_mb"] for r in sel],
          "device": first["device"], "cpu": first["cpu"], "date": _now()}), flush=True)


if __name__ == "__main__":
  main()
