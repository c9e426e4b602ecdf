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
