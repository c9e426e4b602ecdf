"""A model zoo on disk, read by slices: the scaling benchmark streams it.

Not part of the library: the pipeline trains its zoo in memory. Online fusion
(`dfl2l_jax.methods.dfl2l.online_fusion`) takes any zoo object whose `[idx]`
returns those models' pytree (`dfl2l_jax.zoo.take`), so a zoo larger than memory
can be streamed from a store like this one; benchmarks/scaling.py does so.

Algorithm 2 (online DFL2L) sees the meta-training models one at a time, so it
never needs the whole zoo in memory: only the validation models Q and the
models arriving during the current compiled chunk. A `ZooStore` keeps a zoo
as one `.npy` file per parameter leaf, each with the leading model axis, plus
`zoo_store.json` naming the leaves:

    store = ZooStore.create(directory, template, num_models)
    store.write(start, models)       # models: the template's pytree, leading axis n
    store[10:20], store[[3, 7]]      # the pytree of those models, as numpy arrays

Writes and reads open the leaf files as memory maps for the duration of the
call only and copy the rows out, so a read brings only the requested rows into
the process (the pages of a mapping that stays open would count in its
resident memory as the loop touches the whole zoo).

`dfl2l_jax.zoo.take(zoo, idx)` selects models from either an in-memory zoo (a
pytree with the leading model axis) or any object with `__getitem__` returning
that pytree, such as a `ZooStore`.
"""

import json
import os

import jax
import numpy as np
from flax import traverse_util

from dfl2l_jax.errors import ZooError

META_FILE = "zoo_store.json"


class ZooStore:
  """A zoo of `num_models` parameter pytrees on disk; `store[idx]` reads models."""

  def __init__(self, directory):
    path = os.path.join(directory, META_FILE)
    if not os.path.exists(path):
      raise ZooError(f"{directory} holds no zoo store (no {META_FILE}); create one with "
                     "ZooStore.create or ZooStore.save")
    with open(path) as f:
      meta = json.load(f)
    self.directory = directory
    self.num_models = int(meta["num_models"])
    self._leaves = meta["leaves"]
    for leaf in self._leaves:
      file = os.path.join(directory, leaf["file"])
      if not os.path.exists(file):
        raise ZooError(f"zoo store {directory}: leaf {'/'.join(leaf['path'])} is missing "
                       f"its file {leaf['file']}")

  @classmethod
  def create(cls, directory, template, num_models):
    """An empty store (zeros) for `num_models` models shaped like `template`."""
    if int(num_models) < 1:
      raise ZooError(f"a zoo store needs at least one model, got num_models={num_models}")
    flat = _flatten(template)
    os.makedirs(directory, exist_ok=True)
    leaves = []
    for i, (path, leaf) in enumerate(sorted(flat.items())):
      leaf = np.asarray(leaf)
      name = f"leaf_{i:03d}.npy"
      mm = np.lib.format.open_memmap(os.path.join(directory, name), mode="w+",
                                     dtype=leaf.dtype, shape=(int(num_models),) + leaf.shape)
      del mm
      leaves.append({"path": list(path), "file": name, "shape": list(leaf.shape),
                     "dtype": leaf.dtype.str})
    with open(os.path.join(directory, META_FILE), "w") as f:
      json.dump({"num_models": int(num_models), "leaves": leaves}, f, indent=1)
    return cls(directory)

  @classmethod
  def save(cls, directory, zoo, chunk_models=1024):
    """Writes an in-memory zoo (leading model axis) `chunk_models` models at a time."""
    n = num_models(zoo)
    store = cls.create(directory, jax.tree.map(lambda x: x[0], zoo), n)
    for start in range(0, n, chunk_models):
      store.write(start, jax.tree.map(lambda x: x[start:start + chunk_models], zoo))
    return store

  def __len__(self):
    return self.num_models

  def write(self, start, models):
    """Writes `models` (the template's pytree, leading axis n) to rows [start, start + n)."""
    flat = _flatten(models)
    expected = {tuple(leaf["path"]) for leaf in self._leaves}
    if set(flat) != expected:
      raise ZooError(f"zoo store {self.directory}: written models have leaves "
                     f"{sorted('/'.join(p) for p in flat)}, the store has "
                     f"{sorted('/'.join(p) for p in expected)}")
    n = None
    for leaf in self._leaves:
      value = np.asarray(flat[tuple(leaf["path"])])
      if value.shape[1:] != tuple(leaf["shape"]) or (n is not None and value.shape[0] != n):
        raise ZooError(f"zoo store {self.directory}: leaf {'/'.join(leaf['path'])} has shape "
                       f"{value.shape}, expected (n,) + {tuple(leaf['shape'])} with the same "
                       "n for every leaf")
      n = value.shape[0]
    if start < 0 or start + n > self.num_models:
      raise ZooError(f"zoo store {self.directory}: rows [{start}, {start + n}) are outside "
                     f"its {self.num_models} models")
    for leaf in self._leaves:
      mm = np.load(os.path.join(self.directory, leaf["file"]), mmap_mode="r+")
      mm[start:start + n] = np.asarray(flat[tuple(leaf["path"])], dtype=mm.dtype)
      mm.flush()
      del mm

  def __getitem__(self, idx):
    """The models `idx` (an int, a slice or an array of ints) as a pytree of numpy arrays."""
    if isinstance(idx, (list, tuple)):
      idx = np.asarray(idx)
    if isinstance(idx, np.ndarray) and idx.dtype.kind not in "iu":
      raise ZooError(f"zoo store indices must be integers, got dtype {idx.dtype}")
    out = {}
    for leaf in self._leaves:
      mm = np.load(os.path.join(self.directory, leaf["file"]), mmap_mode="r")
      out[tuple(leaf["path"])] = np.array(mm[idx], copy=True)
      del mm
    return traverse_util.unflatten_dict(out)

  def load(self):
    """The whole zoo in memory (numpy arrays, leading model axis)."""
    return self[:]

  @property
  def template(self):
    return self[0]


def _flatten(tree):
  if not isinstance(tree, dict):
    raise ZooError(f"a zoo store holds nested dicts of arrays (flax params), got "
                   f"{type(tree).__name__}")
  return traverse_util.flatten_dict(tree)


def num_models(zoo):
  """Number of models of an in-memory zoo or a store."""
  if isinstance(zoo, ZooStore):
    return len(zoo)
  return jax.tree.leaves(zoo)[0].shape[0]

