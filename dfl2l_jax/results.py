"""results.json and results.md: the record of one run."""

import os
import platform
import subprocess
import sys
import numpy as np

import jax

from dfl2l_jax import checkpointing


def versions():
  import chex, flax, jaxlib, optax, orbax.checkpoint  # pylint: disable=g-import-not-at-top
  import dfl2l_jax
  return {"python": sys.version.split()[0], "jax": jax.__version__,
          "jaxlib": jaxlib.__version__,
          "flax": flax.__version__, "optax": optax.__version__,
          "orbax-checkpoint": orbax.checkpoint.__version__, "chex": chex.__version__,
          "dfl2l_jax": dfl2l_jax.__version__, "backend": jax.default_backend(),
          "device": str(jax.devices()[0].device_kind), "machine": platform.machine(),
          "processor": cpu_model(), "cpu_count": os.cpu_count(), "git": source_commit()}


def source_commit(src=None):
  """The git commit of the dfl2l_jax source that ran, "+dirty" if it had local changes.

  `src`: the checkout's root (default: the folder above this package). None where that is
  not the root of a git checkout (a wheel install) or git is missing, so that a results.json
  names the code that produced it whenever that is knowable.
  """
  src = src or os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  def git(*args):
    return subprocess.run(["git", "-C", src, *args], capture_output=True, text=True,
                          timeout=10, check=True).stdout.strip()
  try:
    # Only our own checkout: a package installed under some other repository (a venv inside a
    # user's project) must not report that repository's commit.
    if os.path.realpath(git("rev-parse", "--show-toplevel")) != os.path.realpath(src):
      return None
    head = git("rev-parse", "HEAD")
    dirty = git("status", "--porcelain", "--untracked-files=no", "--", "dfl2l_jax", "launch",
                "configs")
  except (OSError, subprocess.SubprocessError):
    return None
  return head + ("+dirty" if dirty else "")


def cpu_model():
  """The CPU's model name (Linux), else what `platform` knows."""
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def t_interval95(values):
  """Half-width of the 95% interval of the mean of `values` (Student t, n - 1 dof).

  For means over a few seeds, where the normal 1.96 would understate the
  interval (n = 5: t = 2.78; n = 2: t = 12.7). NaN for fewer than 2 values.
  """
  v = np.asarray(values, np.float64)
  if v.size < 2:
    return float("nan")
  from scipy import stats  # pylint: disable=import-outside-toplevel
  return float(stats.t.ppf(0.975, v.size - 1) * v.std(ddof=1) / np.sqrt(v.size))


def row(method, shots, mean, ci95, per_task):
  return {"method": method, "shots": int(shots), "mean": float(mean), "ci95": float(ci95),
          "n_tasks": len(per_task), "per_task": [float(v) for v in per_task]}


def na_row(method, shots, reason):
  """The row of a method that cannot run in this setting: no numbers, a reason."""
  return {"method": method, "shots": int(shots), "mean": None, "ci95": None, "n_tasks": 0,
          "per_task": [], "na": reason}


def to_markdown(results):
  unit = " (%)" if results["metric"] == "accuracy" else ""
  lines = [f"# {results['benchmark']}: {results['metric']}{unit}, seed {results['seed']}", "",
           "| method | shots | mean | 95% CI | tasks |", "|---|---|---|---|---|"]
  for r in results["rows"]:
    if r.get("na"):
      lines.append(f"| {r['method']} | {r['shots']} | n/a | n/a | {r['na']} |")
      continue
    lines.append(f"| {r['method']} | {r['shots']} | {r['mean']:.4f} | {r['ci95']:.4f} | "
                 f"{r['n_tasks']} |")
  q = results.get("zoo_quality")
  if q:
    lines += ["", f"Zoo quality ({q['metric']} of each model on its own task): "
              f"mean {q['mean']:.4f}, min {q['min']:.4f}, max {q['max']:.4f}."]
  lines += ["", f"Wall time: {results['wall_seconds']:.1f} s on "
            f"{results['versions']['backend']} ({results['versions']['device']})."]
  return "\n".join(lines) + "\n"


def write(workdir, results):
  """Writes results.json and results.md atomically (md first, json last).

  Only process 0 of a multi-host job writes.
  """
  if jax.process_index() != 0:
    return
  md = os.path.join(workdir, "results.md")
  with open(md + ".tmp", "w") as f:
    f.write(to_markdown(results))
  os.replace(md + ".tmp", md)
  checkpointing.write_json_atomic(os.path.join(workdir, "results.json"), results)


def clear(workdir):
  """Removes the results of an earlier run before a new one starts (process 0)."""
  if jax.process_index() != 0:
    return
  for name in ("results.json", "results.md"):
    path = os.path.join(workdir, name)
    if os.path.exists(path):
      os.remove(path)
