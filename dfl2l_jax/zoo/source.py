"""Where a run's zoo comes from: trained from the config, or read from a zoo folder.

`config.zoo.source` names a zoo folder (store.py; written by launch.import_zoo or by
another run's trainer). The run then trains nothing: the folder's manifest fixes the
number of models, their ways and width (copied into the config, logged, and recorded
with the results), its models are the zoo, and a workdir remembers which zoo it ran on
(`zoo_source.json`: the manifest's digest and every file's sha256), so that a resumed or
later run on a changed zoo is refused, naming what changed.

A zoo of several architectures (store.ZooGroup per architecture) runs on one of them as
"the zoo" of the run (`config.zoo.group`, default the largest; a Conv4 group, since the
meta-test network is a Conv4): its models are split into S and Q and are what every
parameter-space method fuses; the function-space methods that read every group
(zoo_features) say so in their rows, and every other row names the group it used.
"""

import json
import os

import numpy as np

from dfl2l_jax import checkpointing
from dfl2l_jax import metrics
from dfl2l_jax.errors import CheckpointError, ConfigError
from dfl2l_jax.zoo import store

RECORD = "zoo_source.json"
TRAINED_ZOO = "zoo_models"  # where a run's trainer writes its finished zoo as a zoo folder


def source_of(config):
  return str(config.zoo.get("source", "") or "")


def load_source(config):
  """The zoo named by config.zoo.source (store.LoadedZoo, fully checked), or None.

  Sets config.zoo.num_models, config.zoo.ways and config.model.filters to those of the
  run's group (`main_group`).
  """
  directory = source_of(config)
  if not directory:
    if config.zoo.get("group", ""):
      raise ConfigError(f"config.zoo.group={config.zoo.group!r} chooses a group of an "
                        "imported zoo of several architectures, and config.zoo.source "
                        "names none")
    return None
  directory = os.path.expanduser(directory)
  if config.benchmark == "sinusoid":
    raise ConfigError("config.zoo.source: an imported zoo is for the image benchmarks "
                      "(cifar_fs, mini_imagenet); the sinusoid zoo is trained here")
  imported = store.load(directory)
  group = main_group(imported, config.zoo.get("group", ""))
  arch = group.architecture
  with config.unlocked():
    config.zoo.num_models = len(group.indices)
    config.zoo.ways = arch["ways"]
    config.model.filters = arch["filters"]
  metrics.log.info("zoo from %s: %d %s models (width %d, %d-way, BatchNorm %s), digest %s",
                   directory, len(group.indices), arch["name"], arch["filters"],
                   arch["ways"], imported.manifest["batch_norm"], imported.digest[:12])
  if imported.mixed:
    metrics.log.info("a zoo of %d architectures: %s; parameter-space methods use the %s "
                     "group (config.zoo.group), zoo_features every model", len(imported.groups),
                     describe_groups(imported), group.name)
  return imported


def describe_groups(imported):
  """'conv4-32 x30, resnet10 x10'."""
  return ", ".join(f"{g.name} x{len(g.indices)}" for g in imported.groups)


def main_group(imported, name=""):
  """The group of `imported` that the run uses as its zoo: the one called `name`, or
  the largest (the first of the largest). ConfigError if there is no such group, or it
  is not a Conv4 group, or it has fewer than 2 models."""
  groups = imported.groups
  names = [g.name for g in groups]
  if name:
    if name not in names:
      raise ConfigError(f"config.zoo.group={name!r}: {imported.directory} holds the groups "
                        f"{', '.join(names)}")
    group = groups[names.index(name)]
  else:
    group = max(groups, key=lambda g: len(g.indices))  # max keeps the first on a tie
  how = f"config.zoo.group={name!r}" if name else "its largest group"
  if group.architecture["name"] != "conv4":
    conv4 = [g.name for g in groups if g.architecture["name"] == "conv4"]
    raise ConfigError(
        f"{imported.directory}: {how} is {group.name}, but the network that "
        "parameter-space methods fuse and the meta-test adapts is a Conv4 here; "
        + (f"choose a Conv4 group: config.zoo.group={conv4[0]!r}" if conv4 else
           "the zoo has no Conv4 group"))
  if len(group.indices) < 2:
    raise ConfigError(f"{imported.directory}: {how} {group.name} has 1 model; the run "
                      "splits its group into meta-training and meta-validation models and "
                      "needs at least 2 (choose another with config.zoo.group)")
  return group


def other_groups(imported, config):
  """The groups of a mixed zoo other than the run's (`main_group`), in the zoo's order;
  none for a zoo of one architecture (or none imported)."""
  if imported is None or not imported.mixed:
    return []
  main = main_group(imported, config.zoo.get("group", ""))
  return [g for g in imported.groups if g.name != main.name]


def every_model_note(imported):
  """What a row of a method that uses every group of a mixed zoo says about it, e.g.
  'all 40: conv4-32 x30, resnet10-16-32-64-128 x10'."""
  return f"all {imported.num_models}: {describe_groups(imported)}"


def group_note(imported, config):
  """What a row of a method that uses only the run's group says about it (a mixed zoo),
  or None: e.g. 'conv4-32: 30 of 40 models'."""
  if imported is None or not imported.mixed:
    return None
  group = main_group(imported, config.zoo.get("group", ""))
  return f"{group.name}: {len(group.indices)} of {imported.num_models} models"


def record(imported, config=None):
  """What a workdir keeps of the zoo it ran on: the digest, each file's hash, the
  manifest, and the architecture of the run's group (the network of every initialisation
  saved there) with its models' mean running statistics."""
  group = main_group(imported, config.zoo.get("group", "") if config is not None else "")
  out = {"digest": imported.digest, "files": imported.file_hashes(),
         "manifest": imported.manifest, "architecture": group.architecture,
         "group": group.name}
  if group.bn_stats is not None:  # what an exported initialisation carries (exporter.py)
    out["mean_running_stats"] = {
        layer: {k: np.asarray(v).mean(0).tolist() for k, v in stats.items()}
        for layer, stats in group.bn_stats.items()}
  return out


def read_record(workdir):
  """The record of the imported zoo `workdir` ran on, or None."""
  path = os.path.join(workdir, RECORD)
  if not os.path.exists(path):
    return None
  try:
    with open(path, encoding="utf-8") as f:
      previous = json.load(f)
    previous["digest"], previous["files"]  # pylint: disable=pointless-statement
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise CheckpointError(f"{path}: unreadable ({e}); it records which zoo this workdir "
                          "ran on: restore it or use a new --workdir") from None
  return previous


def check_workdir(workdir, imported, config=None):
  """Refuses a workdir that ran on another zoo than `imported` (None: a trained zoo);
  records the imported zoo in a new workdir. Nothing is written on refusal."""
  path = os.path.join(workdir, RECORD)
  trained = os.path.isdir(os.path.join(workdir, "zoo"))
  previous = read_record(workdir)
  if imported is None:
    if previous is not None:
      raise ConfigError(f"{workdir} ran on the imported zoo of {path}; give the same "
                        "--config.zoo.source, or use a new --workdir for a trained zoo")
    return
  if trained:
    raise ConfigError(f"{workdir} holds a zoo trained from a config ({workdir}/zoo); an "
                      "imported zoo (config.zoo.source) needs a workdir of its own")
  now = record(imported, config)
  if previous is None:
    checkpointing.write_json_atomic(path, now)
    return
  if previous["digest"] != now["digest"]:
    changed = sorted(f for f in set(now["files"]) | set(previous["files"])
                     if now["files"].get(f) != previous["files"].get(f))
    what = (f"changed model files: {', '.join(changed[:5])}"
            f"{' ...' if len(changed) > 5 else ''}" if changed
            else "its manifest changed (same model files)")
    raise CheckpointError(f"the zoo in {imported.directory} is not the one {workdir} ran on "
                          f"({what}); use a new --workdir, or restore the zoo")
