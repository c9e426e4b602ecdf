"""The registry of methods, by the names used in `config.methods` and results."""

from dfl2l_jax.errors import ConfigError
from dfl2l_jax.methods import base
from dfl2l_jax.methods import dfl2l
from dfl2l_jax.methods import inversion_maml
from dfl2l_jax.methods import maml
from dfl2l_jax.methods import merging
from dfl2l_jax.methods import mfgp
from dfl2l_jax.methods import ot_fusion
from dfl2l_jax.methods import simple
from dfl2l_jax.methods import weight_matching
from dfl2l_jax.methods import zoo_distill
from dfl2l_jax.methods import zoo_features
from dfl2l_jax.methods.base import Learner, Method, MethodContext

__all__ = ["METHODS", "TAGS", "Learner", "Method", "MethodContext", "add_default_sections",
           "base", "default_sections", "resolve"]

METHODS = {m.name: m for m in (dfl2l.DFL2L, dfl2l.DFL2L_ONLINE, simple.VA, simple.FINETUNE,
                                dfl2l.DFL2L_NO_DRO, dfl2l.DFL2L_MLE,
                                merging.TASK_ARITHMETIC, merging.TIES, mfgp.MFGP,
                                maml.MAML, maml.FOMAML, maml.OML,
                                ot_fusion.OTA, weight_matching.WEIGHT_MATCHING,
                                zoo_features.ZOO_FEATURES, maml.ZOO_MAML,
                                zoo_distill.ZOO_DISTILL, inversion_maml.INVERSION_MAML)}


TAGS = tuple(sorted({t for m in METHODS.values() for t in m.tags}))
assert not set(TAGS) & set(METHODS), "a tag must not be a method's name"


def default_sections():
  """{section: maker} of every config section a registered method reads with defaults.

  A section shared by several methods (`inversion`) has one maker.
  """
  out = {}
  for m in METHODS.values():
    for section, make in m.sections.items():
      if out.setdefault(section, make) is not make:
        raise AssertionError(f"config section {section!r} has two default makers")
  return out


def add_default_sections(config):
  """Adds to `config`, in place, each method section it lacks, with its defaults.

  A config written for one benchmark need not spell out the sections of methods it
  does not tune. Returns the names of the sections added.
  """
  added = []
  with config.unlocked():
    for section, make in default_sections().items():
      if section not in config:
        config[section] = make()
        added.append(section)
  return added


def resolve(names: str, setting: str):
  """Methods named in a comma-separated string of method names and tags (a tag names
  every method it labels, in registry order); '' gives the launcher's defaults (the
  methods tagged `setting`), 'all' every method."""
  if not names.strip():
    return [m for m in METHODS.values() if setting in m.tags]
  if names.strip() == "all":
    return list(METHODS.values())
  out, named = [], set()
  for name in (n.strip() for n in names.split(",")):
    if name in METHODS:
      if name in named:
        raise ConfigError(f"method {name!r} is named twice in config.methods")
      named.add(name)
      group = [METHODS[name]]
    elif name in TAGS:
      group = [m for m in METHODS.values() if name in m.tags]
    else:
      raise ConfigError(f"unknown method {name!r} in config.methods; available: "
                        f"{', '.join(METHODS)}, the tags {', '.join(TAGS)} (or 'all')")
    out += [m for m in group if m not in out]
  return out
