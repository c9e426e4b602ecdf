"""DFL2L itself: offline (Algorithm 1) and online (Algorithm 2) DRO fusion.

Both fit the fusion model with `fusion.py`'s loops, checkpointing every chunk
under workdir/fusion/<method>, and return Eq. (10)'s theta_init =
f_phi(mean embedding).

Rates and divergence. Eq. (2)'s gradients scale with the zoo's parameter spread
||theta - f_phi(e)||^2 / sigma^2, and f_phi(e) = W e + b is bilinear in (W, e), so
plain gradient steps are stable only while the rates times |e|^2 and times
lambda_max(W^T W) stay below a constant. The paper's rates (0.03) are far inside
that on zoos fine-tuned from one initialisation; on zoos whose members start from
their own initialisations (the field's protocol: a mean squared distance of about
270 between members) the embeddings of Q grow until the steps leave the stable
range and the likelihoods become non-finite (results/data_free.md). When a loop
diverges, the fusion restarts from step 0 with all four rates (inner, outer, DRO,
embedding) halved, at most `fusion.rate_halvings` times (loops.with_rate_halving,
a policy any method's training may use): each attempt has its own checkpoint folder
(fusion/<method>, then fusion/<method>_rates_x0.5, ...), a diverged one keeps a
`diverged.json` so that a resumed run skips it, and the scale used is recorded with
the method's rows (`notes.rate_scale`). The rule looks at nothing but the training
loss being finite: no validation or test task.
"""

import os

import jax
import ml_collections
import numpy as np

from dfl2l_jax import bilevel
from dfl2l_jax import fusion
from dfl2l_jax import loops
from dfl2l_jax import optimizers
from dfl2l_jax import sharding
from dfl2l_jax import zoo as zoo_lib
from dfl2l_jax.methods import base


def hparams(fc) -> bilevel.FusionHParams:
  """FusionHParams from `config.fusion`."""
  return bilevel.FusionHParams(
      sigma=fc.sigma, gamma=fc.gamma, inner_steps=fc.inner_steps, inner_lr=fc.inner_lr,
      dro_steps=fc.dro_steps, dro_lr=fc.dro_lr, embed_lr=fc.embed_lr, use_dro=fc.use_dro,
      keep_inner_update=fc.keep_inner_update,
      learn_val_embeddings=fc.learn_val_embeddings)


def _initial_state(ctx, fc, optimizer):
  return bilevel.init_state(
      jax.random.fold_in(ctx.key, 0), ctx.template, len(ctx.s_idx), len(ctx.q_idx),
      fc.embed_dim, optimizer, w_scale=fc.w_scale,
      embed_init_std=fc.embed_init_std if fc.embed_init_std > 0 else None)


# The four rates a divergence halves, and the field that bounds how often.
RATES = ("inner_lr", "outer_lr", "dro_lr", "embed_lr")
_NOT_IN_SPEC = ("rate_halvings",)  # how divergence is handled does not change a state


def _spec(ctx, fc, setting):
  fields = {k: v for k, v in fc.to_dict().items() if k not in _NOT_IN_SPEC}
  return {"setting": setting, "fusion": fields, "seed": ctx.config.seed,
          "n_s": len(ctx.s_idx), "n_q": len(ctx.q_idx)}


def scaled_rates(fc, scale):
  """A copy of the fusion section with the four RATES multiplied by `scale`."""
  if scale == 1:
    return fc
  fc = fc.copy_and_resolve_references()
  with fc.unlocked():
    for k in RATES:
      fc[k] = fc[k] * scale
  return fc


def _run(ctx, fc, name, setting, build):
  """Runs a fusion loop from a random state, checkpointed under workdir/fusion/<name>,
  restarted with the rates halved when it diverges (module docstring).

  `build(fc) -> (optimizer, total_steps, run_chunk)` makes the loop for one
  attempt's rates. Every chunk receives its state placed as chunks return it
  (fusion.place_state; a restored checkpoint too), so the chunk compiles once.
  """
  mesh = ctx.mesh

  def attempt(scale, attempt_name):
    fck = scaled_rates(fc, scale)
    optimizer, total_steps, run_chunk = build(fck)
    return ctx.run_loop(
        attempt_name, _spec(ctx, fck, setting), _initial_state(ctx, fck, optimizer),
        total_steps=total_steps, chunk_steps=fc.chunk_steps,
        run_chunk=lambda st, start, length: run_chunk(fusion.place_state(st, mesh), start,
                                                      length))

  state, scale = loops.with_rate_halving(
      attempt, name=name, halvings=fc.get("rate_halvings", 0),
      spec_of=lambda scale: _spec(ctx, scaled_rates(fc, scale), setting),
      folder_of=None if ctx.workdir is None else (
          lambda attempt_name: os.path.join(ctx.workdir, "fusion", attempt_name)),
      halvings_from="config.fusion.rate_halvings")
  if scale != 1:
    ctx.notes["rate_scale"] = scale
  return state


def _whole_zoo_fusion(ctx, fc, name, setting, make_chunk):
  """A loop of `fc.epochs` x N steps drawing from the whole zoo (offline and MLE)."""
  zoo_s, zoo_q = ctx.zoo_s, ctx.zoo_q
  key = jax.random.fold_in(ctx.key, 1)
  mesh = ctx.mesh

  def build(fck):
    optimizer = optimizers.make(fck.optimizer, fck.outer_lr)
    chunk = make_chunk(hparams(fck), optimizer, fck.meta_batch_size, mesh=mesh)
    return (optimizer, fck.epochs * (len(ctx.s_idx) + len(ctx.q_idx)),
            lambda st, start, length: chunk(st, zoo_s, zoo_q, key, length=length))

  return _run(ctx, fc, name, setting, build)


def offline_fusion(ctx: base.MethodContext, fc: ml_collections.ConfigDict = None,
                   name: str = "dfl2l"):
  """Algorithm 1: E_N epochs of N steps. Returns the final FusionState."""
  return _whole_zoo_fusion(ctx, fc or ctx.config.fusion, name, "offline",
                           fusion.make_offline_chunk)


def online_fusion(ctx: base.MethodContext, fc: ml_collections.ConfigDict = None,
                  name: str = "dfl2l_online"):
  """Algorithm 2: one pass over S in arrival order (`ctx.s_idx`).

  `ctx.zoo` is an in-memory pytree (leading model axis) or a zoo on disk (any
  object whose `[idx]` returns those models' pytree, e.g. benchmarks/zoo_store.py). Only Q and the models arriving during the current chunk are
  materialised, so a stored zoo is streamed: memory does not grow with |S|.
  """
  fc = fc or ctx.config.fusion
  mesh = ctx.mesh
  zoo_q = sharding.put_replicated(zoo_lib.take(ctx.zoo, np.asarray(ctx.q_idx)), mesh)
  key = jax.random.fold_in(ctx.key, 1)
  arrivals = np.asarray(ctx.s_idx)

  def build(fck):
    optimizer = optimizers.make(fck.optimizer, fck.outer_lr)
    chunk = fusion.make_online_chunk(hparams(fck), optimizer, fck.meta_batch_size, mesh=mesh)

    def run_chunk(st, start, length):
      # Only the models arriving in [start, start + length) enter the compiled chunk.
      arriving = zoo_lib.take(ctx.zoo, arrivals[start:start + length])
      return chunk(st, arriving, zoo_q, key)

    return optimizer, len(arrivals), run_chunk

  return _run(ctx, fc, name, "online", build)


def mle_fusion(ctx: base.MethodContext, fc: ml_collections.ConfigDict = None,
               name: str = "dfl2l_mle"):
  """Eq. (1) alone: the likelihood fit of all N models, no bi-level, no DRO."""
  return _whole_zoo_fusion(ctx, fc or ctx.config.fusion, name, "mle", fusion.make_mle_chunk)


def _no_dro(ctx):
  fc = ctx.config.fusion.copy_and_resolve_references()
  with fc.unlocked():
    fc.use_dro = False
  return bilevel.meta_init(offline_fusion(ctx, fc, name="dfl2l_no_dro"))


DFL2L_NO_DRO = base.Method(
    "dfl2l_no_dro", ("ablation",), _no_dro,
    "ablation: the bi-level objective of Eq. 3 without the DRO step", reads=("fusion",))
DFL2L_MLE = base.Method(
    "dfl2l_mle", ("ablation",), lambda ctx: bilevel.meta_init(mle_fusion(ctx)),
    "ablation: the plain likelihood fit of Eq. 1 (no bi-level, no DRO)", reads=("fusion",))
DFL2L = base.Method(
    "dfl2l", ("offline",), lambda ctx: bilevel.meta_init(offline_fusion(ctx)),
    "DFL2L offline: bi-level DRO fusion, Algorithm 1", reads=("fusion",))
DFL2L_ONLINE = base.Method(
    "dfl2l_online", ("online",), lambda ctx: bilevel.meta_init(online_fusion(ctx)),
    "DFL2L online: one pass over arriving models, Algorithm 2", reads=("fusion",))
