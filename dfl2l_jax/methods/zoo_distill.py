"""zoo_distill: one initialisation that carries the zoo's functions (regression).

The paper's interface (one theta_init, fine-tuned by Algorithm 3) with the zoo's
function-space knowledge. A network of the target architecture is distilled from the
whole zoo at once on pseudo-inputs: its hidden layers are shared, and its output layer
is replaced by one head per zoo model, trained so that head i on the shared features
reproduces zoo model i,

    min_{body, heads}  mean_i mean_x ( head_i(body(x)) - f_i(x) )^2,   x ~ U(input domain),

so the shared features must span every function of the zoo. theta_init is the trained
body with the mean of the heads as its output layer: the zoo's mean function, computed
from features in which each zoo function is one linear head away. No task data: the
targets are the zoo models' outputs at fresh uniform inputs every step.

Start: the body from the zoo's average (VA), head i from model i's own output layer.
Adam (`zoo_distill.lr`) for `zoo_distill.steps` steps of `zoo_distill.batch_size`
inputs shared by all heads, in one compiled `lax.scan` per chunk of
`zoo_distill.chunk_steps` (checkpointed, resumable, like every meta-training loop).
Image benchmarks need model inversion for pseudo-inputs: n/a there, with that reason.
"""

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from dfl2l_jax import loops
from dfl2l_jax.errors import ConfigError, NotApplicable
from dfl2l_jax.methods import base


class DistillState(NamedTuple):
  body: Any            # the shared hidden layers
  heads: Any           # one output layer per zoo model (leading axis: model)
  opt_state: Any       # Adam's state over (body, heads)
  step: jax.Array      # int32 scalar


def output_layer(params):
  """The name of an MLP's output layer (the Dense_i with the largest i)."""
  names = [k for k in params if k.startswith("Dense_")]
  if not names:
    raise NotApplicable("zoo_distill needs an MLP (Dense_i layers)")
  return max(names, key=lambda k: int(k.split("_")[1]))


def split_heads(zoo):
  """(body: the zoo's average without its output layer, heads: each model's output layer)."""
  last = output_layer(zoo)
  body = {k: jax.tree.map(lambda x: x.mean(0), v) for k, v in zoo.items() if k != last}
  return body, zoo[last], last


def distill_loss(apply, last, body, heads, x, targets):
  """Mean over models and inputs of (head_i(body(x)) - f_i(x))^2; targets (N, B, 1)."""
  def one(head, y):
    return jnp.mean(jnp.square(apply({**body, last: head}, x) - y))
  return jnp.mean(jax.vmap(one)(heads, targets))


@functools.lru_cache(maxsize=8)
def make_chunk(apply, last, domain, batch_size, lr):
  optimizer = optax.adam(lr)

  @functools.partial(jax.jit, static_argnames=("length",))
  def chunk(state, zoo, key, *, length):
    def step(st, _):
      k = jax.random.fold_in(key, st.step)
      x = jax.random.uniform(k, (batch_size, 1), minval=domain[0], maxval=domain[1])
      targets = jax.vmap(lambda p: apply(p, x))(zoo)
      loss, grads = jax.value_and_grad(
          lambda bh: distill_loss(apply, last, bh[0], bh[1], x, targets))((st.body, st.heads))
      updates, opt_state = optimizer.update(grads, st.opt_state)
      body, heads = optax.apply_updates((st.body, st.heads), updates)
      return DistillState(body, heads, opt_state, st.step + 1), {"loss": loss}
    return jax.lax.scan(step, state, None, length=length)
  return chunk, optimizer


def zoo_distill(ctx: base.MethodContext):
  if ctx.benchmark.metric != "mse" or "domain" not in ctx.benchmark.spec:
    raise NotApplicable("zoo_distill draws pseudo-inputs from a regression benchmark's input "
                        "domain; for images they need model inversion (not implemented yet)")
  dc = ctx.config.zoo_distill
  body, heads, last = split_heads(ctx.zoo)
  chunk, optimizer = make_chunk(ctx.benchmark.apply, last, tuple(ctx.benchmark.spec["domain"]),
                                int(dc.batch_size), float(dc.lr))
  state = DistillState(body, heads, optimizer.init((body, heads)), jnp.int32(0))
  zoo = jax.device_put(ctx.zoo)
  key = jax.random.fold_in(ctx.key, 1)
  spec = {"method": "zoo_distill", "zoo_distill": dc.to_dict(), "seed": ctx.config.seed,
          "benchmark": ctx.benchmark.spec}
  ckpt = ctx.checkpointer("zoo_distill", spec)
  try:
    state = loops.run_chunked(
        name="zoo_distill", state=state, total_steps=int(dc.steps),
        chunk_steps=int(dc.chunk_steps), checkpointer=ckpt, writer=ctx.writer,
        hooks=ctx.hooks,
        run_chunk=lambda st, start, length: chunk(st, zoo, key, length=length))
  finally:
    if ckpt is not None:
      ckpt.close()
  return {**state.body, last: jax.tree.map(lambda x: x.mean(0), state.heads)}


def validate(config):
  if "zoo_distill" not in config:
    raise ConfigError("config has no zoo_distill section (configs/common.py: zoo_distill())")
  dc = config.zoo_distill
  for field in ("steps", "batch_size", "chunk_steps"):
    v = dc[field]
    if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
      raise ConfigError(f"config.zoo_distill.{field} must be a positive int, got {v!r}")
  if not isinstance(dc.lr, (int, float)) or not dc.lr > 0 or dc.lr != dc.lr:
    raise ConfigError(f"config.zoo_distill.lr must be a positive number, got {dc.lr!r}")


ZOO_DISTILL = base.Method(
    "zoo_distill", (), zoo_distill,
    "one network distilled from the whole zoo on pseudo-inputs (shared body, a head per "
    "model; init = body + mean head; data-free, regression)", validate)
