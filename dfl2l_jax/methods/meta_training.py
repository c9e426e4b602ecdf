"""MAML meta-training shared by the methods that meta-learn with MAML: `maml`, `fomaml`,
`oml`, `zoo_maml` (methods/maml.py) and `inversion_maml` (methods/inversion_maml.py).

Not a method: the config.maml validation, the compiled chunk and the checkpointed loop
they all run, so that no method module imports another. The algorithms themselves are in
dfl2l_jax/metalearning.py.
"""

import functools

import jax
import optax

from dfl2l_jax import checks
from dfl2l_jax import metalearning as maml_lib
from dfl2l_jax.errors import ConfigError

MAML_FIELDS = {
    "maml.meta_steps": checks.POSITIVE_INT, "maml.meta_batch_size": checks.POSITIVE_INT,
    "maml.inner_steps": checks.POSITIVE_INT, "maml.chunk_steps": checks.POSITIVE_INT,
    "maml.inner_lr": checks.POSITIVE_REAL, "maml.outer_lr": checks.POSITIVE_REAL,
    # 0: the whole zoo batch
    "maml.support_size": checks.NON_NEGATIVE_INT, "maml.query_size": checks.NON_NEGATIVE_INT,
}


def validate_maml(config):
  """Raises ConfigError naming the first bad value of `config.maml`."""
  checks.check(config, MAML_FIELDS)
  batch = config.zoo.batch_size
  for name in ("support_size", "query_size"):
    v = config.maml[name]
    if checks.is_int(batch) and v > batch:
      raise ConfigError(f"config.maml.{name}={v} exceeds config.zoo.batch_size={batch}, "
                        "the size of the batches it is cut from")


def hparams(mc, first_order, member_loop) -> maml_lib.MamlHParams:
  return maml_lib.MamlHParams(
      inner_steps=mc.inner_steps, inner_lr=mc.inner_lr, first_order=first_order,
      meta_batch_size=mc.meta_batch_size, support_size=mc.support_size,
      query_size=mc.query_size, member_loop=member_loop)


_READ = object()  # meta_train's default: read the benchmark's data


@functools.lru_cache(maxsize=16)
def make_meta_chunk(batch_fn, loss_fn, outer_lr, hp, index_fn):
  """The compiled chunk, shared by runs with the same benchmark and settings."""
  return maml_lib.make_chunk(index_fn=index_fn, batch_fn=batch_fn, loss_fn=loss_fn,
                             optimizer=optax.adam(outer_lr), hp=hp)


def meta_train(ctx, name, spec, total_steps, chunk, run_chunk_tasks, start=None, data=_READ):
  """Runs the meta-training loop, checkpointed under workdir/fusion/<name>.

  `start`: the initial parameters (default: the benchmark's random init from ctx.key);
  `data`: what batch_fn reads (default: the benchmark's data).
  """
  mc = ctx.config.maml
  optimizer = optax.adam(mc.outer_lr)
  start = ctx.benchmark.init_params(ctx.key) if start is None else start
  state = maml_lib.init_state(start, optimizer)
  key = jax.random.fold_in(ctx.key, 1)
  data = ctx.benchmark.data if data is _READ else data

  def run_chunk(st, start, length):
    return chunk(st, run_chunk_tasks(start, length), data, key, length=length)

  return ctx.run_loop(name, spec, state, total_steps=total_steps,
                      chunk_steps=mc.chunk_steps, run_chunk=run_chunk)


def spec_common(ctx, name, num_tasks, first_order):
  return {"method": name, "maml": ctx.config.maml.to_dict(), "seed": ctx.config.seed,
          "num_tasks": int(num_tasks), "first_order": first_order,
          "zoo_batch_size": ctx.config.zoo.batch_size}
