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
  assert (reduced.zoo.num_models, reduced.metatest.num_tasks, reduced.model.filters,
          reduced.inversion.steps, reduced.maml.meta_steps) == (40, 50, 32, 200, 300)
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


def test_a_recorded_merging_section_reaches_the_per_method_sections():
  """Runs recorded before the merging methods had a section each put their values there."""
  config = sinusoid_config.get_config()
  recorded = config.to_dict()
  for section in ("task_arithmetic", "ties", "mfgp", "ota", "weight_matching"):
    recorded.pop(section)
  recorded["merging"] = {"ta_scales": [1.0, 3.0], "ties_density": 0.5,
                         "ties_scales": [0.5], "scale_criterion": "zoo_data",
                         "mfgp_descriptor_dim": 2, "mfgp_fit_steps": 7, "mfgp_fit_lr": 0.5,
                         "ot_reg": 0.1, "ot_iters": 9, "wm_iters": 3, "wm_init": "ota",
                         "align_reference": "first", "align_rounds": 2}
  with config.unlocked():
    config_lib.update_from_dict(config, recorded)
  assert "merging" not in config
  assert config.task_arithmetic.to_dict() == {"scales": (1.0, 3.0),
                                              "scale_criterion": "zoo_data"}
  assert config.ties.to_dict() == {"density": 0.5, "scales": (0.5,),
                                   "scale_criterion": "zoo_data"}
  assert config.mfgp.to_dict() == {"descriptor_dim": 2, "fit_steps": 7, "fit_lr": 0.5}
  assert config.ota.to_dict() == {"reg": 0.1, "iters": 9, "align_reference": "first",
                                  "align_rounds": 2}
  assert config.weight_matching.to_dict() == {"iters": 3, "init": "ota",
                                              "align_reference": "first", "align_rounds": 2}


def test_a_config_without_method_sections_runs_them_with_their_defaults():
  """The sections of methods with benchmark-independent settings are optional: the
  pipeline adds each one a config lacks, from its method module's defaults, and every
  benchmark config holds exactly those defaults (so flags can override single fields)."""
  from configs import cifarfs_5way  # pylint: disable=g-import-not-at-top
  from dfl2l_jax import methods  # pylint: disable=g-import-not-at-top
  from dfl2l_jax import pipeline  # pylint: disable=g-import-not-at-top
  sections = methods.default_sections()
  assert {"task_arithmetic", "ties", "mfgp", "ota", "weight_matching", "oml", "zoo_features",
          "zoo_maml", "zoo_distill", "inversion", "inversion_maml"} == set(sections)
  for m in methods.METHODS.values():  # each section belongs to a method that reads it
    for section in m.sections:
      assert sections[section] is m.sections[section]
  image = cifarfs_5way.get_config()
  for section, make in sections.items():
    assert image[section].to_dict() == make().to_dict(), section
  bare = sinusoid_config.get_config("smoke")
  with bare.unlocked():
    for section in sections:
      del bare[section]
  assert methods.add_default_sections(bare) == list(sections)
  assert bare.ties.to_dict() == sections["ties"]().to_dict()
  assert methods.add_default_sections(bare) == []  # nothing more to add
  with bare.unlocked():
    del bare["ota"]
  pipeline.prepare(bare, None, [methods.METHODS["ota"]])  # validates with the defaults
  assert bare.ota.to_dict() == sections["ota"]().to_dict()
