"""Target networks whose parameters the zoo holds and the fusion model predicts."""

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

CONV_IMPLS = ("xla", "patches")
POOL_IMPLS = ("reshape", "window")


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


class PatchConv3x3(nn.Module):
  """A 3x3 'SAME' convolution computed as nine shifted slices and one matmul.

  The same parameters (kernel (3, 3, C_in, C_out), bias (C_out,)) and outputs
  as `nn.Conv(features, (3, 3), padding="SAME")`. Under `vmap` over models it
  stays a batched matmul (models in the matmul's batch dimension), where XLA
  turns a vmapped convolution into a grouped convolution: several times faster
  on CPU, and on an H200 about 3x at 32x32 and 1.8x at 84x84 for the whole
  Conv4 step (benchmarks/ensemble_vs_torch.py). TPU is not measured.
  """
  features: int

  @nn.compact
  def __call__(self, x):
    c_in = x.shape[-1]
    kernel = self.param("kernel", nn.initializers.lecun_normal(), (3, 3, c_in, self.features))
    bias = self.param("bias", nn.initializers.zeros_init(), (self.features,))
    h, w = x.shape[-3], x.shape[-2]
    padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    cols = jnp.concatenate(
        [padded[:, i:i + h, j:j + w, :] for i in range(3) for j in range(3)], axis=-1)
    return cols @ kernel.reshape(9 * c_in, self.features) + bias


def max_pool_2x2(x, impl: str = "reshape"):
  """2x2 max-pool, stride 2, 'VALID' (odd trailing rows/columns dropped).

  "reshape": a reshape and a max over the two window axes. Its gradient is an
  elementwise mask that XLA fuses, where "window" (`nn.max_pool`, a
  `reduce_window`) differentiates into a `select_and_scatter`: the whole
  Conv4 step is about 1.5x faster on CPU and 1.2-1.3x on an H200 with
  "reshape" (benchmarks/ensemble_vs_torch.py).
  Same outputs; same gradients except where two window entries tie at the
  maximum (reshape splits the gradient between them, window gives it to one).
  In Conv4 the pool follows a ReLU, so ties are zeros whose ReLU gradient is 0.
  """
  if impl == "window":
    return nn.max_pool(x, (2, 2), strides=(2, 2))
  if impl != "reshape":
    raise ValueError(f"pool impl must be one of {POOL_IMPLS}, got {impl!r}")
  h, w, c = x.shape[-3] // 2, x.shape[-2] // 2, x.shape[-1]
  x = x[..., :2 * h, :2 * w, :]
  return x.reshape(x.shape[:-3] + (h, 2, w, 2, c)).max(axis=(-4, -2))


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

  Implementation choices that leave the parameters and the function unchanged:
  `conv_impl` ("xla": `nn.Conv`; "patches": `PatchConv3x3`) and `pool_impl`
  (see `max_pool_2x2`). `bn=False` drops BatchNorm (then no BatchNorm_i
  parameters): only for like-for-like speed comparisons with BatchNorm-free
  yardsticks (benchmarks/ensemble_vs_torch.py).
  """
  ways: int = 5
  filters: int = 16
  conv_impl: str = "xla"
  pool_impl: str = "reshape"
  bn: bool = True

  @nn.compact
  def __call__(self, x, train: bool = True):
    for i in range(4):
      if self.conv_impl == "patches":
        x = PatchConv3x3(self.filters, name=f"Conv_{i}")(x)
      elif self.conv_impl == "xla":
        x = nn.Conv(self.filters, (3, 3), padding="SAME", name=f"Conv_{i}")(x)
      else:
        raise ValueError(f"conv_impl must be one of {CONV_IMPLS}, got {self.conv_impl!r}")
      if self.bn:
        x = nn.BatchNorm(use_running_average=not train, momentum=0.0, name=f"BatchNorm_{i}")(x)
      x = nn.relu(x)
      x = max_pool_2x2(x, self.pool_impl)
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
