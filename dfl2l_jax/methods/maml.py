"""Data-based meta-learning baselines: `maml`, `fomaml` (offline) and `oml` (online).

Unlike DFL2L, these use the zoo tasks' own training data (`benchmark.batch_fn`
on `benchmark.zoo_tasks`), never the zoo's parameters: the paper compares
against them as methods that see data DFL2L does not. See `dfl2l_jax/metalearning.py`
for the algorithms.

- `maml`: MAML (Finn, Abbeel and Levine 2017), second-order meta-gradient.
  Every meta-step draws `maml.meta_batch_size` tasks uniformly from all N zoo
  tasks: S and Q are both meta-training tasks here (MAML has no use for a
  split into meta-training and meta-validation models).
- `fomaml`: the same with the first-order meta-gradient.
- `oml`: follow the meta leader (Finn, Rajeswaran, Kakade and Levine 2019). The
  tasks of S arrive one at a time in the order of `ctx.s_idx` (the order models
  arrive in `dfl2l_online`); after each arrival, `oml.steps_per_arrival`
  meta-steps on tasks drawn uniformly from those arrived so far.

All three start from `benchmark.init_params(ctx.key)`, run through
`loops.run_chunked` with a checkpoint after every chunk (state = params, Adam
state, step), and return the meta-learned parameters as theta_init.

Config: `config.maml` (all three) and `config.oml` (oml only):
  maml.meta_steps       outer steps of maml/fomaml
  maml.meta_batch_size  tasks per outer step
  maml.inner_steps      SGD steps of the inner adaptation (K)
  maml.inner_lr         inner SGD rate (alpha)
  maml.outer_lr         outer Adam rate (beta)
  maml.support_size     examples per support batch (0: a whole `batch_fn` batch,
                        i.e. config.zoo.batch_size)
  maml.query_size       examples per query batch (0: likewise)
  maml.chunk_steps      outer steps per compiled chunk (and checkpoint)
  oml.steps_per_arrival meta-steps after each arrival (total |S| x this)
  oml.first_order       first-order meta-gradient for oml
"""

import functools

import jax
import ml_collections
import numpy as np

from dfl2l_jax import checks
from dfl2l_jax import errors as base_errors
from dfl2l_jax import metalearning as maml_lib
from dfl2l_jax.methods import base
from dfl2l_jax.methods.meta_training import hparams
from dfl2l_jax.methods.meta_training import make_meta_chunk
from dfl2l_jax.methods.meta_training import meta_train
from dfl2l_jax.methods.meta_training import spec_common
from dfl2l_jax.methods.meta_training import validate_maml


def oml_defaults():
  """config.oml (the inner loop, meta-batch and Adam settings are config.maml's)."""
  o = ml_collections.ConfigDict()
  o.steps_per_arrival = 10              # meta-steps on the buffer after each arrival
  o.first_order = False                 # FTML's objective is MAML's; second order is cheap here
  return o


def zoo_maml_defaults():
  """config.zoo_maml (steps, batches and rates are config.maml's)."""
  z = ml_collections.ConfigDict()
  z.start = "va"                        # va: from the zoo's average | random
  z.first_order = False                 # second-order meta-gradient by default
  return z


OML_FIELDS = {"oml.steps_per_arrival": checks.POSITIVE_INT, "oml.first_order": checks.BOOL}
ZOO_MAML_FIELDS = {"zoo_maml.start": checks.one_of(("va", "random")),
                   "zoo_maml.first_order": checks.BOOL}


def validate_oml(config):
  """`oml` uses `config.maml` for everything but its schedule; checks both."""
  validate_maml(config)
  checks.check(config, OML_FIELDS)


def _spec(ctx, name, num_tasks, first_order):
  return dict(spec_common(ctx, name, num_tasks, first_order), benchmark=ctx.benchmark.spec)


def offline_maml(ctx: base.MethodContext, first_order: bool = False, name: str = "maml"):
  """MAML / FO-MAML on all N zoo tasks. Returns the final MamlState."""
  mc = ctx.config.maml
  tasks = ctx.benchmark.zoo_tasks
  n = jax.tree.leaves(tasks)[0].shape[0]
  hp = hparams(mc, first_order, ctx.benchmark.member_loop)
  chunk = make_meta_chunk(ctx.benchmark.batch_fn, ctx.benchmark.loss_fn, float(mc.outer_lr),
                          hp, maml_lib.UniformTasks(n, mc.meta_batch_size))
  device_tasks = jax.device_put(tasks)
  return meta_train(ctx, name, _spec(ctx, name, n, first_order), mc.meta_steps, chunk,
                    lambda start, length: device_tasks)


def buffer_rows(arrivals, start, length, steps_per_arrival):
  """Zoo rows a chunk of OML steps [start, start + length) may see, in arrival order.

  The tasks arrived by the chunk's last step, padded to len(arrivals) with
  repeats of the latest of them (a fixed shape, so one compile): tasks that
  arrive later are not in the chunk's input at all.
  """
  arrivals = np.asarray(arrivals)
  n_end = int(min((start + length - 1) // steps_per_arrival + 1, len(arrivals)))
  pos = np.minimum(np.arange(len(arrivals)), n_end - 1)
  return arrivals[pos]


def online_maml(ctx: base.MethodContext, name: str = "oml"):
  """FTML over the tasks of S arriving in the order of `ctx.s_idx`. Returns the state."""
  mc, oc = ctx.config.maml, ctx.config.oml
  arrivals = np.asarray(ctx.s_idx)
  n, spa = len(arrivals), oc.steps_per_arrival
  hp = hparams(mc, oc.first_order, ctx.benchmark.member_loop)
  chunk = make_meta_chunk(ctx.benchmark.batch_fn, ctx.benchmark.loss_fn, float(mc.outer_lr),
                          hp, maml_lib.BufferTasks(n, mc.meta_batch_size, spa))
  tasks = ctx.benchmark.zoo_tasks

  def chunk_tasks(start, length):
    rows = buffer_rows(arrivals, start, length, spa)
    return jax.tree.map(lambda x: x[rows], tasks)

  spec = dict(_spec(ctx, name, n, oc.first_order), oml=oc.to_dict(),
              arrivals=arrivals.tolist())
  return meta_train(ctx, name, spec, n * spa, chunk, chunk_tasks)


@functools.lru_cache(maxsize=8)
def pseudo_batch_fn(apply, domain, batch_size):
  """A `batch_fn` over zoo models: `batch_size` inputs drawn uniformly from the input
  domain, labelled by the model (`task` is one zoo model's parameters)."""
  lo, hi = domain

  def batch_fn(task, key, data):
    del data
    x = jax.random.uniform(key, (batch_size, 1), minval=lo, maxval=hi)
    return {"x": x, "y": apply(task, x)}
  return batch_fn


def zoo_maml(ctx: base.MethodContext, name="zoo_maml"):
  """MAML on pseudo tasks: each zoo model labels inputs drawn from the input domain.

  Data-free: reads the zoo's parameters and the benchmark's input domain, never the zoo
  tasks' data. The settings of `config.maml` (steps, batches, rates), and of
  `config.zoo_maml`: `start` ("va": the zoo's average, "random": the benchmark's init)
  and `first_order`. Every zoo model (S and Q) is a meta-training task, as in `maml`.
  """
  if ctx.benchmark.metric != "mse" or "domain" not in ctx.benchmark.spec:
    raise base_errors.NotApplicable(
        "zoo_maml labels pseudo-inputs from a regression benchmark's input domain; for "
        "images pseudo-inputs need model inversion (not implemented yet)")
  mc, zc = ctx.config.maml, ctx.config.zoo_maml
  n = jax.tree.leaves(ctx.zoo)[0].shape[0]
  batch_fn = pseudo_batch_fn(ctx.benchmark.apply, tuple(ctx.benchmark.spec["domain"]),
                             int(ctx.config.zoo.batch_size))
  hp = hparams(mc, bool(zc.first_order), "vmap")
  chunk = make_meta_chunk(batch_fn, ctx.benchmark.loss_fn, float(mc.outer_lr), hp,
                          maml_lib.UniformTasks(n, mc.meta_batch_size))
  start = (jax.tree.map(lambda x: x.mean(0), ctx.zoo) if zc.start == "va" else None)
  zoo = jax.device_put(ctx.zoo)
  spec = dict(spec_common(ctx, name, n, bool(zc.first_order)), zoo_maml=zc.to_dict(),
              benchmark=ctx.benchmark.spec)
  return meta_train(ctx, name, spec, mc.meta_steps, chunk, lambda start_, length: zoo,
                    start=start, data=None).params


def validate_zoo_maml(config):
  validate_maml(config)
  checks.check(config, ZOO_MAML_FIELDS)


MAML = base.Method(
    "maml", ("baseline",), lambda ctx: offline_maml(ctx, False, "maml").params,
    "MAML (Finn et al. 2017), meta-trained on the zoo tasks' own data", validate_maml,
    uses_task_data=True, reads=("maml",))
FOMAML = base.Method(
    "fomaml", ("baseline",), lambda ctx: offline_maml(ctx, True, "fomaml").params,
    "first-order MAML, meta-trained on the zoo tasks' own data", validate_maml,
    uses_task_data=True, reads=("maml",))
OML = base.Method(
    "oml", ("baseline",), lambda ctx: online_maml(ctx).params,
    "online meta-learning, FTML (Finn et al. 2019), on the zoo tasks' data as they "
    "arrive", validate_oml, uses_task_data=True, sections={"oml": oml_defaults},
    reads=("maml",))
ZOO_MAML = base.Method(
    "zoo_maml", ("function_space",), zoo_maml,
    "MAML on pseudo tasks: zoo models label inputs drawn from the input domain (data-free; "
    "regression)", validate_zoo_maml, sections={"zoo_maml": zoo_maml_defaults},
    reads=("maml",))
