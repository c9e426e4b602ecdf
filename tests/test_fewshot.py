import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from dfl2l_jax import adaptation
from dfl2l_jax import ensemble
from dfl2l_jax import models
from dfl2l_jax import zoo as zoo_lib
from dfl2l_jax.errors import ConfigError
from dfl2l_jax.tasks import fewshot
from tests import helpers


@pytest.fixture(scope="module")
def bench():
  return fewshot.make_benchmark(helpers.fewshot_config(), helpers.synthetic_image_loader())


def test_zoo_tasks_use_training_classes_and_a_disjoint_60_20_20_split(bench):
  t = bench.zoo_tasks
  assert t["train_idx"].shape == (6, 3, 12) and t["test_idx"].shape == (6, 3, 4)
  labels = np.repeat(np.arange(8), 20)
  for m in range(6):
    assert len(set(t["classes"][m])) == 3
    for r in range(3):
      tr, te = set(t["train_idx"][m, r]), set(t["test_idx"][m, r])
      assert not tr & te
      assert {labels[i] for i in tr | te} == {t["classes"][m, r]}


def test_episodes_shapes_labels_no_overlap_and_reproducible(bench):
  eps = bench.make_episodes(4)
  assert eps["support_idx"].shape == (10, 3 * 4) and eps["query_idx"].shape == (10, 3 * 5)
  np.testing.assert_array_equal(eps["support_y"][0], np.repeat(np.arange(3), 4))
  test_labels = np.repeat(np.arange(6), 20)
  for t in range(10):
    assert not set(eps["support_idx"][t]) & set(eps["query_idx"][t])
    for idx, y in ((eps["support_idx"][t], eps["support_y"][t]),
                   (eps["query_idx"][t], eps["query_y"][t])):
      np.testing.assert_array_equal(test_labels[idx], eps["classes"][t][y])
  again = bench.make_episodes(4)
  for k in eps:
    np.testing.assert_array_equal(eps[k], again[k])
  two = bench.make_episodes(2)
  np.testing.assert_array_equal(two["query_idx"], eps["query_idx"])
  support, query = bench.gather_episode(jax.tree.map(lambda x: x[0], eps), bench.data)
  assert support["x"].shape == (12, 16, 16, 3) and query["x"].dtype == jnp.float32


def test_too_many_shots_and_ways_are_rejected():
  loader = helpers.synthetic_image_loader()
  with pytest.raises(ConfigError, match="exceed"):
    fewshot.make_benchmark(helpers.fewshot_config(), loader).make_episodes(16)
  with pytest.raises(ConfigError, match="classes"):
    fewshot.make_benchmark(helpers.fewshot_config(zoo__ways=9), loader)
  # 7 ways fit the 8 training classes but not the 6 test classes: refused when the benchmark
  # is built, before the zoo is trained (it used to fail only at the meta-test).
  with pytest.raises(ConfigError, match="zoo.ways=7: a test task needs 7 classes.* has 6"):
    fewshot.make_benchmark(helpers.fewshot_config(zoo__ways=7), loader)
  with pytest.raises(ConfigError, match="cannot serve"):
    fewshot.make_benchmark(helpers.fewshot_config(data__dataset="cifar_fs"), loader)
  with pytest.raises(ConfigError, match="bn_impl"):
    fewshot.make_benchmark(helpers.fewshot_config(model__bn_impl="cudnn"), loader)
  assert fewshot.make_benchmark(helpers.fewshot_config(model__bn_impl="fused"),
                                loader).model.bn_impl == "fused"


def test_query_examples_do_not_influence_each_other(bench):
  # BatchNorm statistics come from the support set: one query image's logits
  # do not depend on which other query images are evaluated with it.
  params = bench.init_params(jax.random.key(0))
  eps = jax.tree.map(lambda x: x[0], bench.make_episodes(4))
  support, query = bench.gather_episode(eps, bench.data)
  # Compiled (one program per query size): run op by op it compiles some 150 small ones.
  apply = jax.jit(functools.partial(models.apply_with_reference, bench.model))
  all_logits = apply(params, query["x"], support["x"])
  one = apply(params, query["x"][:1], support["x"])
  np.testing.assert_allclose(all_logits[:1], one, rtol=1e-4, atol=1e-5)
  other_support = support["x"][::-1] * 0.5
  moved = apply(params, query["x"][:1], other_support)
  assert not np.allclose(moved, one)


@pytest.mark.slow  # trains a zoo
def test_cnn_zoo_trainer_improves_accuracy(bench):
  config = helpers.fewshot_config()
  opt = optax.adam(3e-3)
  state = ensemble.init_ensemble(zoo_lib.initial_params(config, bench), opt)
  chunk = ensemble.make_ensemble_chunk(ensemble.make_member_step(bench.loss_fn, opt),
                                       bench.batch_fn)
  tasks = jax.tree.map(jnp.asarray, bench.zoo_tasks)
  evaluate = jax.vmap(bench.zoo_eval_fn, in_axes=(0, 0, None))
  before = np.asarray(evaluate(state.params, tasks, bench.data))
  state, losses = chunk(state, tasks, zoo_lib.member_keys(config), bench.data, length=60)
  after = np.asarray(evaluate(state.params, tasks, bench.data))
  assert after.mean() > before.mean() + 20, (before, after)
  assert after.mean() > 80
  assert losses[-5:].mean() < losses[:5].mean()


@pytest.mark.slow
def test_meta_test_adapts_and_reports_accuracy_in_percent(bench):
  params = bench.init_params(jax.random.key(1))
  eps = bench.make_episodes(4)
  kw = dict(loss_fn=bench.loss_fn, metric_fn=bench.metric_fn, lr=0.1, batch_size=4,
            gather_fn=bench.gather_episode, data=bench.data)
  before = adaptation.meta_test(params, eps, steps=0, **kw)
  after = adaptation.meta_test(params, eps, steps=30, **kw)
  assert before.shape == (10,) and np.all((0 <= after) & (after <= 100 + 1e-3))
  assert after.mean() > before.mean() + 10


def test_patch_convolution_equals_xla_convolution():
  x = jax.random.normal(jax.random.key(0), (3, 16, 16, 3))
  xla = models.Conv4(ways=4, conv_impl="xla")
  patches = models.Conv4(ways=4, conv_impl="patches")
  params = xla.init(jax.random.key(1), x)["params"]
  assert (jax.tree.structure(params)
          == jax.tree.structure(patches.init(jax.random.key(1), x)["params"]))
  np.testing.assert_allclose(models.apply_train_mode(xla, params, x),
                             models.apply_train_mode(patches, params, x), rtol=1e-4, atol=1e-4)


@pytest.mark.slow  # trains a zoo three ways
def test_member_loops_give_the_same_zoo(bench):
  # SGD, not Adam: a conv bias before BatchNorm has a zero gradient up to rounding,
  # which Adam would blow up to +-lr in either direction.
  config = helpers.fewshot_config()
  opt = optax.sgd(0.1)
  step = ensemble.make_member_step(bench.loss_fn, opt)
  tasks = jax.tree.map(jnp.asarray, bench.zoo_tasks)
  out = []
  losses = []
  for loop in ("vmap", "map", "loop"):
    chunk = ensemble.make_ensemble_chunk(step, bench.batch_fn, loop)
    state = ensemble.init_ensemble(zoo_lib.initial_params(config, bench), opt)
    state, loss = chunk(state, tasks, zoo_lib.member_keys(config), bench.data, length=3)
    out.append(state.params)
    losses.append(loss)
    assert int(state.step) == 3
  for other, other_loss in zip(out[1:], losses[1:]):
    for a, b in zip(jax.tree.leaves(out[0]), jax.tree.leaves(other)):
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(losses[0], other_loss, rtol=1e-4, atol=1e-5)
