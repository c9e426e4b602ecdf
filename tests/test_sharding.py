"""Sharding over the 4 fake CPU devices of conftest.py: same numbers as one device,
arrays really split across devices, padding never leaks, bad mesh configs rejected."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from dfl2l_jax import adaptation
from dfl2l_jax import bilevel
from dfl2l_jax import config_lib
from dfl2l_jax import ensemble
from dfl2l_jax import fusion
from dfl2l_jax import optimizers
from dfl2l_jax import sharding
from dfl2l_jax import tasks
from dfl2l_jax import zoo as zoo_lib
from dfl2l_jax.errors import ConfigError
from tests import helpers

D = 4


def _close(a, b, rtol=1e-5, atol=1e-6):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


def test_four_devices_are_available():
  assert jax.device_count() == D
  mesh = sharding.make_mesh()
  assert mesh.axis_names == ("models",) and mesh.devices.size == D


def test_pad_rows_repeats_real_rows_and_unpad_cuts_them_off():
  x = np.arange(6 * 2).reshape(6, 2)
  padded = sharding.pad_rows(x, sharding.padded_size(6, D))
  assert padded.shape == (8, 2)
  np.testing.assert_array_equal(padded[6:], x[:2])
  np.testing.assert_array_equal(sharding.unpad_rows(padded, 6), x)
  np.testing.assert_array_equal(sharding.row_mask(6, 8), [1] * 6 + [0] * 2)
  with pytest.raises(ValueError, match="not a multiple"):
    sharding.put_sharded(x, sharding.make_mesh())


def test_ensemble_chunk_sharded_equals_one_device_and_is_laid_out_across_devices():
  config = helpers.smoke_config(zoo__num_models=8)
  bench = tasks.get_benchmark(config)
  opt = optax.adam(1e-2)
  step = ensemble.make_member_step(bench.loss_fn, opt)
  params = zoo_lib.initial_params(config, bench)
  keys = zoo_lib.member_keys(config)
  task_arrays = jax.tree.map(jnp.asarray, bench.zoo_tasks)
  ref, ref_losses = ensemble.make_ensemble_chunk(step, bench.batch_fn)(
      ensemble.init_ensemble(jax.tree.map(jnp.copy, params), opt), task_arrays, keys, None,
      length=5)
  mesh = sharding.make_mesh()
  for loop in ("vmap", "map"):
    state = ensemble.put_state(ensemble.init_ensemble(params, opt), mesh)
    got, losses = ensemble.make_ensemble_chunk(step, bench.batch_fn, loop, mesh=mesh)(
        state, sharding.put_sharded(bench.zoo_tasks, mesh), sharding.put_sharded(keys, mesh),
        None, 5)
    _close(got.params, ref.params)
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5, atol=1e-6)
    for leaf in jax.tree.leaves(got.params) + [losses]:
      assert len(leaf.sharding.device_set) == D
      assert not leaf.sharding.is_fully_replicated
      # Each device holds 2 of the 8 models.
      assert {s.data.shape[leaf.ndim - 1 if leaf is losses else 0]
              for s in leaf.addressable_shards} == {2}
    assert got.params["Dense_0"]["kernel"].sharding.spec == jax.sharding.PartitionSpec("models")


def test_train_zoo_pads_six_models_on_four_devices_and_returns_exactly_six(monkeypatch):
  config = helpers.smoke_config(zoo__num_models=6, zoo__steps=12, zoo__chunk_steps=6)
  bench = tasks.get_benchmark(config)
  seen = []
  # The padded state the trainer runs (8 members on 4 devices), observed per chunk.
  real_chunk = ensemble.make_ensemble_chunk

  def spy(*args, **kwargs):
    chunk = real_chunk(*args, **kwargs)

    def wrapped(state, *rest, **kw):
      seen.append(jax.tree.leaves(state.params)[0])
      return chunk(state, *rest, **kw)
    return wrapped

  monkeypatch.setattr(ensemble, "make_ensemble_chunk", spy)
  sharded = zoo_lib.train_zoo(config, bench, mesh=sharding.make_mesh(config, sharding.MODELS))
  monkeypatch.undo()
  one = zoo_lib.train_zoo(config, bench, mesh=sharding.make_mesh(num_devices=1))
  assert seen and all(x.shape[0] == 8 and len(x.sharding.device_set) == D for x in seen)
  assert all(x.shape[0] == 6 for x in jax.tree.leaves(sharded))
  _close(sharded, one)
  # Unsharded training of the same 6 members, one by one, gives the same models.
  opt = optimizers.make(config.zoo.optimizer, config.zoo.lr)
  train = ensemble.make_member_trainer(ensemble.make_member_step(bench.loss_fn, opt),
                                       bench.batch_fn)
  p0 = zoo_lib.initial_params(config, bench)
  keys = zoo_lib.member_keys(config)
  for m in (0, 5):
    p = jax.tree.map(lambda x: x[m], p0)
    p, _, _ = train(p, opt.init(p), jax.tree.map(lambda x: x[m], bench.zoo_tasks), keys[m],
                    None, 0, length=12)
    _close(p, jax.tree.map(lambda x: x[m], sharded))


def test_fusion_chunks_sharded_equal_one_device_and_split_the_embeddings(monkeypatch):
  n_s, n_q = 6, 5  # Neither a multiple of 4: both padded to 8.
  zoo = helpers.toy_zoo(n_s + n_q, key=5, spread=0.5)
  zoo_s = jax.tree.map(lambda x: x[:n_s], zoo)
  zoo_q = jax.tree.map(lambda x: x[n_s:], zoo)
  opt = optax.sgd(0.05)
  hp = bilevel.FusionHParams(sigma=1.0, gamma=5.0, inner_lr=0.05, dro_lr=0.01, embed_lr=0.05)
  state = bilevel.init_state(jax.random.key(2), helpers.tiny_template(), n_s, n_q, 3, opt,
                             w_scale=0.1)
  mesh = sharding.make_mesh()
  key = jax.random.key(0)
  for make in (fusion.make_offline_chunk, fusion.make_mle_chunk):
    ref, ref_m = make(hp, opt, 2)(jax.tree.map(jnp.copy, state), zoo_s, zoo_q, key, length=8)
    got, got_m = make(hp, opt, 2, mesh=mesh)(jax.tree.map(jnp.copy, state), zoo_s, zoo_q,
                                             key, length=8)
    _close(got, ref)
    _close(got_m, ref_m)
    assert got.emb_s.shape == (n_s, 3) and got.emb_q.shape == (n_q, 3)
  arriving = jax.tree.map(lambda x: x[:4], zoo_s)
  ref, _ = fusion.make_online_chunk(hp, opt, 1)(jax.tree.map(jnp.copy, state), arriving,
                                                zoo_q, key)
  got, _ = fusion.make_online_chunk(hp, opt, 1, mesh=mesh)(jax.tree.map(jnp.copy, state),
                                                           arriving, zoo_q, key)
  _close(got, ref)

  # Inside the compiled chunk, the embedding tables are split across the 4 devices when
  # the chunk gathers its working rows from them (fusion.py, "Working set").
  layouts = []
  real_gather = fusion._gather_rows  # pylint: disable=protected-access

  def spy(table, rows):
    jax.debug.inspect_array_sharding(
        table, callback=lambda s, shape=table.shape: layouts.append(
            (shape, s.num_devices, s.shard_shape(shape))))
    return real_gather(table, rows)

  monkeypatch.setattr(fusion, "_gather_rows", spy)
  fusion.make_offline_chunk(hp, opt, 1, mesh=mesh)(state, zoo_s, zoo_q, key, length=1)
  # emb_s (6 rows) and emb_q (5 rows), each padded to 8 and split 2 rows per device.
  assert layouts == [((8, 3), D, (2, 3)), ((8, 3), D, (2, 3))]


def test_meta_test_sharded_over_four_devices_equals_one_device():
  bench = tasks.get_benchmark(helpers.smoke_config())
  params = bench.init_params(jax.random.key(1))
  eps = {k: v[:7] for k, v in bench.make_episodes(5).items()}  # 7 tasks: not a multiple of 4
  kwargs = dict(loss_fn=bench.loss_fn, metric_fn=bench.metric_fn, steps=3, lr=0.01)
  ref = adaptation.meta_test(params, eps, batch_size=3, **kwargs)
  mesh = sharding.make_mesh(axis=sharding.TASKS)
  for batch_size in (1, 3, 100):
    got = adaptation.meta_test(params, eps, batch_size=batch_size, mesh=mesh, **kwargs)
    assert got.shape == (7,)
    np.testing.assert_allclose(got, ref, rtol=1e-5)
  assert adaptation.task_layout(7, 3, 4) == (2, 4)  # 8 slots, 1 padding task dropped.
  assert adaptation.task_layout(7, 100, 4) == (1, 8)


def test_meta_test_tasks_are_laid_out_across_devices(monkeypatch):
  bench = tasks.get_benchmark(helpers.smoke_config())
  params = bench.init_params(jax.random.key(1))
  eps = {k: v[:7] for k, v in bench.make_episodes(5).items()}
  layouts = []
  real_gather = bench.gather_episode

  def gather(ep, data):
    x = ep["support_x"]
    jax.debug.inspect_array_sharding(x, callback=lambda s: layouts.append(
        (s.num_devices, s.is_fully_replicated)))
    return real_gather(ep, data)

  adaptation.meta_test(
      params, eps, loss_fn=bench.loss_fn, metric_fn=bench.metric_fn, steps=1, lr=0.01,
      batch_size=4, gather_fn=gather,
      mesh=sharding.make_mesh(axis=sharding.TASKS))
  assert layouts and all(n == D and not replicated for n, replicated in layouts)


def test_mesh_of_fewer_devices_and_bad_mesh_configs():
  assert sharding.make_mesh(helpers.smoke_config(mesh__num_devices=2)).devices.size == 2
  for bad in (-1, D + 1):
    with pytest.raises(ConfigError, match="mesh.num_devices"):
      config_lib.validate(helpers.smoke_config(mesh__num_devices=bad))
    with pytest.raises(ConfigError, match="num_devices"):
      sharding.make_mesh(helpers.smoke_config(mesh__num_devices=bad))
  with pytest.raises(ConfigError, match="num_devices"):
    sharding.make_mesh(num_devices=D + 1)


def test_single_process_paths():
  """What a multi-host job does differently, on the one process here."""
  assert jax.process_count() == 1 and sharding.is_main_process()
  assert not sharding.distributed_requested(helpers.smoke_config())
  assert sharding.initialize_distributed(helpers.smoke_config()) is False
  sharding.sync("noop")
  mesh = sharding.make_mesh()
  x = sharding.put_sharded(np.arange(8.0), mesh)
  np.testing.assert_array_equal(sharding.to_host(x), np.arange(8.0))
  keys = sharding.put_sharded(jax.random.split(jax.random.key(0), 8), mesh)
  assert jax.random.key_data(keys).sharding.spec == jax.sharding.PartitionSpec("models")
  np.testing.assert_array_equal(jax.random.key_data(keys),
                                jax.random.key_data(jax.random.split(jax.random.key(0), 8)))
