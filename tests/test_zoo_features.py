"""The zoo as a feature ensemble (methods/zoo_features.py) and the learner meta-test."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dfl2l_jax import adaptation
from dfl2l_jax import sharding
from dfl2l_jax.errors import ConfigError
from dfl2l_jax.methods import base
from dfl2l_jax.methods import zoo_features as zf
from tests import helpers


def test_dual_ridge_equals_the_primal_with_an_unpenalised_intercept():
  rng = np.random.default_rng(0)
  phi_s, phi_q = rng.normal(size=(20, 5)), rng.normal(size=(7, 5))
  y = rng.normal(size=20)
  lam_rel = 0.3
  c = phi_s - phi_s.mean(0)
  lam = lam_rel * np.trace(c @ c.T) / 20
  w = np.linalg.solve(c.T @ c + lam * np.eye(5), c.T @ (y - y.mean()))
  want = (phi_q - phi_s.mean(0)) @ w + y.mean()
  with jax.enable_x64(True):
    got = zf.ridge_fit_predict(jnp.asarray(phi_s), jnp.asarray(y), jnp.asarray(phi_q), lam_rel)
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-6)


def _shifted_sines(n):
  """A 'zoo' of n functions sin(x + 2 pi i / n): their span holds every a sin(x + b) + c."""
  apply = lambda p, x: jnp.sin(x + p["phase"])
  return apply, {"phase": jnp.arange(n, dtype=jnp.float32) * (2 * np.pi / n)}


def _episodes(n_tasks, k, q, seed=0):
  rng = np.random.default_rng(seed)
  a, b, c = (rng.uniform(0.1, 5, n_tasks), rng.uniform(0, 6.3, n_tasks),
             rng.uniform(0, 3, n_tasks))
  x = rng.uniform(-5, 5, size=(n_tasks, k + q, 1)).astype(np.float32)
  y = (a[:, None, None] * np.sin(x + b[:, None, None]) + c[:, None, None]).astype(np.float32)
  return {"support_x": x[:, :k], "support_y": y[:, :k], "query_x": x[:, k:],
          "query_y": y[:, k:]}


def test_tasks_in_the_span_of_the_zoo_are_learned_from_five_points():
  apply, zoo = _shifted_sines(8)
  learner = base.Learner({"zoo": zoo, "lam_rel": {"5": jnp.float32(1e-6)}},
                         zf._scorer(apply), None)  # pylint: disable=protected-access
  mse = adaptation.score_learner(learner, _episodes(6, 5, 50), batch_size=4)
  assert mse.shape == (6,) and np.all(mse < 1e-3), mse


def test_learner_meta_test_equals_a_loop_and_does_not_depend_on_devices():
  apply, zoo = _shifted_sines(5)
  score = zf._scorer(apply)  # pylint: disable=protected-access
  learner = base.Learner({"zoo": zoo, "lam_rel": {"4": jnp.float32(0.1)}}, score, None)
  eps = _episodes(7, 4, 9, seed=1)
  got = adaptation.score_learner(learner, eps, batch_size=3)
  for m in range(7):
    one = score(learner.state, {"x": eps["support_x"][m], "y": eps["support_y"][m]},
                {"x": eps["query_x"][m], "y": eps["query_y"][m]})
    assert got[m] == pytest.approx(float(one), rel=1e-5)
  on_mesh = adaptation.score_learner(learner, eps, batch_size=3,
                                     mesh=sharding.make_mesh(None, sharding.TASKS))
  np.testing.assert_allclose(on_mesh, got, rtol=1e-5)


def test_ridge_strength_is_chosen_on_meta_validation_pseudo_tasks_only():
  apply, zoo = _shifted_sines(6)
  zoo_q = {"phase": jnp.asarray([0.3, 1.1], jnp.float32)}  # in the span of zoo_s's functions
  grid = (1e-6, 1e-2, 10.0)
  chosen, table = zf.select_ridge(apply, zoo, zoo_q, (5, 10), grid, (-5.0, 5.0), 20, 2,
                                  seed=[0, 1])
  assert set(chosen) == {5, 10} and all(v in grid for v in chosen.values())
  assert chosen[5] < 10.0 and table[5][-1] > table[5][0]  # heavy ridge is worst here
  again, _ = zf.select_ridge(apply, zoo, zoo_q, (5, 10), grid, (-5.0, 5.0), 20, 2, seed=[0, 1])
  assert again == chosen


def test_bad_settings_are_refused():
  with pytest.raises(ConfigError, match="ridge_grid"):
    zf.validate(helpers.smoke_config(zoo_features__ridge_grid=(0.1, -1.0)))
  with pytest.raises(ConfigError, match="at least 2 support points"):
    zf.validate(helpers.smoke_config(shots=(1, 5)))
  with pytest.raises(ConfigError, match="image_head must be one of"):
    zf.validate(helpers.smoke_config(zoo_features__image_head="svm"))
  with pytest.raises(ConfigError, match="logistic_c"):
    zf.validate(helpers.smoke_config(zoo_features__logistic_c=0.0))
  with pytest.raises(ConfigError, match="logistic_steps"):
    zf.validate(helpers.smoke_config(zoo_features__logistic_steps=0))
  with pytest.raises(ConfigError, match="group_weight must be a non-negative"):
    zf.validate(helpers.smoke_config(zoo_features__group_weight=-1.0))
  with pytest.raises(ConfigError, match="group_weight_grid must be a tuple of non-negative"):
    zf.validate(helpers.smoke_config(zoo_features__group_weight_grid=(0.0, float("inf"))))


def test_logistic_head_reaches_the_regularised_optimum():
  """The fixed-step fit is the minimiser: the objective's gradient vanishes there (it is
  strictly convex in W), and the fit separates separable data."""
  rng = np.random.default_rng(0)
  ways, per_class, d = 4, 3, 20
  centres = rng.normal(size=(ways, d))
  y = np.repeat(np.arange(ways), per_class)
  f = jnp.asarray(centres[y] + 0.3 * rng.normal(size=(len(y), d)), jnp.float32)
  c = 1.0
  w, b = zf.fit_logistic(f, jnp.asarray(y), ways, c, 3000)
  x = f / jnp.linalg.norm(f, axis=1, keepdims=True)
  n = len(y)

  def objective(w, b):
    logp = jax.nn.log_softmax(x @ w + b)
    return (-jnp.mean(logp[jnp.arange(n), y]) + 0.5 / (c * n) * jnp.sum(w * w))

  g_w, g_b = jax.grad(objective, argnums=(0, 1))(w, b)
  assert float(jnp.abs(g_w).max()) < 1e-4 and float(jnp.abs(g_b).max()) < 1e-4
  assert np.all(np.argmax(np.asarray(x @ w + b), -1) == y)
  # The optimum does not depend on the features' scale (rows are scaled to unit length).
  w2, b2 = zf.fit_logistic(7.0 * f, jnp.asarray(y), ways, c, 3000)
  np.testing.assert_allclose(w2, w, atol=1e-5)


def test_image_zoo_features_classify_by_nearest_centroid_of_support_features():
  from dfl2l_jax.tasks import fewshot  # pylint: disable=g-import-not-at-top
  bench = fewshot.make_benchmark(helpers.fewshot_config(), helpers.synthetic_image_loader())
  zoo = jax.vmap(bench.init_params)(jax.random.split(jax.random.key(0), 3))
  ctx = base.MethodContext(config=helpers.fewshot_config(), benchmark=bench, zoo=zoo,
                           s_idx=np.arange(2), q_idx=np.arange(2, 3), key=jax.random.key(1))
  learner = zf.zoo_features(ctx)
  eps = bench.make_episodes(4)
  acc = adaptation.score_learner(learner, eps, batch_size=10, gather_fn=bench.gather_episode,
                                 data=bench.data)
  # 3-way tasks of class-coloured noise: random Conv4 features separate them well.
  assert acc.shape == (eps["support_idx"].shape[0],) and acc.mean() > 80, acc
  assert learner.cost(12, 15) == {"networks": 3, "forward": 3 * (24 + 15), "backward": 0}
  # Feature vectors of each model have unit length (every model weighs the same).
  support, _ = bench.gather_episode({k: v[0] for k, v in eps.items()
                                     if isinstance(v, np.ndarray)}, bench.data)
  f = zf.image_features(bench.model.clone(head=False), zoo, support["x"], support["x"])
  norms = np.linalg.norm(np.asarray(f).reshape(f.shape[0], 3, -1), axis=-1)
  np.testing.assert_allclose(norms, 1.0, rtol=1e-4)
  # The logistic head (the option) on the same tasks and features.
  logistic_ctx = dataclasses.replace(ctx, config=helpers.fewshot_config(
      zoo_features__image_head="logistic", zoo_features__logistic_steps=300))
  logistic = zf.zoo_features(logistic_ctx)
  acc_lr = adaptation.score_learner(logistic, eps, batch_size=10,
                                    gather_fn=bench.gather_episode, data=bench.data)
  assert acc_lr.shape == acc.shape and acc_lr.mean() > 80, acc_lr
  assert logistic.score is not learner.score and logistic.cost(12, 15) == learner.cost(12, 15)



def _mean_brightness(state, support, query):
  del state, support
  return jnp.mean(query["x"])


def _minus_mean_brightness(state, support, query):
  del state, support
  return -jnp.mean(query["x"])


HEADS = (("centroid", None), ("logistic", None))  # select's candidates, one architecture


def test_image_head_select_chooses_per_shot_count_on_meta_validation_classes_only():
  from dfl2l_jax.errors import DataError, NotApplicable  # pylint: disable=g-import-not-at-top
  from dfl2l_jax.tasks import fewshot  # pylint: disable=g-import-not-at-top
  # The heads of the test above (same tasks and settings): their compiled meta-tests are
  # reused on one worker (`--dist loadfile`).
  config = helpers.fewshot_config(zoo_features__image_head="select", shots=(4,),
                                  zoo_features__logistic_steps=300,
                                  zoo_features__image_val_tasks=3)
  synthetic, splits = helpers.synthetic_image_loader(), []

  def loader(split):
    splits.append(split)
    return synthetic(split)
  bench = fewshot.make_benchmark(config, loader)
  assert splits == ["train", "test"]  # the meta-validation classes are read on first use
  zoo = jax.vmap(bench.init_params)(jax.random.split(jax.random.key(0), 3))
  # As a data-free method receives it: the meta-validation classes are not the zoo's data.
  ctx = base.MethodContext(config=config, benchmark=base.DataFreeBenchmark(bench, "zf"),
                           zoo=zoo, s_idx=np.arange(2), q_idx=np.arange(2, 3),
                           key=jax.random.key(1))
  learner = zf.zoo_features(ctx)
  assert splits.count("val") == 1
  chosen = ctx.notes["image_head"]
  assert chosen in ("4:centroid", "4:logistic")
  # On the test tasks the learner is the chosen head.
  head = (zf._centroid_scorer((bench.model.clone(head=False),), 3) if chosen == "4:centroid" else
          zf._logistic_scorer((bench.model.clone(head=False),), 3, 1.0, 300))
  eps = bench.make_episodes(4)
  got = adaptation.score_learner(learner, eps, batch_size=10, gather_fn=bench.gather_episode,
                                 data=bench.data)
  want = adaptation.score_learner(base.Learner({"zoo": zoo}, head, None), eps, batch_size=10,
                                  gather_fn=bench.gather_episode, data=bench.data)
  np.testing.assert_array_equal(got, want)
  # select scores both heads from one computation of the features: the same accuracies
  # as each head alone.
  nets = (bench.model.clone(head=False),)
  both = adaptation.score_learner(
      base.Learner({"zoo": zoo}, zf._candidates_scorer(nets, 3, 1.0, 300, HEADS), None), eps,
      batch_size=10, gather_fn=bench.gather_episode, data=bench.data)
  for i, alone in enumerate((zf._centroid_scorer(nets, 3), zf._logistic_scorer(nets, 3, 1.0, 300))):
    np.testing.assert_allclose(both[:, i], adaptation.score_learner(
        base.Learner({"zoo": zoo}, alone, None), eps, batch_size=10,
        gather_fn=bench.gather_episode, data=bench.data))

  # The choice is the head of the higher meta-validation accuracy at each shot count (the
  # centroid on a tie), made on episodes of the validation classes; each shot count gets
  # its own head.
  episodes, _, _ = bench.validation_episodes(2, 3)
  assert episodes["support_idx"].max() < 3 * 20  # indices into the 3 validation classes
  two = dataclasses.replace(ctx, config=helpers.override(config, shots=(2, 4)))
  tie = lambda *a: jnp.stack([_mean_brightness(*a), _mean_brightness(*a)])
  assert zf.select(two, tie, HEADS, {})[0] == {2: HEADS[0], 4: HEADS[0]}
  heads = lambda *a: jnp.stack([_minus_mean_brightness(*a), _mean_brightness(*a)])
  chosen, table = zf.select(two, heads, HEADS, {})
  assert chosen == {2: HEADS[1], 4: HEADS[1]}
  for k in (2, 4):
    assert table[k]["logistic"] == -table[k]["centroid"] > 0
  score = zf._selected_scorer(((6, _mean_brightness), (12, _minus_mean_brightness)))
  query = {"x": jnp.ones((15, 16, 16, 3))}
  assert score({}, {"x": jnp.zeros((6, 16, 16, 3))}, query) == 1.0
  assert score({}, {"x": jnp.zeros((12, 16, 16, 3))}, query) == -1.0

  # Benchmarks without meta-validation classes, or whose classes overlap, are refused.
  no_val = dataclasses.replace(bench, validation_episodes=None)
  with pytest.raises(NotApplicable, match="meta-validation classes"):
    zf.zoo_features(dataclasses.replace(ctx, benchmark=no_val))
  overlapping = fewshot.make_benchmark(
      config, lambda split: synthetic("test" if split == "val" else split))
  with pytest.raises(DataError, match="meta-validation classes overlap"):
    overlapping.validation_episodes(2, 3)


def _screen_ctx():
  """A screened zoo_features context of 4 random Conv4s and 4 untrained references (as
  many: one compiled initialisation serves both)."""
  from dfl2l_jax.tasks import fewshot  # pylint: disable=g-import-not-at-top
  config = helpers.fewshot_config(shots=(2,), zoo_features__screen="untrained",
                                  zoo_features__screen_shots=2, zoo_features__screen_tasks=3,
                                  zoo_features__screen_references=4)
  bench = fewshot.make_benchmark(config, helpers.synthetic_image_loader())
  zoo = jax.vmap(bench.init_params)(jax.random.split(jax.random.key(0), 4))
  ctx = base.MethodContext(config=config, benchmark=base.DataFreeBenchmark(bench, "zf"),
                           zoo=zoo, s_idx=np.arange(3), q_idx=np.arange(3, 4),
                           key=jax.random.key(1))
  return bench, ctx


def test_the_untrained_screen_keeps_models_that_beat_every_untrained_network(monkeypatch):
  from dfl2l_jax.errors import ZooError  # pylint: disable=g-import-not-at-top
  bench, ctx = _screen_ctx()
  # The rule, with a model's score fixed by its parameters (the mean of its last bias, a
  # stand-in for its accuracy): the untrained references score near 0.
  level = np.array([50.0, 0.0, np.nan, 30.0])
  zoo = jax.tree.map(lambda x: x, ctx.zoo)
  zoo["Dense_0"]["bias"] = jnp.asarray(level)[:, None] * jnp.ones_like(zoo["Dense_0"]["bias"])
  by_bias = lambda net, ways: lambda state, support, query: jnp.mean(
      state["zoo"]["Dense_0"]["bias"], -1)
  monkeypatch.setattr(zf, "_per_model_scorer", by_bias)
  keep, record = zf.screen(ctx, bench.model, {"zoo": zoo})
  assert list(keep) == [0, 3] and record["dropped"] == [1, 2]
  assert record["scores"] == [50.0, 0.0, None, 30.0] and record["bar"] == 0.0
  assert len(record["untrained_scores"]) == 4 and max(record["untrained_scores"]) == 0.0
  zoo["Dense_0"]["bias"] = jnp.zeros_like(zoo["Dense_0"]["bias"]).at[0].set(9.0)
  with pytest.raises(ZooError, match=r"keeps 1 of 4 models \(at least 2 needed\).*0: 9\.0"):
    zf.screen(ctx, bench.model, {"zoo": zoo})
  with pytest.raises(ZooError, match=r"^zoo_distill.screen keeps 1 of 4"):  # who asked
    zf.screen(ctx, bench.model, {"zoo": zoo}, option="zoo_distill.screen")
  with pytest.raises(ConfigError, match="screen"):
    zf.validate(helpers.smoke_config(zoo_features__screen="untrained"))


@pytest.mark.slow  # the real scorer on 4 models and 4 references
def test_the_untrained_screen_drops_a_model_that_is_an_untrained_reference():
  from dfl2l_jax.errors import ZooError  # pylint: disable=g-import-not-at-top
  _, ctx = _screen_ctx()
  # Each untrained reference equals a model given its initialisation, so that model ties
  # the bar and is dropped; the run records the screen.
  refs = zf.untrained_references(ctx, {"zoo": ctx.zoo}, 4)
  mixed = jax.tree.map(lambda z, r: z.at[1].set(r[2]), ctx.zoo, refs["zoo"])
  ctx = dataclasses.replace(ctx, zoo=mixed)
  try:
    learner = zf.zoo_features(ctx)
  except ZooError as e:  # random models may all tie the untrained ones: then say so
    assert "at least 2 needed" in str(e)
  else:
    assert 1 in ctx.notes["screen"]["dropped"]
    assert len(ctx.notes["screen"]["scores"]) == 4
    assert jax.tree.leaves(learner.state["zoo"])[0].shape[0] == len(ctx.notes["screen"]["kept"])
