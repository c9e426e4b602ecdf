"""Loading a meta-learned initialisation for use outside this project.

    from dfl2l_jax import inits
    init = inits.load("/tmp/dfl2l_sinusoid", "dfl2l")
    y = init.apply(init.params, x)            # the network's output at theta_init
    init.model                                # the flax module the parameters belong to

A run saves every method's theta_init under `<workdir>/inits/<method>` and describes
the network in `<workdir>/zoo/spec.json`; `load` rebuilds the module from that
description, restores the parameters into its structure (checked, checksummed) and
refuses non-finite values. Networks with BatchNorm (Conv4) carry no running
statistics (docs/method.md, "BatchNorm"): use `models.apply_with_reference` with a
batch of the new task's support images, as the meta-test does.
"""

import dataclasses
import json
import os
from typing import Any

import flax.linen as nn
import jax
import numpy as np

from dfl2l_jax import checkpointing
from dfl2l_jax import models
from dfl2l_jax.errors import CheckpointError


@dataclasses.dataclass(frozen=True)
class Initialisation:
  """A method's theta_init and the network it parametrises."""
  method: str
  params: Any
  model: nn.Module
  example_input: np.ndarray

  def apply(self, params, x):
    """The network's output (BatchNorm, if any, normalises with the statistics of x)."""
    if isinstance(self.model, models.Conv4):
      return models.apply_train_mode(self.model, params, x)
    return self.model.apply({"params": params}, x)


def model_from_spec(spec):
  """(flax module, example input) from a benchmark spec (zoo/spec.json's "benchmark")."""
  if spec.get("model") == "MLP":
    return models.MLP(hidden=tuple(spec["hidden"])), np.zeros((1, 1), np.float32)
  if spec.get("model") == "Conv4":
    return (models.Conv4(ways=int(spec["ways"]), filters=int(spec["filters"])),
            np.zeros([1] + list(spec["image_shape"]), np.float32))
  raise CheckpointError(f"unknown model {spec.get('model')!r} in the zoo's spec.json")


def available(workdir):
  """The methods whose initialisations `workdir` holds."""
  d = os.path.join(workdir, "inits")
  return sorted(os.listdir(d)) if os.path.isdir(d) else []


def network(workdir):
  """(flax module, example input) of the networks of `workdir`'s zoo: from zoo/spec.json
  (a trained zoo) or from the manifest of the imported zoo it ran on."""
  from dfl2l_jax.zoo import source  # pylint: disable=g-import-not-at-top
  from dfl2l_jax.zoo import store  # pylint: disable=g-import-not-at-top
  spec_path = os.path.join(workdir, "zoo", "spec.json")
  if os.path.exists(spec_path):
    with open(spec_path) as f:
      return model_from_spec(json.load(f)["benchmark"])
  imported = source.read_record(workdir)
  if imported is None or "manifest" not in imported:
    raise CheckpointError(f"{workdir} has no zoo/spec.json nor {source.RECORD}: not a "
                          "workdir of a finished run")
  manifest = imported["manifest"]
  s = manifest["image_size"]
  # The run's group of a zoo of several architectures (recorded since such zoos exist).
  arch = imported.get("architecture", manifest["architecture"])
  return store.network(arch), np.zeros((1, s, s, 3), np.float32)


def load(workdir, method):
  """The initialisation that `method` saved in `workdir` (see the module docstring)."""
  model, example = network(workdir)
  if method not in available(workdir):
    raise CheckpointError(f"{workdir} holds no initialisation of {method!r}; it holds: "
                          f"{', '.join(available(workdir)) or 'none'}")
  template = model.init(jax.random.key(0), example)["params"]
  params = checkpointing.load_tree(os.path.join(workdir, "inits", method), template)
  for leaf in jax.tree.leaves(params):
    if not np.all(np.isfinite(leaf)):
      raise CheckpointError(f"the initialisation of {method!r} in {workdir} holds NaN/Inf")
  return Initialisation(method, params, model, example)
