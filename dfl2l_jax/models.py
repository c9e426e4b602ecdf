"""Target networks whose parameters the zoo holds and the fusion model predicts."""

from typing import Sequence

import flax.linen as nn


class MLP(nn.Module):
  """Fully connected regressor: ReLU hidden layers, linear output.

  The sinusoid networks of the paper (Section 5.2): two hidden layers of 50.
  """
  hidden: Sequence[int] = (50, 50)
  out: int = 1

  @nn.compact
  def __call__(self, x):
    for width in self.hidden:
      x = nn.relu(nn.Dense(width)(x))
    return nn.Dense(self.out)(x)


class Conv4(nn.Module):
  """The four-block CNN of few-shot learning (Finn et al. 2017), paper Section 5.3.

  Each block: 3x3 convolution with `filters` channels, BatchNorm, ReLU, 2x2
  max-pool; then a linear head with `ways` outputs.

  BatchNorm: in train mode (`train=True`) it normalises with the statistics of
  the batch it is given. Nothing in this project keeps running averages: an
  evaluation batch is normalised with the statistics of a reference batch
  through `apply_with_reference` (momentum 0 makes the stored "running"
  statistics exactly the reference batch's), so a network is fully described by
  its trainable parameters. See docs/method.md, "BatchNorm".
  """
  ways: int = 5
  filters: int = 16

  @nn.compact
  def __call__(self, x, train: bool = True):
    for _ in range(4):
      x = nn.Conv(self.filters, (3, 3), padding="SAME")(x)
      x = nn.BatchNorm(use_running_average=not train, momentum=0.0)(x)
      x = nn.relu(x)
      x = nn.max_pool(x, (2, 2), strides=(2, 2))
    return nn.Dense(self.ways)(x.reshape(x.shape[0], -1))


def apply_train_mode(model, params, x):
  """Logits with BatchNorm normalising by the statistics of `x` itself."""
  logits, _ = model.apply({"params": params}, x, train=True, mutable=["batch_stats"])
  return logits


def apply_with_reference(model, params, x, reference):
  """Logits for `x` with BatchNorm statistics taken from the batch `reference`.

  No statistic of `x` is used, so examples of `x` do not influence each other.
  """
  _, state = model.apply({"params": params}, reference, train=True, mutable=["batch_stats"])
  return model.apply({"params": params, "batch_stats": state["batch_stats"]}, x, train=False)
