"""Run configs: loading config files, and validation that names every bad value."""

import importlib.util
import numbers
import os

from dfl2l_jax.errors import ConfigError


def _get(config, path):
  node = config
  for part in path.split("."):
    if part not in node:
      raise ConfigError(f"config has no field {path!r}")
    node = node[part]
  return node


def _is_int(v):
  return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_real(v):
  return isinstance(v, numbers.Real) and not isinstance(v, bool)


_POSITIVE_INTS = (
    "zoo.num_models", "zoo.steps", "zoo.batch_size", "zoo.chunk_steps",
    "fusion.embed_dim", "fusion.epochs", "fusion.inner_steps", "fusion.dro_steps",
    "fusion.meta_batch_size", "fusion.chunk_steps",
    "metatest.num_tasks", "metatest.steps", "metatest.batch_size")
# Fields only some benchmarks have.
_BENCHMARK_POSITIVE_INTS = {
    "sinusoid": ("metatest.num_points", "metatest.query_points"),
    "cifar_fs": ("metatest.query_per_class", "zoo.ways", "zoo.bn_reference",
                 "model.filters"),
    "mini_imagenet": ("metatest.query_per_class", "zoo.ways", "zoo.bn_reference",
                      "model.filters"),
}
_POSITIVE_REALS = (
    "zoo.lr", "fusion.sigma", "fusion.inner_lr", "fusion.outer_lr", "fusion.dro_lr",
    "fusion.embed_lr", "fusion.w_scale", "metatest.lr")
_NON_NEGATIVE_REALS = ("fusion.gamma", "fusion.embed_init_std")
_CHOICES = {"zoo.optimizer": ("sgd", "adam"), "fusion.optimizer": ("sgd", "adam")}


def validate(config):
  """Raises ConfigError naming the first field with a bad value."""
  if config.benchmark not in _BENCHMARK_POSITIVE_INTS:
    raise ConfigError(f"unknown benchmark {config.benchmark!r}; available: "
                      f"{', '.join(_BENCHMARK_POSITIVE_INTS)}")
  if not _is_int(config.seed) or config.seed < 0:
    raise ConfigError(f"config.seed must be a non-negative int, got {config.seed!r}")
  for path in _POSITIVE_INTS + _BENCHMARK_POSITIVE_INTS[config.benchmark]:
    v = _get(config, path)
    if not _is_int(v) or v <= 0:
      raise ConfigError(f"config.{path} must be a positive int, got {v!r}")
  for path in _POSITIVE_REALS:
    v = _get(config, path)
    if not _is_real(v) or not v > 0 or v != v or v == float("inf"):
      raise ConfigError(f"config.{path} must be a positive finite number, got {v!r}")
  for path in _NON_NEGATIVE_REALS:
    v = _get(config, path)
    if not _is_real(v) or not v >= 0 or v == float("inf"):
      raise ConfigError(f"config.{path} must be a finite number >= 0, got {v!r}")
  for path, choices in _CHOICES.items():
    v = _get(config, path)
    if v not in choices:
      raise ConfigError(f"config.{path} must be one of {choices}, got {v!r}")
  vf = config.zoo.val_fraction
  if not _is_real(vf) or not 0 < vf < 1:
    raise ConfigError(f"config.zoo.val_fraction must be in (0, 1), got {vf!r}")
  n_q = num_validation(config)
  if n_q < 1 or n_q >= config.zoo.num_models:
    raise ConfigError(
        f"config.zoo.val_fraction={vf} of {config.zoo.num_models} models leaves "
        f"{config.zoo.num_models - n_q} meta-training and {n_q} meta-validation models; "
        "both must be at least 1")
  if "hidden" in config.get("model", {}):
    hidden = config.model.hidden
    if (not isinstance(hidden, (tuple, list)) or not hidden
        or any(not _is_int(h) or h <= 0 for h in hidden)):
      raise ConfigError(f"config.model.hidden must be a non-empty tuple of positive ints "
                        f"(units per hidden layer), got {hidden!r}")
  if "step_bound" in config.metatest:
    c = config.metatest.step_bound
    if not _is_real(c) or not 0 <= c < 2:
      raise ConfigError(f"config.metatest.step_bound must be 0 (fixed-rate SGD) or in (0, 2) "
                        f"(each step at most c / lambda_max), got {c!r}")
  shots = tuple(config.shots)
  if not shots or any(not _is_int(s) or s <= 0 for s in shots):
    raise ConfigError(f"config.shots must be a non-empty tuple of positive ints, got {shots!r}")
  if "mesh" in config:
    from dfl2l_jax import sharding  # pylint: disable=g-import-not-at-top
    sharding.check_mesh_config(config)
  if config.benchmark == "sinusoid" and config.metatest.query_points >= config.metatest.num_points:
    raise ConfigError(
        f"config.metatest.query_points ({config.metatest.query_points}) must be smaller "
        f"than config.metatest.num_points ({config.metatest.num_points})")


def validate_shots(config, benchmark):
  """Shots must fit in the support points a test task has."""
  for s in config.shots:
    if s > benchmark.points_available:
      raise ConfigError(
          f"config.shots has {s}, but a {benchmark.name} test task has only "
          f"{benchmark.points_available} support examples available"
          + (" per class" if benchmark.metric == "accuracy" else "")
          + " (the rest are held out for its query set)")


def num_validation(config):
  """|Q|: the meta-validation share of the zoo, rounded."""
  return int(round(config.zoo.val_fraction * config.zoo.num_models))


def load_config_file(spec, root=None):
  """`path[:variant]` -> that config file's `get_config(variant)`.

  A relative path that does not exist is looked up under `root` (e.g. the
  repository), so scripts work from any directory.
  """
  path, _, variant = spec.partition(":")
  if not os.path.exists(path) and not os.path.isabs(path) and root is not None:
    path = os.path.join(root, path)
  if not os.path.exists(path):
    raise ConfigError(f"config file {path} does not exist")
  module_spec = importlib.util.spec_from_file_location("_dfl2l_config", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(variant or None)


def dict_diff(found, wanted, prefix=""):
  """Fields where two nested dicts differ, as 'path: saved X, now Y'."""
  if isinstance(found, dict) and isinstance(wanted, dict):
    out = []
    for k in sorted(set(found) | set(wanted)):
      out += dict_diff(found.get(k), wanted.get(k), f"{prefix}{k}.")
    return out
  if found != wanted:
    return [f"{prefix.rstrip('.')}: saved {found!r}, now {wanted!r}"]
  return []


# Fields added after runs were recorded, with the value that reproduces what those runs
# did (a recorded config without the field ran the old behaviour, not today's default).
_BEFORE_FIELD_EXISTED = {("metatest", "step_bound"): 0.0}


def update_from_dict(config, values):
  """Sets the fields of `config` from a JSON dict, e.g. a run's recorded config.

  Lists become tuples where the config declares a tuple; keys the config does
  not have (fields of an older version) are ignored; fields the recorded run did not
  have yet take the value that reproduces it (`_BEFORE_FIELD_EXISTED`).
  """
  _update(config, values)
  for (section, field), old in _BEFORE_FIELD_EXISTED.items():
    if (section in config and field in config[section] and section in values
        and field not in values[section]):
      config[section][field] = old


def _update(config, values):
  for key, value in values.items():
    if key not in config:
      continue
    if isinstance(value, dict):
      _update(config[key], value)
    else:
      config[key] = tuple(value) if isinstance(config[key], tuple) else value


def recorded_config(workdir):
  """The config recorded in <workdir>/results.json (a dict), or None."""
  import json  # pylint: disable=g-import-not-at-top
  path = os.path.join(workdir, "results.json")
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)["config"]
