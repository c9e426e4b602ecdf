"""MAML, FO-MAML and online meta-learning (FTML): dfl2l_jax/metalearning.py, methods/maml.py."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from dfl2l_jax import adaptation
from dfl2l_jax import metalearning as maml_lib
from dfl2l_jax import methods as methods_lib
from dfl2l_jax import models
from dfl2l_jax.errors import CheckpointError, ConfigError
from dfl2l_jax.methods import base
from dfl2l_jax.methods import maml as maml_methods
from dfl2l_jax.tasks import base as tasks_base
from tests import helpers

# ---------------------------------------------------------------------------
# A toy task family with a known answer: y = w x on x ~ U[-1, 1], w ~ N(C, s^2).
# For the linear model y = a x + b and one inner SGD step on a large support
# batch, the post-adaptation query loss of task w is (1 - 2 alpha E x^2)^2
# (a - w)^2 E x^2 + (...) b^2, so the MAML initialisation is a = mean(w), b = 0.
# ---------------------------------------------------------------------------
CENTER, SPREAD, BATCH = 2.0, 0.3, 32


def mse(pred, y):
  return jnp.mean(jnp.square(pred - y))


def toy_benchmark(n_tasks=12, hidden=(), seed=0, spy=None):
  net = models.MLP(hidden=hidden, out=1)
  rng = np.random.default_rng(seed)
  zoo_tasks = {"w": (CENTER + SPREAD * rng.normal(size=n_tasks)).astype(np.float32),
               "id": np.arange(n_tasks, dtype=np.int32)}

  def batch_fn(task, key, data):
    del data
    if spy is not None:
      jax.debug.callback(spy, task["id"])
    x = jax.random.uniform(key, (BATCH, 1), minval=-1.0, maxval=1.0)
    return {"x": x, "y": task["w"] * x}

  def loss_fn(params, batch):
    return mse(net.apply({"params": params}, batch["x"]), batch["y"])

  return tasks_base.Benchmark(
      name="toy_linear", metric="mse", model=net, example_input=np.zeros((1, 1), np.float32),
      zoo_tasks=zoo_tasks, batch_fn=batch_fn, loss_fn=loss_fn,
      metric_fn=lambda p, q, s: loss_fn(p, q), zoo_eval_fn=None, make_episodes=None,
      points_available=BATCH, spec={"benchmark": "toy_linear", "hidden": list(hidden)})


def toy_config(**overrides):
  base_overrides = dict(
      maml__meta_steps=600, maml__meta_batch_size=8, maml__inner_steps=1,
      maml__inner_lr=0.5, maml__outer_lr=0.01, maml__support_size=16,
      maml__query_size=16, maml__chunk_steps=200, oml__steps_per_arrival=60)
  base_overrides.update(overrides)
  return helpers.smoke_config(**base_overrides)


def toy_ctx(config, benchmark, workdir=None, hooks=None, n_s=10):
  n = jax.tree.leaves(benchmark.zoo_tasks)[0].shape[0]
  order = np.random.default_rng(5).permutation(n)
  return base.MethodContext(
      config=config, benchmark=benchmark, zoo=None, s_idx=order[:n_s], q_idx=order[n_s:],
      key=jax.random.key(3), workdir=workdir, hooks=hooks)


def run_method(name, ctx):
  return methods_lib.METHODS[name].make_init(ctx)


TOY = toy_benchmark()  # shared, so that runs with equal settings share a compiled chunk


# (a) Meta-gradients ---------------------------------------------------------

def _tiny_problem(dtype=np.float32):
  template = helpers.tiny_template()
  rng = np.random.default_rng(0)
  params = jax.tree.map(
      lambda x: jnp.asarray(np.asarray(x, dtype) + 0.5 * rng.normal(size=x.shape).astype(dtype)),
      template)
  xs = jnp.asarray(rng.uniform(-2, 2, size=(2, 6, 1)).astype(dtype))
  support = {"x": xs[0], "y": jnp.sin(2 * xs[0])}
  query = {"x": xs[1], "y": jnp.sin(2 * xs[1])}
  net = models.MLP(hidden=(4,), out=1)
  loss_fn = lambda p, b: mse(net.apply({"params": p}, b["x"]), b["y"])
  return params, support, query, loss_fn


def test_meta_gradients_match_finite_differences_and_first_order_definition():
  steps, lr = 2, 0.3
  with jax.enable_x64(True):
    params, support, query, loss_fn = _tiny_problem(np.float64)
    grad_fn = jax.jit(maml_lib.meta_gradient, static_argnums=(3, 4, 5, 6))
    (q_loss, _), g2 = grad_fn(params, support, query, loss_fn, steps, lr, False)
    (q_loss1, _), g1 = grad_fn(params, support, query, loss_fn, steps, lr, True)
    flat, unravel = ravel_pytree(params)

    def post_adaptation_query_loss(v):
      adapted, _ = maml_lib.inner_adapt(unravel(v), support, loss_fn, steps, lr)
      return loss_fn(adapted, query)

    eps = 1e-6
    basis = eps * np.eye(flat.size)
    points = jnp.concatenate([flat[None], flat + basis, flat - basis])
    values = np.asarray(jax.jit(jax.vmap(post_adaptation_query_loss))(points))
    fd = (values[1:1 + flat.size] - values[1 + flat.size:]) / (2 * eps)
    g2_flat = np.asarray(ravel_pytree(g2)[0])
    np.testing.assert_allclose(g2_flat, fd, rtol=1e-5, atol=1e-7)
    assert float(q_loss) == pytest.approx(float(values[0]), rel=1e-12)
    assert float(q_loss1) == pytest.approx(float(q_loss), rel=1e-12)  # same forward value

    # First order: the query gradient at the adapted parameters.
    adapted, _ = maml_lib.inner_adapt(params, support, loss_fn, steps, lr)
    expected = np.asarray(ravel_pytree(jax.grad(loss_fn)(adapted, query))[0])
    g1_flat = np.asarray(ravel_pytree(g1)[0])
    np.testing.assert_allclose(g1_flat, expected, rtol=1e-10, atol=1e-12)
    # ... which differs from the true meta-gradient here (the test can tell them apart).
    assert np.linalg.norm(g1_flat - g2_flat) > 0.05 * np.linalg.norm(g2_flat)


def test_inner_adapt_equals_unrolled_sgd():
  params, support, _, loss_fn = _tiny_problem()
  adapted, losses = jax.jit(maml_lib.inner_adapt, static_argnums=(2, 3, 4))(
      params, support, loss_fn, 3, 0.1)
  value_and_grad = jax.jit(jax.value_and_grad(loss_fn))
  p = params
  for t in range(3):
    loss, g = value_and_grad(p, support)
    assert float(losses[t]) == pytest.approx(float(loss), rel=1e-5)
    p = jax.tree.map(lambda x, gx: x - 0.1 * gx, p, g)
  for a, b in zip(jax.tree.leaves(adapted), jax.tree.leaves(p)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_batch_meta_gradient_vmap_map_and_loop_agree():
  params, support, query, loss_fn = _tiny_problem()
  shift = jnp.arange(3, dtype=jnp.float32)[:, None, None]
  supports = {"x": support["x"][None] + shift, "y": support["y"][None] + shift}
  queries = {"x": query["x"][None] - shift, "y": query["y"][None] * (1 + shift)}
  batch_fn = jax.jit(maml_lib.batch_meta_gradient, static_argnums=(3, 4))
  out = {}
  for loop in ("vmap", "map"):
    hp = maml_lib.MamlHParams(inner_steps=2, inner_lr=0.1, member_loop=loop)
    out[loop] = batch_fn(params, supports, queries, loss_fn, hp)
  one = jax.jit(maml_lib.meta_gradient, static_argnums=(3, 4, 5))
  per_task = [one(params, jax.tree.map(lambda x: x[i], supports),
                  jax.tree.map(lambda x: x[i], queries), loss_fn, 2, 0.1)
              for i in range(3)]
  mean_grad = jax.tree.map(lambda *g: sum(g) / 3, *[g for _, g in per_task])
  for loop in ("vmap", "map"):
    q_loss, _, grads = out[loop]
    assert float(q_loss) == pytest.approx(np.mean([l[0] for l, _ in per_task]), rel=1e-5)
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(mean_grad)):
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


# (b) A known answer ------------------------------------------------------------

def _post_adaptation_loss(params, benchmark, inner_lr, n_tasks=64):
  """Mean query MSE after one SGD step on 16 support points, on fresh tasks."""
  rng = np.random.default_rng(99)
  w = (CENTER + SPREAD * rng.normal(size=(n_tasks, 1, 1))).astype(np.float32)
  x = rng.uniform(-1, 1, size=(n_tasks, 40, 1)).astype(np.float32)
  episodes = {"support_x": x[:, :16], "support_y": w * x[:, :16],
              "query_x": x[:, 16:], "query_y": w * x[:, 16:]}
  per_task = adaptation.meta_test(params, episodes, loss_fn=benchmark.loss_fn,
                                  metric_fn=benchmark.metric_fn, steps=1, lr=inner_lr,
                                  batch_size=n_tasks)
  return float(np.mean(per_task))


@pytest.mark.parametrize("name", ["maml", "fomaml", "oml"])
def test_meta_learned_init_is_the_known_optimum_and_beats_random(name):
  config = toy_config()
  benchmark = TOY
  ctx = toy_ctx(config, benchmark)
  theta = run_method(name, ctx)
  tasks_seen = (benchmark.zoo_tasks["w"][ctx.s_idx] if name == "oml"
                else benchmark.zoo_tasks["w"])
  kernel, bias = float(theta["Dense_0"]["kernel"][0, 0]), float(theta["Dense_0"]["bias"][0])
  assert kernel == pytest.approx(float(np.mean(tasks_seen)), abs=0.1)
  assert abs(bias) < 0.1
  random_init = benchmark.init_params(jax.random.key(3))
  lr = config.maml.inner_lr
  learned = _post_adaptation_loss(theta, benchmark, lr)
  assert learned < 0.25 * _post_adaptation_loss(random_init, benchmark, lr)


# (c) Resume ---------------------------------------------------------------------

class _Interrupt(Exception):
  pass


def _interrupt_at(step):
  def hooks(phase, at):
    if at == step:
      raise _Interrupt(f"{phase}@{at}")
  return hooks


@pytest.mark.parametrize("name", ["maml", "oml"])
def test_interrupted_run_resumes_bit_identically(name, tmp_path):
  config = toy_config(maml__meta_steps=30, maml__chunk_steps=10, oml__steps_per_arrival=3)
  benchmark = TOY
  straight = run_method(name, toy_ctx(config, benchmark, str(tmp_path / "a")))
  workdir = str(tmp_path / "b")
  with pytest.raises(_Interrupt):
    run_method(name, toy_ctx(config, benchmark, workdir, hooks=_interrupt_at(20)))
  resumed = run_method(name, toy_ctx(config, benchmark, workdir))
  for a, b in zip(jax.tree.leaves(straight), jax.tree.leaves(resumed)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  # A checkpoint of another configuration is refused, not reused.
  other = toy_config(maml__meta_steps=30, maml__chunk_steps=10, oml__steps_per_arrival=3,
                     maml__inner_lr=0.25)
  with pytest.raises(CheckpointError, match="inner_lr"):
    run_method(name, toy_ctx(other, benchmark, workdir))


# (d) OML sees only tasks that have arrived ---------------------------------------

def test_oml_index_arithmetic_draws_only_from_the_buffer():
  n, spa, batch = 7, 4, 5
  index_fn = maml_lib.BufferTasks(n, batch, spa)
  steps = jnp.arange(n * spa + 8)  # also past the last arrival
  key = jax.random.key(0)
  idx = np.asarray(jax.vmap(lambda t: index_fn(jax.random.fold_in(key, t), t))(steps))
  buffer = np.minimum(np.asarray(steps) // spa + 1, n)
  assert (idx >= 0).all() and (idx < buffer[:, None]).all()
  # Every arrived task is drawn at some point, including the oldest late in the run.
  assert set(idx.ravel()) == set(range(n))
  assert (idx[-spa:] == 0).any() or (idx[-3 * spa:] == 0).any()


@pytest.mark.parametrize("start,length,spa,expect", [
    (0, 3, 3, 1), (0, 4, 3, 2), (3, 3, 3, 2), (5, 10, 3, 5), (0, 100, 3, 6)])
def test_buffer_rows_hold_only_arrived_tasks(start, length, spa, expect):
  arrivals = np.array([4, 0, 5, 2, 1, 3])
  rows = maml_methods.buffer_rows(arrivals, start, length, spa)
  assert rows.shape == arrivals.shape
  assert set(rows.tolist()) == set(arrivals[:expect].tolist())


def test_oml_batch_fn_only_ever_receives_arrived_tasks():
  seen = []
  benchmark = toy_benchmark(n_tasks=8, spy=lambda i: seen.append(int(i)))
  spa = 4
  config = toy_config(oml__steps_per_arrival=spa, maml__chunk_steps=spa,
                      maml__meta_batch_size=3)
  per_chunk = []

  def hooks(phase, step):
    jax.effects_barrier()
    per_chunk.append((step, list(seen)))
    seen.clear()

  ctx = toy_ctx(config, benchmark, hooks=hooks, n_s=6)
  run_method("oml", ctx)
  arrivals = list(ctx.s_idx)
  assert [s for s, _ in per_chunk] == [spa * (k + 1) for k in range(len(arrivals))]
  for k, (_, ids) in enumerate(per_chunk):
    assert ids, "the spy saw no batch"
    assert len(ids) == 2 * spa * 3  # a support and a query batch per task per step
    assert set(ids) <= set(arrivals[:k + 1]), (k, ids, arrivals[:k + 1])
  # The buffer is used: tasks that arrived earlier are revisited later.
  assert set(per_chunk[-1][1]) - {arrivals[-1]}


# (e) Validation and registration -------------------------------------------------

def _with(config, section, **fields):
  """A copy of `config` whose `section` has `fields` set, of any type (as a config
  built by other code could hold; ConfigDict overrides would refuse a wrong type)."""
  config = config.copy_and_resolve_references()
  with config.unlocked():
    config[section] = ml_collections.ConfigDict(dict(config[section].to_dict(), **fields))
  return config


@pytest.mark.parametrize("field,value,match", [
    ("meta_steps", 0, "maml.meta_steps"),
    ("meta_batch_size", -1, "maml.meta_batch_size"),
    ("inner_steps", 1.5, "maml.inner_steps"),
    ("chunk_steps", True, "maml.chunk_steps"),
    ("inner_lr", 0.0, "maml.inner_lr"),
    ("inner_lr", float("nan"), "maml.inner_lr"),
    ("outer_lr", float("inf"), "maml.outer_lr"),
    ("outer_lr", "1e-3", "maml.outer_lr"),
    ("support_size", -1, "maml.support_size"),
    ("support_size", 65, "exceeds config.zoo.batch_size"),
    ("query_size", "8", "maml.query_size"),
])
def test_validate_rejects_bad_maml_values(field, value, match):
  config = _with(helpers.smoke_config(), "maml", **{field: value})
  for name in ("maml", "fomaml", "oml"):
    with pytest.raises(ConfigError, match=match):
      methods_lib.METHODS[name].validate(config)


@pytest.mark.parametrize("field,value", [
    ("steps_per_arrival", 0), ("steps_per_arrival", 2.0), ("first_order", "yes")])
def test_validate_rejects_bad_oml_values(field, value):
  config = _with(helpers.smoke_config(), "oml", **{field: value})
  methods_lib.METHODS["maml"].validate(config)  # maml does not read config.oml
  with pytest.raises(ConfigError, match=f"oml.{field}"):
    methods_lib.METHODS["oml"].validate(config)


def test_validate_names_a_missing_field():
  config = helpers.smoke_config()
  with config.unlocked():
    del config.maml["support_size"]
  with pytest.raises(ConfigError, match="maml.support_size"):
    maml_methods.validate_maml(config)


def test_defaults_validate_and_methods_run_only_when_named():
  from configs import fewshot_base, sinusoid  # pylint: disable=g-import-not-at-top
  for config in (sinusoid.get_config(), sinusoid.get_config("smoke"),
                 fewshot_base.make("mini_imagenet", 5), fewshot_base.make("cifar_fs", 5, "smoke")):
    maml_methods.validate_oml(config)
  for setting in ("offline", "online"):
    names = {m.name for m in methods_lib.resolve("", setting)}
    assert not names & {"maml", "fomaml", "oml"}
  assert [m.name for m in methods_lib.resolve("maml,fomaml,oml", "offline")] == [
      "maml", "fomaml", "oml"]


def test_pseudo_tasks_are_zoo_models_labelling_inputs_of_the_domain():
  from dfl2l_jax.methods import maml as maml_methods  # pylint: disable=g-import-not-at-top
  net = models.MLP(hidden=(4,), out=1)
  apply = lambda p, x: net.apply({"params": p}, x)
  batch_fn = maml_methods.pseudo_batch_fn(apply, (-2.0, 3.0), 16)
  assert maml_methods.pseudo_batch_fn(apply, (-2.0, 3.0), 16) is batch_fn  # compiled once
  params = net.init(jax.random.key(0), jnp.zeros((1, 1)))["params"]
  batch = batch_fn(params, jax.random.key(1), None)
  assert batch["x"].shape == (16, 1) and batch["y"].shape == (16, 1)
  assert float(batch["x"].min()) >= -2.0 and float(batch["x"].max()) <= 3.0
  np.testing.assert_allclose(batch["y"], apply(params, batch["x"]), rtol=1e-6)


def test_config_methods_may_name_tags():
  """A tag names every method it labels, in registry order, without duplicates; names
  that are neither a method nor a tag are refused."""
  got = [m.name for m in methods_lib.resolve("function_space", "offline")]
  assert got == ["zoo_features", "zoo_maml", "zoo_distill", "inversion_maml"]
  got = [m.name for m in methods_lib.resolve("va,ablation,dfl2l_mle", "offline")]
  assert got == ["va", "dfl2l_no_dro", "dfl2l_mle"]
  assert [m.name for m in methods_lib.resolve("", "online")] == ["dfl2l_online", "finetune"]
  with pytest.raises(ConfigError, match="the tags .*function_space"):
    methods_lib.resolve("function-space", "offline")
  with pytest.raises(ConfigError, match="named twice"):
    methods_lib.resolve("va,va", "offline")
