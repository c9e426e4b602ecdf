r"""How far apart two methods' saved meta-initialisations are, per run.

Every offline run saves each method's initialisation in WORKDIR/inits/METHOD.
This prints, for each workdir, the largest absolute difference between the two
methods' parameters, the same relative to the largest parameter of the first
method, and how many parameter entries differ at all, e.g. to check that an
alignment method moved no unit (its initialisation is vanilla averaging's up to
float rounding):

  python scripts/compare_inits.py --methods va,ota workdirs/img/cf10_seed{1,2,3}

Exits with status 1 and names the problem when a workdir lacks a method or the
two trees differ in structure or shapes.
"""

import argparse
import os

import jax
import numpy as np

from dfl2l_jax import checkpointing
from dfl2l_jax.errors import CheckpointError


def load(directory):
  """The pytree saved by `checkpointing.save_tree` in `directory`, as numpy."""
  if not os.path.isdir(directory):
    raise SystemExit(f"error: no saved initialisation at {directory}")
  with checkpointing.Checkpointer(directory, max_to_keep=1) as ckpt:
    step = ckpt.latest_step()
    if step is None:
      raise SystemExit(f"error: {directory} holds no complete checkpoint")
    try:
      return ckpt.restore(step, None)
    except CheckpointError as e:
      raise SystemExit(f"error: {e}") from e


def compare(a, b, where):
  """(max |a-b|, max |a-b| / max |a|, entries that differ, entries)."""
  la, ta = jax.tree_util.tree_flatten_with_path(a)
  lb, tb = jax.tree_util.tree_flatten_with_path(b)
  if ta != tb:
    raise SystemExit(f"error: {where}: the two initialisations have different structures")
  diff = scale = 0.0
  differ = total = 0
  for (path, x), (_, y) in zip(la, lb):
    if x.shape != y.shape:
      raise SystemExit(f"error: {where}: {jax.tree_util.keystr(path)} has shapes "
                       f"{x.shape} and {y.shape}")
    d = np.abs(x.astype(np.float64) - y.astype(np.float64))
    diff = max(diff, float(d.max(initial=0.0)))
    scale = max(scale, float(np.abs(x).max(initial=0.0)))
    differ += int(np.count_nonzero(d))
    total += d.size
  return diff, diff / scale if scale else float("nan"), differ, total


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("workdirs", nargs="+")
  parser.add_argument("--methods", default="va,ota",
                      help="two method names, comma-separated (default va,ota)")
  args = parser.parse_args(argv)
  names = [m.strip() for m in args.methods.split(",") if m.strip()]
  if len(names) != 2:
    raise SystemExit(f"error: --methods needs exactly two names, got {args.methods!r}")
  print(f"| workdir | max abs {names[1]} - {names[0]} | relative to max abs {names[0]} "
        "| entries that differ |")
  print("|---|---|---|---|")
  for w in args.workdirs:
    a, b = (load(os.path.join(w, "inits", n)) for n in names)
    diff, rel, differ, total = compare(a, b, w)
    print(f"| {w} | {diff:.3g} | {rel:.3g} | {differ} of {total} |")


if __name__ == "__main__":
  main()
