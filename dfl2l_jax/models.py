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
