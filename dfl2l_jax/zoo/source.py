"""Where a run's zoo comes from: trained from the config, or read from a zoo folder.

`config.zoo.source` names a zoo folder (store.py; written by launch.import_zoo or by
another run's trainer). The run then trains nothing: the folder's manifest fixes the
number of models, their ways and width (copied into the config, logged, and recorded
with the results), its models are the zoo, and a workdir remembers which zoo it ran on
(`zoo_source.json`: the manifest's digest and every file's sha256), so that a resumed or
later run on a changed zoo is refused, naming what changed.
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

  Sets config.zoo.num_models, config.zoo.ways and config.model.filters to the manifest's.
  """
  directory = source_of(config)
  if not directory:
    return None
  directory = os.path.expanduser(directory)
  if config.benchmark == "sinusoid":
    raise ConfigError("config.zoo.source: an imported zoo is for the image benchmarks "
                      "(cifar_fs, mini_imagenet); the sinusoid zoo is trained here")
  imported = store.load(directory)
  arch = imported.manifest["architecture"]
  with config.unlocked():
    config.zoo.num_models = imported.num_models
    config.zoo.ways = arch["ways"]
    config.model.filters = arch["filters"]
  metrics.log.info("zoo from %s: %d %s models (width %d, %d-way, BatchNorm %s), digest %s",
                   directory, imported.num_models, arch["name"], arch["filters"],
                   arch["ways"], imported.manifest["batch_norm"], imported.digest[:12])
  return imported


def record(imported):
  """What a workdir keeps of the zoo it ran on: the digest, each file's hash, and the
  manifest (which describes the network of every initialisation saved there)."""
  out = {"digest": imported.digest, "files": imported.file_hashes(),
         "manifest": imported.manifest}
  if imported.bn_stats is not None:  # what an exported initialisation carries (exporter.py)
    out["mean_running_stats"] = {
        layer: {k: np.asarray(v).mean(0).tolist() for k, v in stats.items()}
        for layer, stats in imported.bn_stats.items()}
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


def check_workdir(workdir, imported):
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
  now = record(imported)
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
