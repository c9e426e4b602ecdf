"""Target networks whose parameters the zoo holds and the fusion model predicts."""

import functools
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

CONV_IMPLS = ("xla", "patches")
POOL_IMPLS = ("reshape", "window")
BN_IMPLS = ("flax", "fused")


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
  as `nn.Conv(features, (3, 3), padding="SAME")`.
  Why: docs/implementation.md, "PatchConv3x3".
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

  "reshape": a reshape and a max over the two window axes; "window":
  `nn.max_pool` (a `reduce_window`). Same outputs; same gradients except where
  two window entries tie at the maximum (reshape splits the gradient between
  them, window gives it to one). In Conv4 the pool follows a ReLU, so ties are
  zeros whose ReLU gradient is 0. Why "reshape": docs/implementation.md,
  "max_pool_2x2".
  """
  if impl == "window":
    return nn.max_pool(x, (2, 2), strides=(2, 2))
  if impl != "reshape":
    raise ValueError(f"pool impl must be one of {POOL_IMPLS}, got {impl!r}")
  h, w, c = x.shape[-3] // 2, x.shape[-2] // 2, x.shape[-1]
  x = x[..., :2 * h, :2 * w, :]
  return x.reshape(x.shape[:-3] + (h, 2, w, 2, c)).max(axis=(-4, -2))


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def batch_norm_train(x, scale, bias, epsilon):
  """BatchNorm with the batch's own statistics; returns (y, mean, var).

  Reduces over every axis but the last (features). The same function as flax's
  `nn.BatchNorm` in train mode with its defaults (fast variance
  E[x^2] - E[x]^2 clipped at 0, float32 statistics), written with a
  hand-derived backward pass: for x_hat = (x - mean) * r, r = (var + eps)^-1/2,
  g = dy * scale,

    dx = r * (g - mean(g) - x_hat * mean(g * x_hat)),
    dscale = sum(dy * x_hat),   dbias = sum(dy).

  Cotangents arriving at the returned mean and var (the batch statistics) are
  propagated too, so the function is exactly differentiable whatever uses its
  outputs. Where the clipped variance is 0 the variance path has gradient 0, as
  in flax. Why: docs/implementation.md, "batch_norm_train".
  """
  return _bn_forward(x, scale, bias, epsilon)[0]


def _bn_forward(x, scale, bias, epsilon):
  axes = tuple(range(x.ndim - 1))
  mean = x.mean(axes)
  raw_var = (x * x).mean(axes) - mean * mean
  var = jnp.maximum(0.0, raw_var)
  r = jax.lax.rsqrt(var + epsilon)
  y = (x - mean) * (r * scale) + bias
  return (y, mean, var), (x, mean, r, scale, raw_var > 0)


def _bn_bwd(epsilon, res, cotangents):
  del epsilon
  x, mean, r, scale, var_positive = res
  dy, dmean, dvar = cotangents
  axes = tuple(range(x.ndim - 1))
  n = x.size // x.shape[-1]
  x_hat = (x - mean) * r
  dbias = dy.sum(axes)
  dscale = (dy * x_hat).sum(axes)
  # Mean over the batch of g and of g * x_hat, with g = dy * scale.
  g_mean = dbias * scale / n
  gx_mean = dscale * scale / n
  # The variance path (through r, and the returned var) vanishes where var was clipped.
  var_term = jnp.where(var_positive, gx_mean * r - 2.0 * dvar / (n * r), 0.0)
  dx = (dy * scale - g_mean) * r - x_hat * var_term + dmean / n
  return dx, dscale, dbias


batch_norm_train.defvjp(_bn_forward, _bn_bwd)


class FusedBatchNorm(nn.Module):
  """`nn.BatchNorm(momentum=0.0)` over the last axis with `batch_norm_train`'s backward.

  The same parameters (scale, bias) and "batch_stats" (mean, var) as flax's
  module, so checkpoints and `apply_with_reference` work with either. Momentum
  is 0 (the stored statistics are the last batch's), as everywhere in this
  project.
  """
  use_running_average: bool = False
  epsilon: float = 1e-5

  @nn.compact
  def __call__(self, x):
    features = (x.shape[-1],)
    scale = self.param("scale", nn.initializers.ones_init(), features)
    bias = self.param("bias", nn.initializers.zeros_init(), features)
    ra_mean = self.variable("batch_stats", "mean", jnp.zeros, features)
    ra_var = self.variable("batch_stats", "var", jnp.ones, features)
    if self.use_running_average:
      return (x - ra_mean.value) * (jax.lax.rsqrt(ra_var.value + self.epsilon) * scale) + bias
    y, mean, var = batch_norm_train(x, scale, bias, self.epsilon)
    if not self.is_initializing():
      ra_mean.value, ra_var.value = mean, var
    return y


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
  `conv_impl` ("xla": `nn.Conv`; "patches": `PatchConv3x3`), `pool_impl`
  (see `max_pool_2x2`) and `bn_impl` ("flax": `nn.BatchNorm`; "fused":
  `FusedBatchNorm`, the same function and variables with a hand-written
  backward pass; equal up to float rounding). `bn=False` drops BatchNorm (then
  no BatchNorm_i parameters): only for like-for-like speed comparisons with
  BatchNorm-free yardsticks (benchmarks/ensemble_vs_torch.py). `head=False`
  returns the flattened features of the last block instead of the logits (the
  same parameters, the head's unused): a network as a feature extractor.
  """
  ways: int = 5
  filters: int = 16
  conv_impl: str = "xla"
  pool_impl: str = "reshape"
  bn_impl: str = "flax"
  bn: bool = True
  head: bool = True

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
        if self.bn_impl == "flax":
          x = nn.BatchNorm(use_running_average=not train, momentum=0.0, name=f"BatchNorm_{i}")(x)
        elif self.bn_impl == "fused":
          x = FusedBatchNorm(use_running_average=not train, name=f"BatchNorm_{i}")(x)
        else:
          raise ValueError(f"bn_impl must be one of {BN_IMPLS}, got {self.bn_impl!r}")
      x = nn.relu(x)
      x = max_pool_2x2(x, self.pool_impl)
    if not self.head:
      return x.reshape(x.shape[0], -1)
    return nn.Dense(self.ways)(x.reshape(x.shape[0], -1))


# PyTorch's 3x3 convolution with padding 1, whatever the stride. Flax's "SAME" pads a
# stride-2 convolution of an even input by (0, 1), PyTorch by (1, 1): another function.
_PAD1 = ((1, 1), (1, 1))


def _batch_norm(train, name):
  """BatchNorm as everywhere in this project (momentum 0, PyTorch's epsilon)."""
  return nn.BatchNorm(use_running_average=not train, momentum=0.0, epsilon=1e-5, name=name)


class SimpleBlock(nn.Module):
  """The residual block of the CloserLook ResNet-10/18 (its `SimpleBlock`).

  C1 (3x3, stride `stride`, padding 1, no bias) -> BN1 -> ReLU -> C2 (3x3, padding 1,
  no bias) -> BN2, plus the shortcut, then ReLU. The shortcut is the identity where the
  width is unchanged, otherwise `shortcut` (1x1, stride `stride`, no bias) ->
  `BNshortcut`. The submodules carry the field's names (layouts.py).
  """
  features: int
  stride: int = 1

  @nn.compact
  def __call__(self, x, train: bool = True):
    y = nn.Conv(self.features, (3, 3), strides=self.stride, padding=_PAD1, use_bias=False,
                name="C1")(x)
    y = nn.relu(_batch_norm(train, "BN1")(y))
    y = nn.Conv(self.features, (3, 3), padding=_PAD1, use_bias=False, name="C2")(y)
    y = _batch_norm(train, "BN2")(y)
    if x.shape[-1] != self.features:
      x = nn.Conv(self.features, (1, 1), strides=self.stride, padding="VALID",
                  use_bias=False, name="shortcut")(x)
      x = _batch_norm(train, "BNshortcut")(x)
    elif self.stride != 1:
      raise ValueError(f"a SimpleBlock of stride {self.stride} needs a width change "
                       f"(the identity shortcut keeps the resolution); got {self.features} "
                       "channels in and out")
    return nn.relu(y + x)


RESNET_BLOCKS = {10: (1, 1, 1, 1), 18: (2, 2, 2, 2)}


class ResNet(nn.Module):
  """The CloserLook ResNet-10 / ResNet-18 of the field's teachers (FREE `network.py`).

  A stem (3x3 conv of `widths[0]` channels, stride 1, no bias, then BatchNorm; no ReLU
  and no pooling after it, as in FREE), then `RESNET_BLOCKS[depth]` `SimpleBlock`s per
  stage of `widths` channels, the first block of stages 2-4 at stride 2; global average
  pooling and a linear head with `ways` outputs. The field's stem has 64 channels and its
  widths are (64, 128, 256, 512); ours ties the stem to `widths[0]`, so other widths are
  the same network made narrower. The widths of consecutive stages must differ (the
  field's block has no strided identity shortcut).

  Parameters: `Conv_0`, `BatchNorm_0` (the stem), `Block_{j}/{C1,BN1,C2,BN2}` and where
  the width changes `Block_{j}/{shortcut,BNshortcut}` (blocks numbered 0.. over all
  stages), `Dense_0` (the head). BatchNorm as in `Conv4` (train mode: the batch's
  statistics; eval mode: `batch_stats`, which an imported teacher carries). `head=False`
  returns the pooled features (batch, widths[-1]).
  """
  ways: int = 5
  widths: Sequence[int] = (64, 128, 256, 512)
  depth: int = 10
  head: bool = True

  @nn.compact
  def __call__(self, x, train: bool = True):
    if self.depth not in RESNET_BLOCKS or len(self.widths) != 4:
      raise ValueError(f"ResNet: depth must be one of {sorted(RESNET_BLOCKS)} and widths 4 "
                       f"numbers, got {self.depth} and {tuple(self.widths)}")
    x = nn.Conv(self.widths[0], (3, 3), padding=_PAD1, use_bias=False, name="Conv_0")(x)
    x = _batch_norm(train, "BatchNorm_0")(x)
    j = 0
    for stage, (blocks, width) in enumerate(zip(RESNET_BLOCKS[self.depth], self.widths)):
      for b in range(blocks):
        stride = 2 if stage >= 1 and b == 0 else 1
        x = SimpleBlock(width, stride, name=f"Block_{j}")(x, train)
        j += 1
    x = x.mean(axis=(-3, -2))
    if not self.head:
      return x
    return nn.Dense(self.ways, name="Dense_0")(x)


class ResNet12Block(nn.Module):
  """A block of the few-shot ResNet-12 (learn2learn's `BasicBlock`, from MetaOptNet).

  conv1 -> bn1 -> LeakyReLU(0.1) -> conv2 -> bn2 -> LeakyReLU -> conv3 -> bn3 (3x3,
  padding 1, no bias), plus the shortcut `downsample_conv` (1x1, no bias) ->
  `downsample_bn`; LeakyReLU, then a 2x2 max-pool (odd trailing rows dropped).
  """
  features: int

  @nn.compact
  def __call__(self, x, train: bool = True):
    act = lambda v: nn.leaky_relu(v, 0.1)
    conv = lambda name: nn.Conv(self.features, (3, 3), padding=_PAD1, use_bias=False,
                                name=name)
    y = act(_batch_norm(train, "bn1")(conv("conv1")(x)))
    y = act(_batch_norm(train, "bn2")(conv("conv2")(y)))
    y = _batch_norm(train, "bn3")(conv("conv3")(y))
    r = nn.Conv(self.features, (1, 1), padding="VALID", use_bias=False,
                name="downsample_conv")(x)
    r = _batch_norm(train, "downsample_bn")(r)
    return max_pool_2x2(act(y + r))


class ResNet12(nn.Module):
  """The few-shot ResNet-12 (Mishra et al. 2018; Lee et al. 2019's MetaOptNet code, as
  learn2learn's `ResNet12`): four `ResNet12Block`s of `widths` channels, global average
  pooling, a linear head with `ways` outputs.

  Widths (64, 160, 320, 640) (learn2learn's default, `wider=True`) or (64, 128, 256, 512)
  (`wider=False`, TADAM's). Parameters: `Block_{i}/{conv,bn}{1,2,3}`,
  `Block_{i}/downsample_{conv,bn}`, `Dense_0`. No DropBlock: it is the identity in eval
  mode, and this project does not train these networks. `head=False` returns the pooled
  features (batch, widths[-1]).
  """
  ways: int = 5
  widths: Sequence[int] = (64, 160, 320, 640)
  head: bool = True

  @nn.compact
  def __call__(self, x, train: bool = True):
    if len(self.widths) != 4:
      raise ValueError(f"ResNet12: widths must be 4 numbers, got {tuple(self.widths)}")
    for i, width in enumerate(self.widths):
      x = ResNet12Block(width, name=f"Block_{i}")(x, train)
    x = x.mean(axis=(-3, -2))
    if not self.head:
      return x
    return nn.Dense(self.ways, name="Dense_0")(x)


# The field's widths of each named ResNet.
RESNETS = {"resnet10": (64, 128, 256, 512), "resnet18": (64, 128, 256, 512),
           "resnet12": (64, 160, 320, 640)}


def resnet(name, ways, widths=None, head=True):
  """The ResNet called `name` (a key of RESNETS), of `widths` (default: the field's)."""
  if name not in RESNETS:
    raise ValueError(f"unknown ResNet {name!r}; known: {', '.join(RESNETS)}")
  widths = tuple(RESNETS[name] if widths is None else widths)
  if name == "resnet12":
    return ResNet12(ways=ways, widths=widths, head=head)
  return ResNet(ways=ways, widths=widths, depth=int(name[len("resnet"):]), head=head)


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
