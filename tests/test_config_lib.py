"""Recorded configs read back (dfl2l_jax/config_lib.py)."""

from configs import sinusoid as sinusoid_config
from dfl2l_jax import config_lib


def test_a_recorded_config_reproduces_its_run_including_fields_it_predates():
  config = sinusoid_config.get_config()
  assert config.metatest.step_bound == 1.9  # today's default
  recorded = config.to_dict()
  recorded["shots"] = [3, 7]  # JSON lists come back as the declared tuples
  recorded["metatest"].pop("step_bound")  # a run recorded before the field existed
  recorded["removed_field"] = 1  # a field of an older version: ignored
  with config.unlocked():
    config_lib.update_from_dict(config, recorded)
  assert config.shots == (3, 7)
  assert config.metatest.step_bound == 0.0  # that run used fixed-rate SGD
  with config.unlocked():
    config_lib.update_from_dict(config, sinusoid_config.get_config().to_dict())
  assert config.metatest.step_bound == 1.9


def test_the_field_protocol_configs_state_the_field_settings_and_validate():
  import pytest  # pylint: disable=g-import-not-at-top
  from configs import dfml_cifarfs, dfml_miniimagenet  # pylint: disable=g-import-not-at-top
  full = dfml_cifarfs.get_config()
  assert (full.shots, full.model.filters, full.zoo.shared_init, full.zoo.num_models,
          full.zoo.ways, full.metatest.num_tasks, full.metatest.query_per_class) == (
              (1, 5), 32, False, 100, 5, 600, 15)
  assert dfml_cifarfs.get_config("proxy").data.dataset == "mini_imagenet32"
  reduced = dfml_miniimagenet.get_config("reduced")
  assert (reduced.zoo.num_models, reduced.metatest.num_tasks, reduced.model.filters) == (
      40, 50, 32)
  for c in (full, reduced, dfml_cifarfs.get_config("proxy,smoke")):
    config_lib.validate(c)
  with pytest.raises(ValueError, match="unknown config variants"):
    dfml_cifarfs.get_config("fast")
  with pytest.raises(ValueError, match="proxy variant exists for the CIFAR-FS"):
    dfml_miniimagenet.get_config("proxy")


def test_the_published_reduced_scales_are_config_variants_that_validate():
  """`reduced` (the Tables 2-3 pages) and `data_free` (results/data_free.md) change only
  the fields their pages list, and validate; impossible combinations are refused."""
  import pytest  # pylint: disable=g-import-not-at-top
  from configs import cifarfs_5way, cifarfs_10way, miniimagenet_5way, miniimagenet_10way  # pylint: disable=g-import-not-at-top
  from configs import fewshot_base  # pylint: disable=g-import-not-at-top

  def flat(c, prefix=""):
    out = {}
    for k, v in c.items():
      out.update(flat(v, f"{prefix}{k}.") if hasattr(v, "items") else {prefix + k: v})
    return out

  cases = [(cifarfs_5way, "proxy", "reduced", fewshot_base.REDUCED[("cifar_fs", 5)]),
           (cifarfs_10way, "proxy", "reduced", fewshot_base.REDUCED[("cifar_fs", 10)]),
           (miniimagenet_5way, "", "reduced", fewshot_base.REDUCED[("mini_imagenet", 5)]),
           (miniimagenet_10way, "", "reduced", fewshot_base.REDUCED[("mini_imagenet", 10)]),
           (cifarfs_5way, "proxy", "data_free", fewshot_base.DATA_FREE)]
  for module, base, variant, listed in cases:
    before = flat(module.get_config(base))
    after = flat(module.get_config(",".join(v for v in (base, variant) if v)))
    changed = {k for k in before if before[k] != after[k]}
    assert changed and changed <= set(listed), (module.__name__, variant, changed)
    assert all(after[k] == v for k, v in listed.items())
    config_lib.validate(module.get_config(",".join(v for v in (base, variant) if v)))
  with pytest.raises(ValueError, match="choose one of the variants"):
    cifarfs_5way.get_config("proxy,smoke,reduced")
  with pytest.raises(ValueError, match="data_free variant exists for configs/cifarfs_5way"):
    miniimagenet_5way.get_config("data_free")
