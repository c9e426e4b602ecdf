"""The one optimizer factory: a config's optimizer name and rate -> an optax transformation.

The zoo trainer (`config.zoo.optimizer`, `zoo.lr`) and the fusion loops
(`config.fusion.optimizer`, `fusion.outer_lr`) choose from NAMES; the methods whose
optimizer is not a setting (MAML's outer loop, distillation, inversion) use Adam.
"""

import optax

NAMES = ("sgd", "adam")


def make(name: str, lr: float) -> optax.GradientTransformation:
  if name == "sgd":
    return optax.sgd(lr)
  if name == "adam":
    return optax.adam(lr)
  raise ValueError(f"unknown optimizer {name!r}; one of {NAMES}")
