"""Run configs: loading config files, and validation that names every bad value."""

import importlib.util
import os

from dfl2l_jax import checks
from dfl2l_jax import optimizers
from dfl2l_jax.errors import ConfigError


FIELDS = {
    "seed": checks.NON_NEGATIVE_INT,
    "zoo.num_models": checks.POSITIVE_INT, "zoo.steps": checks.POSITIVE_INT,
    "zoo.batch_size": checks.POSITIVE_INT, "zoo.chunk_steps": checks.POSITIVE_INT,
    "zoo.lr": checks.POSITIVE_REAL, "zoo.optimizer": checks.one_of(optimizers.NAMES),
    "zoo.val_fraction": checks.real_in(0, 1),
    "fusion.embed_dim": checks.POSITIVE_INT, "fusion.epochs": checks.POSITIVE_INT,
    "fusion.inner_steps": checks.POSITIVE_INT, "fusion.dro_steps": checks.POSITIVE_INT,
    "fusion.meta_batch_size": checks.POSITIVE_INT, "fusion.chunk_steps": checks.POSITIVE_INT,
    "fusion.rate_halvings": checks.NON_NEGATIVE_INT,
    "fusion.sigma": checks.POSITIVE_REAL, "fusion.inner_lr": checks.POSITIVE_REAL,
    "fusion.outer_lr": checks.POSITIVE_REAL, "fusion.dro_lr": checks.POSITIVE_REAL,
    "fusion.embed_lr": checks.POSITIVE_REAL, "fusion.w_scale": checks.POSITIVE_REAL,
    "fusion.gamma": checks.NON_NEGATIVE_REAL, "fusion.embed_init_std": checks.NON_NEGATIVE_REAL,
    "fusion.optimizer": checks.one_of(optimizers.NAMES),
    "metatest.num_tasks": checks.POSITIVE_INT, "metatest.steps": checks.POSITIVE_INT,
    "metatest.batch_size": checks.POSITIVE_INT, "metatest.lr": checks.POSITIVE_REAL,
    "shots": checks.POSITIVE_INTS,
}
_IMAGE_FIELDS = {"metatest.query_per_class": checks.POSITIVE_INT, "zoo.ways": checks.POSITIVE_INT,
                 "zoo.bn_reference": checks.POSITIVE_INT, "model.filters": checks.POSITIVE_INT}
# Fields only some benchmarks have.
BENCHMARK_FIELDS = {
    "sinusoid": {"metatest.num_points": checks.POSITIVE_INT,
                 "metatest.query_points": checks.POSITIVE_INT},
    "cifar_fs": _IMAGE_FIELDS,
    "mini_imagenet": _IMAGE_FIELDS,
}
# Fields checked where the config has them.
OPTIONAL_FIELDS = {
    "model.hidden": checks.explained(checks.POSITIVE_INTS, "units per hidden layer"),
    "metatest.step_bound": checks.explained(
        checks.real_in(0, 2, low_closed=True),
        "0: fixed-rate SGD; else each step at most c / lambda_max"),
}


def validate(config):
  """Raises ConfigError naming the first field with a bad value."""
  if config.benchmark not in BENCHMARK_FIELDS:
    raise ConfigError(f"unknown benchmark {config.benchmark!r}; available: "
                      f"{', '.join(BENCHMARK_FIELDS)}")
  checks.check(config, FIELDS)
  checks.check(config, BENCHMARK_FIELDS[config.benchmark])
  checks.check(config, OPTIONAL_FIELDS, optional=True)
  vf = config.zoo.val_fraction
  n_q = num_validation(config)
  if n_q < 1 or n_q >= config.zoo.num_models:
    raise ConfigError(
        f"config.zoo.val_fraction={vf} of {config.zoo.num_models} models leaves "
        f"{config.zoo.num_models - n_q} meta-training and {n_q} meta-validation models; "
        "both must be at least 1")
  if "mesh" in config:
    from dfl2l_jax import sharding  # pylint: disable=g-import-not-at-top
    sharding.check_mesh_config(config)
  if "contamination" in config.zoo:
    from dfl2l_jax.zoo import contamination  # pylint: disable=g-import-not-at-top
    contamination.validate(config)
  if "architectures" in config.zoo:
    from dfl2l_jax.zoo import mixed  # pylint: disable=g-import-not-at-top
    mixed.validate(config)
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
_BEFORE_FIELD_EXISTED = {("metatest", "step_bound"): 0.0, ("fusion", "rate_halvings"): 0,
                         ("zoo", "source"): "", ("zoo", "group"): "",
                         ("zoo", "contamination"): "", ("zoo", "architectures"): "",
                         ("zoo", "out_of_domain_dir"): "",
                         ("zoo_features", "screen"): "off", ("zoo_distill", "screen"): "off",
                         ("zoo_features", "screen_shots"): 5,
                         ("zoo_features", "screen_tasks"): 50,
                         ("zoo_features", "screen_references"): 8,
                         ("zoo_features", "group_weight"): 1.0,
                         ("zoo_features", "group_weight_grid"): ()}


# Fields that moved: each field of the `merging` section of older runs, and where it is now
# (a field two methods shared went to both).
_MOVED_FROM_MERGING = {
    "ta_scales": [("task_arithmetic", "scales")], "ties_scales": [("ties", "scales")],
    "ties_density": [("ties", "density")],
    "scale_criterion": [("task_arithmetic", "scale_criterion"), ("ties", "scale_criterion")],
    "mfgp_descriptor_dim": [("mfgp", "descriptor_dim")],
    "mfgp_fit_steps": [("mfgp", "fit_steps")], "mfgp_fit_lr": [("mfgp", "fit_lr")],
    "ot_reg": [("ota", "reg")], "ot_iters": [("ota", "iters")],
    "wm_iters": [("weight_matching", "iters")], "wm_init": [("weight_matching", "init")],
    "align_reference": [("ota", "align_reference"), ("weight_matching", "align_reference")],
    "align_rounds": [("ota", "align_rounds"), ("weight_matching", "align_rounds")]}


def with_moved_fields(values):
  """A recorded config with fields that moved put where they are now."""
  out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in values.items()}
  old = out.pop("merging", None)
  if not isinstance(old, dict):
    return out
  for field, value in old.items():
    for section, new_field in _MOVED_FROM_MERGING.get(field, ()):
      out.setdefault(section, {}).setdefault(new_field, value)
  return out


def recorded_values(values):
  """A recorded config (a dict) as today's fields read it: fields that moved put where they
  are now, and fields added since (`_BEFORE_FIELD_EXISTED`) with the value the recorded run
  had, where their section was recorded."""
  out = with_moved_fields(values)
  for (section, field), old in _BEFORE_FIELD_EXISTED.items():
    if isinstance(out.get(section), dict) and field not in out[section]:
      out[section] = dict(out[section], **{field: old})
  return out


def update_from_dict(config, values):
  """Sets the fields of `config` from a JSON dict, e.g. a run's recorded config.

  Lists become tuples where the config declares a tuple; keys the config does
  not have (fields of an older version) are ignored, fields that moved
  (`_MOVED_FROM_MERGING`) are set where they are now; fields the recorded run did not
  have yet take the value that reproduces it (`_BEFORE_FIELD_EXISTED`).
  """
  values = with_moved_fields(values)
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
