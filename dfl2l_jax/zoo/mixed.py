"""Our trainer as the producer of a zoo of several architectures (`config.zoo.architectures`).

  python -m launch.pretrain --config=configs/cifarfs_5way.py:proxy --workdir=W \
      --config.zoo.num_models=40 --config.zoo.architectures=conv4-32:30,resnet10-16-32-64-128:10
  python -m launch.offline --config=configs/cifarfs_5way.py:proxy --workdir=W2 \
      --config.zoo.source=W/zoo_models

`config.zoo.architectures` lists groups as NAME:COUNT, NAME a group name of store.py
("conv4-32", "resnet10", "resnet18", "resnet12", or a ResNet of other widths such as
"resnet10-16-32-64-128"), the counts adding up to config.zoo.num_models. Models are
numbered across the groups in that order, and model m's task (its classes and images) is
the one a zoo of one architecture of the same size gives its model m: a mixed zoo and a
Conv4-only zoo of one seed differ only in the architecture of their models. Each group is
one vmapped ensemble of the zoo trainer (trainer.train_zoo), resumable in
workdir/groups/NAME; the whole zoo is then written as one zoo folder (workdir/zoo_models,
BatchNorm "batch" as every zoo we train), which every launcher reads with
config.zoo.source: the zoo folder is how a mixed zoo is run (zoo_features reads every
group, the other methods one Conv4 group: docs/zoo_format.md).
"""

import copy
import os
import re

import jax
import numpy as np

from dfl2l_jax import metrics
from dfl2l_jax import sharding as sharding_lib
from dfl2l_jax.errors import ConfigError
from dfl2l_jax.zoo import contamination
from dfl2l_jax.zoo import store
from dfl2l_jax.zoo import trainer

_NAME = re.compile(r"^(conv4)-(\d+)$|^(resnet10|resnet18|resnet12)((?:-\d+){4})?$")


def spec_of(config):
  return str(config.zoo.get("architectures", "") or "")


def parse(config):
  """[(group name, architecture, count)] of config.zoo.architectures ([] if empty)."""
  spec = spec_of(config).strip()
  if not spec:
    return []
  where = f"config.zoo.architectures={spec!r}"
  groups = []
  for part in spec.split(","):
    name, sep, count = part.strip().partition(":")
    m = _NAME.match(name.strip())
    if not sep or m is None:
      raise ConfigError(f"{where}: {part.strip()!r} is not NAME:COUNT with NAME conv4-F, "
                        "resnet10, resnet18, resnet12 or a ResNet with 4 widths "
                        "(resnet10-16-32-64-128)")
    if not count.strip().isdigit() or int(count) < 1:
      raise ConfigError(f"{where}: the count of {name.strip()} must be a positive integer, "
                        f"got {count.strip()!r}")
    ways = int(config.zoo.ways)
    if m.group(1):
      arch = {"name": "conv4", "filters": int(m.group(2)), "ways": ways}
    else:
      arch = {"name": m.group(3), "ways": ways}
      if m.group(4):
        arch["widths"] = [int(w) for w in m.group(4).strip("-").split("-")]
    gname = store.group_name(arch)
    if any(g[0] == gname for g in groups):
      raise ConfigError(f"{where}: {gname} is named twice")
    groups.append((gname, arch, int(count)))
  total = sum(g[2] for g in groups)
  if total != config.zoo.num_models:
    raise ConfigError(f"{where}: the counts add up to {total}, and config.zoo.num_models "
                      f"is {config.zoo.num_models}; make them equal")
  if len(groups) < 2:
    raise ConfigError(f"{where}: one architecture; set config.model.filters instead "
                      "(architectures is for a zoo of several)")
  return groups


def validate(config):
  """One-line refusals of a bad config.zoo.architectures."""
  if parse(config) and config.zoo.get("source", ""):
    raise ConfigError("config.zoo.architectures trains a zoo, and config.zoo.source names "
                      "one to import: set one of them")
  trained = contamination.training_spec(config)
  if parse(config) and trained:
    raise ConfigError(f"config.zoo.contamination={trained!r} changes how models are trained, "
                      "and applies to a zoo of one architecture, not to "
                      "config.zoo.architectures")


def group_config(config, arch, count):
  """The config that trains one group: its size, its Conv4 width, no groups."""
  c = copy.deepcopy(config)
  with c.unlocked():
    c.zoo.num_models = count
    c.zoo.architectures = ""
    if arch["name"] == "conv4":
      c.model.filters = arch["filters"]
  return c


def train_mixed_zoo(config, make_benchmark, workdir, writer=None, hooks=None, *, mesh):
  """Trains every group of config.zoo.architectures (module doc) and writes the zoo
  folder workdir/zoo_models (kept if already written). `make_benchmark(config, network,
  first_model)` builds the benchmark of one group; `mesh`: the run's models mesh.
  Returns (folder, quality of all)."""
  folder = os.path.join(workdir, "zoo_models")
  groups, first = [], 0
  for name, arch, count in parse(config):
    cfg = group_config(config, arch, count)
    net = None if arch["name"] == "conv4" else store.network(arch, head=True)
    bench = make_benchmark(cfg, net, first)
    metrics.log.info("zoo group %s: models %d-%d", name, first, first + count - 1)
    params = trainer.train_zoo(cfg, bench, os.path.join(workdir, "groups", name), writer,
                               hooks, mesh=mesh)
    quality = trainer.zoo_quality(params, bench)
    metrics.log.info("zoo group %s quality (%s on own task): mean %.4f min %.4f max %.4f",
                     name, quality["metric"], quality["mean"], quality["min"],
                     quality["max"])
    groups.append((name, arch, np.arange(first, first + count), params, bench, quality))
    first += count
  per_model = [v for g in groups for v in g[5]["per_model"]]
  quality = {"metric": groups[0][5]["metric"], "mean": float(np.mean(per_model)),
             "min": float(np.min(per_model)), "max": float(np.max(per_model)),
             "per_model": per_model}
  if jax.process_index() == 0 and not os.path.exists(os.path.join(folder, store.MANIFEST)):
    top = groups[0][1]
    manifest = trainer.zoo_manifest(config, groups[0][4], top, [])
    for name, arch, _, _, bench, q in groups:
      for cls, acc in zip(np.asarray(bench.zoo_tasks["classes"]), q["per_model"]):
        entry = {"classes": [int(c) for c in cls], "accuracy": acc, "source": None}
        if arch != top:
          entry["architecture"] = arch
        manifest["models"].append(entry)
    for i, entry in enumerate(manifest["models"]):
      entry["file"], entry["sha256"] = store.model_file_name(i), "0" * 64
    store.validate_manifest(manifest, f"{folder} (the manifest to write)")
    store.write(folder, manifest, groups=[
        store.ZooGroup(name, arch, idx, sharding_lib.to_host(params), None)
        for name, arch, idx, params, _, _ in groups])
    metrics.log.info("wrote %s: %s", folder, ", ".join(
        f"{name} x{len(idx)}" for name, _, idx, _, _, _ in groups))
  return folder, quality

