"""Baselines that need no meta-training: `va` and `finetune` (paper Section 5.1)."""

import jax

from dfl2l_jax.methods import base


def vanilla_average(ctx: base.MethodContext):
  """VA: the element-wise mean of all N pretrained models' parameters."""
  return jax.tree.map(lambda x: x.mean(0), ctx.zoo)


def random_init(ctx: base.MethodContext):
  """Finetuning: a fresh random initialisation of the target network.

  Drawn from the method's own key, independent of the zoo's initialisation.
  """
  return ctx.benchmark.init_params(ctx.key)


VA = base.Method("va", ("offline",), vanilla_average,
                 "vanilla averaging of the zoo's parameters")
FINETUNE = base.Method("finetune", ("offline", "online"), random_init,
                       "finetuning from a random initialisation")
