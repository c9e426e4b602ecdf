import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax

from dfl2l_jax import ensemble
from dfl2l_jax import tasks
from dfl2l_jax import zoo as zoo_lib
from tests import helpers


def _parts(n=4):
  config = helpers.smoke_config(zoo__num_models=n)
  bench = tasks.get_benchmark(config)
  opt = optax.adam(1e-2)
  step = ensemble.make_member_step(bench.loss_fn, opt)
  return config, bench, opt, step


def test_vmapped_ensemble_equals_training_members_one_by_one():
  config, bench, opt, step = _parts()
  params = zoo_lib.initial_params(config, bench)
  keys = zoo_lib.member_keys(config)
  task_arrays = jax.tree.map(jnp.asarray, bench.zoo_tasks)
  chunk = ensemble.make_ensemble_chunk(step, bench.batch_fn)
  state, losses = chunk(ensemble.init_ensemble(jax.tree.map(jnp.copy, params), opt), task_arrays, keys, None, length=15)
  train = ensemble.make_member_trainer(step, bench.batch_fn)
  for m in range(4):
    p = jax.tree.map(lambda x: x[m], params)
    p, _, l = train(p, opt.init(p), jax.tree.map(lambda x: x[m], task_arrays), keys[m],
                    None, 0, length=15)
    np.testing.assert_allclose(l, losses[:, m], rtol=1e-5, atol=1e-6)
    for a, b in zip(jax.tree.leaves(p), jax.tree.leaves(state.params)):
      np.testing.assert_allclose(a, b[m], rtol=1e-5, atol=1e-6)


def test_training_reduces_each_members_loss():
  config, bench, opt, step = _parts()
  chunk = ensemble.make_ensemble_chunk(step, bench.batch_fn)
  state = ensemble.init_ensemble(zoo_lib.initial_params(config, bench), opt)
  tasks_ = jax.tree.map(jnp.asarray, bench.zoo_tasks)
  before = jax.vmap(bench.zoo_eval_fn, in_axes=(0, 0, None))(state.params, tasks_, None)
  state, _ = chunk(state, tasks_, zoo_lib.member_keys(config), None, length=300)
  after = jax.vmap(bench.zoo_eval_fn, in_axes=(0, 0, None))(state.params, tasks_, None)
  assert np.all(np.asarray(after) < np.asarray(before)), (before, after)
  assert int(state.step) == 300


def test_shared_and_independent_initialisation():
  config, bench, _, _ = _parts()
  shared = zoo_lib.initial_params(config, bench)
  for leaf in jax.tree.leaves(shared):
    np.testing.assert_array_equal(leaf[0], leaf[-1])
  with config.unlocked():
    config.zoo.shared_init = False
  indep = zoo_lib.initial_params(config, bench)
  kernels = [x for x in jax.tree.leaves(indep) if x.ndim == 3]
  assert not np.allclose(kernels[0][0], kernels[0][1])


def test_ensemble_chunk_compiles_once():
  config, bench, opt, step = _parts()
  traced = chex.assert_max_traces(bench.batch_fn, n=1)
  chunk = ensemble.make_ensemble_chunk(step, traced)
  state = ensemble.init_ensemble(zoo_lib.initial_params(config, bench), opt)
  tasks_ = jax.tree.map(jnp.asarray, bench.zoo_tasks)
  for _ in range(3):
    state, _ = chunk(state, tasks_, zoo_lib.member_keys(config), None, length=2)


def test_split_sizes_follow_val_fraction_and_are_disjoint():
  config = helpers.smoke_config(zoo__num_models=10, zoo__val_fraction=0.2)
  s_idx, q_idx = zoo_lib.split(config)
  assert len(s_idx) == 8 and len(q_idx) == 2
  assert sorted(np.concatenate([s_idx, q_idx]).tolist()) == list(range(10))
