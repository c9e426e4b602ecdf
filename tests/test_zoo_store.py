"""A zoo on disk (benchmarks/zoo_store.py) and online fusion streaming from it."""

import jax
import numpy as np
import pytest

from benchmarks import zoo_store
from dfl2l_jax import zoo as zoo_lib
from dfl2l_jax.errors import ZooError
from dfl2l_jax.methods import base
from dfl2l_jax.methods import dfl2l
from tests import helpers


def _np(tree):
  return jax.tree.map(np.asarray, tree)


def _assert_trees_equal(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    x, y = np.asarray(x), np.asarray(y)
    assert x.shape == y.shape and x.dtype == y.dtype
    np.testing.assert_array_equal(x, y)


def test_round_trip_in_chunks(tmp_path):
  zoo = _np(helpers.toy_zoo(10, key=3))
  store = zoo_store.ZooStore.save(str(tmp_path / "z"), zoo, chunk_models=3)  # 3+3+3+1
  reopened = zoo_store.ZooStore(str(tmp_path / "z"))
  assert len(reopened) == 10 and zoo_store.num_models(reopened) == 10
  _assert_trees_equal(reopened.load(), zoo)
  _assert_trees_equal(store.template, jax.tree.map(lambda x: x[0], zoo))


def test_slice_and_index_reads_match_numpy_indexing(tmp_path):
  zoo = _np(helpers.toy_zoo(12, key=4))
  store = zoo_store.ZooStore.save(str(tmp_path / "z"), zoo, chunk_models=5)
  for idx in (slice(2, 7), np.array([9, 1, 1, 4]), [11, 0], 5, slice(None, None, 3)):
    _assert_trees_equal(store[idx], jax.tree.map(lambda x, i=idx: x[np.asarray(i)]
                                                 if isinstance(i, list) else x[i], zoo))
    _assert_trees_equal(zoo_lib.take(store, idx), store[idx])


def test_out_of_order_chunked_writes_fill_only_their_rows(tmp_path):
  zoo = _np(helpers.toy_zoo(8, key=5))
  store = zoo_store.ZooStore.create(str(tmp_path / "z"), jax.tree.map(lambda x: x[0], zoo), 8)
  store.write(5, jax.tree.map(lambda x: x[5:8], zoo))
  store.write(0, jax.tree.map(lambda x: x[0:2], zoo))
  got = store.load()
  _assert_trees_equal(jax.tree.map(lambda x: x[[0, 1, 5, 6, 7]], got),
                      jax.tree.map(lambda x: x[[0, 1, 5, 6, 7]], zoo))
  for leaf in jax.tree.leaves(jax.tree.map(lambda x: x[2:5], got)):
    assert not leaf.any()


def test_bad_writes_and_missing_store_are_named(tmp_path):
  zoo = _np(helpers.toy_zoo(4, key=6))
  store = zoo_store.ZooStore.create(str(tmp_path / "z"), jax.tree.map(lambda x: x[0], zoo), 4)
  with pytest.raises(ZooError, match="outside"):
    store.write(3, jax.tree.map(lambda x: x[:2], zoo))
  wrong = {"Dense_0": zoo["Dense_0"]}
  with pytest.raises(ZooError, match="leaves"):
    store.write(0, wrong)
  bad_shape = jax.tree.map(lambda x: x[:2], zoo)
  bad_shape["Dense_0"]["bias"] = np.zeros((2, 99), np.float32)
  with pytest.raises(ZooError, match="Dense_0/bias"):
    store.write(0, bad_shape)
  with pytest.raises(ZooError, match="no zoo store"):
    zoo_store.ZooStore(str(tmp_path / "nothing"))


class _Recorder:
  """Slicing wrapper that records which models were read."""

  def __init__(self, store):
    self.store, self.reads = store, []

  def __getitem__(self, idx):
    self.reads.append(np.atleast_1d(np.arange(len(self.store))[idx]))
    return self.store[idx]


def _ctx(zoo, n):
  config = helpers.smoke_config(fusion__chunk_steps=3, fusion__embed_dim=4)
  rng = np.random.default_rng(0)
  order = rng.permutation(n)
  return base.MethodContext(config=config, benchmark=None, zoo=zoo, s_idx=order[:n - 3],
                            q_idx=order[n - 3:], key=jax.random.key(7))


def test_online_fusion_from_a_store_is_bit_identical_and_streams(tmp_path):
  n = 14
  zoo = helpers.toy_zoo(n, key=8, spread=0.5)
  in_memory = dfl2l.online_fusion(_ctx(zoo, n))
  recorder = _Recorder(zoo_store.ZooStore.save(str(tmp_path / "z"), _np(zoo), chunk_models=4))
  ctx = _ctx(recorder, n)
  from_store = dfl2l.online_fusion(ctx)
  _assert_trees_equal(_np(from_store), _np(in_memory))
  assert int(from_store.step) == n - 3
  # Q once, then each chunk's arrivals only (chunk_steps = 3), in arrival order;
  # ctx.template may read one model for shapes.
  reads = [r for r in recorder.reads if not (len(r) == 1 and r[0] == 0)]
  np.testing.assert_array_equal(reads[0], ctx.q_idx)
  arrivals = reads[1:]
  assert all(len(r) <= 3 for r in arrivals)
  np.testing.assert_array_equal(np.concatenate(arrivals), ctx.s_idx)
