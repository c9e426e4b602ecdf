"""The fast forms equal the reference forms of Algorithms 1, 2 and 3 (algorithms.py).

The fast forms run here sharded over 4 devices: Algorithms 1 and 2 in three chunks
driven by loops.run_chunked (so also: the result does not depend on where chunks are
cut), Algorithm 3 in batches of tasks padded to the devices. That the unsharded forms
equal the sharded ones is tests/test_sharding.py's.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from dfl2l_jax import adaptation
from dfl2l_jax import algorithms
from dfl2l_jax import bilevel
from dfl2l_jax import fusion
from dfl2l_jax import loops
from dfl2l_jax import sharding
from dfl2l_jax import tasks
from tests import helpers

D, N_S, N_Q = 4, 9, 3  # padded to 12 and 4 rows on 4 devices
HP = bilevel.FusionHParams(sigma=1.0, gamma=5.0, inner_lr=0.05, dro_steps=2, dro_lr=0.01,
                           embed_lr=0.05)
MB = 2  # a step draws some model twice at times: the working set must apply both updates.


def _setup():
  zoo = jax.tree.map(np.asarray, helpers.toy_zoo(N_S + N_Q, key=5, spread=0.5))
  opt = optax.sgd(0.05)
  # Compiled once rather than run op by op: the tests' time is compilation.
  state = jax.jit(lambda key, template: bilevel.init_state(key, template, N_S, N_Q, D, opt,
                                                           w_scale=0.1))(
      jax.random.key(2), helpers.tiny_template())
  return (state, jax.tree.map(lambda x: x[:N_S], zoo), jax.tree.map(lambda x: x[N_S:], zoo),
          opt, sharding.make_mesh(None, sharding.MODELS, 4))


def _run_chunks(run_chunk, state, total_steps, chunk_steps, mesh):
  """loops.run_chunked over the chunks (as methods/dfl2l.py runs them); metrics joined."""
  metrics = []

  def run(st, start, length):
    st, m = run_chunk(fusion.place_state(st, mesh), start, length)
    metrics.append(m)
    return st, m

  state = loops.run_chunked(name="test", state=jax.tree.map(jnp.copy, state),
                            total_steps=total_steps, chunk_steps=chunk_steps, run_chunk=run)
  return state, jax.tree.map(lambda *m: np.concatenate(m), *metrics)


def _assert_close(got, want):
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_offline_chunks_equal_algorithm_1():
  state, zoo_s, zoo_q, opt, mesh = _setup()
  key = jax.random.key(3)
  want, want_m = algorithms.offline_dfl2l(jax.tree.map(jnp.copy, state), zoo_s, zoo_q, key,
                                          epochs=1, hp=HP, optimizer=opt, meta_batch_size=MB)
  chunk = fusion.make_offline_chunk(HP, opt, MB, mesh=mesh)
  got, got_m = _run_chunks(lambda st, start, length: chunk(st, zoo_s, zoo_q, key, length=length),
                           state, N_S + N_Q, (N_S + N_Q) // 3, mesh)
  assert int(want.step) == int(got.step) == N_S + N_Q
  _assert_close(got, want)
  _assert_close(got_m, want_m)


def test_online_chunks_equal_algorithm_2():
  state, zoo_s, zoo_q, opt, mesh = _setup()
  key = jax.random.key(3)
  arrivals = jax.tree.map(lambda x: x[::-1], zoo_s)  # an arrival order
  want, want_m = algorithms.online_dfl2l(jax.tree.map(jnp.copy, state), arrivals, zoo_q, key,
                                         hp=HP, optimizer=opt, meta_batch_size=MB)
  chunk = fusion.make_online_chunk(HP, opt, MB, mesh=mesh)
  # Each chunk receives only the models arriving during it.
  got, got_m = _run_chunks(
      lambda st, start, length: chunk(
          st, jax.tree.map(lambda x: x[start:start + length], arrivals), zoo_q, key),
      state, N_S, N_S // 3, mesh)
  assert int(want.step) == int(got.step) == N_S
  _assert_close(got, want)
  _assert_close(got_m, want_m)


def test_meta_test_equals_algorithm_3_on_every_task():
  bench = tasks.get_benchmark(helpers.smoke_config())
  theta_init = bench.init_params(jax.random.key(1))
  eps = {k: v[:7] for k, v in bench.make_episodes(5).items()}  # 7: not a multiple of 4
  got = adaptation.meta_test(theta_init, eps, loss_fn=bench.loss_fn, metric_fn=bench.metric_fn,
                             steps=3, lr=0.01, batch_size=3,
                             mesh=sharding.make_mesh(None, sharding.TASKS, 4))
  algorithm_3 = jax.jit(functools.partial(
      algorithms.meta_test_task, loss_fn=bench.loss_fn, metric_fn=bench.metric_fn, steps=3,
      lr=0.01))
  want = [algorithm_3(theta_init, {"x": eps["support_x"][m], "y": eps["support_y"][m]},
                      {"x": eps["query_x"][m], "y": eps["query_y"][m]}) for m in range(7)]
  np.testing.assert_allclose(got, want, rtol=1e-4)


# A change to algorithms.py changes every run: the chunks and the meta-test call its
# functions, they do not hold copies. Each test swaps one function for a changed one.


def test_a_changed_step_changes_the_offline_and_online_chunks(monkeypatch):
  state, zoo_s, zoo_q, opt, _ = _setup()
  key = jax.random.key(3)
  original = algorithms.step

  def no_dro_step(st, theta_s, s_rows, theta_q, q_rows, hp, optimizer):
    return original(st, theta_s, s_rows, theta_q, q_rows,
                    dataclasses.replace(hp, use_dro=False), optimizer)

  def offline(hp):
    return fusion.make_offline_chunk(hp, opt, MB)(jax.tree.map(jnp.copy, state), zoo_s, zoo_q,
                                                  key, length=4)[0]

  def online(hp):
    return fusion.make_online_chunk(hp, opt, MB)(jax.tree.map(jnp.copy, state), zoo_s, zoo_q,
                                                 key)[0]

  no_dro = dataclasses.replace(HP, use_dro=False)
  with_dro, without_dro = offline(HP), offline(no_dro)
  online_with_dro, online_without_dro = online(HP), online(no_dro)
  assert not np.allclose(with_dro.emb_q, without_dro.emb_q)
  monkeypatch.setattr(algorithms, "step", no_dro_step)
  _assert_close(offline(HP), without_dro)
  _assert_close(online(HP), online_without_dro)
  assert not np.allclose(online_with_dro.emb_q, online_without_dro.emb_q)


def test_changed_draws_change_the_chunks(monkeypatch):
  state, zoo_s, zoo_q, opt, _ = _setup()
  key = jax.random.key(3)
  run = lambda: fusion.make_offline_chunk(HP, opt, MB)(jax.tree.map(jnp.copy, state), zoo_s,
                                                      zoo_q, key, length=4)[0]
  before = run()
  monkeypatch.setattr(algorithms, "sample_s_and_q",
                      lambda key, t, n_s, n_q, b: (jnp.zeros(b, jnp.int32),
                                                   jnp.zeros(b, jnp.int32)))
  after = run()
  # Only the first model of S and of Q moved.
  np.testing.assert_array_equal(after.emb_s[1:], state.emb_s[1:])
  np.testing.assert_array_equal(after.emb_q[1:], state.emb_q[1:])
  assert not np.allclose(before.emb_s[1:], state.emb_s[1:])


def test_a_changed_adaptation_step_changes_the_meta_test(monkeypatch):
  bench = tasks.get_benchmark(helpers.smoke_config())
  theta_init = bench.init_params(jax.random.key(1))
  eps = {k: v[:3] for k, v in bench.make_episodes(5).items()}
  # A fresh loss function per call: a new compilation, which reads algorithms.py anew.
  run = lambda lr=0.01: adaptation.meta_test(
      theta_init, eps, loss_fn=lambda p, b: bench.loss_fn(p, b), metric_fn=bench.metric_fn,
      steps=3, lr=lr, batch_size=3)
  plain, half = run(), run(lr=0.005)
  assert not np.allclose(plain, half)
  original = algorithms.fixed_rate
  monkeypatch.setattr(algorithms, "fixed_rate", lambda loss, lr: original(loss, lr / 2))
  np.testing.assert_allclose(run(), half, rtol=1e-6)
