"""Model inversion (DeepInversion) of a Conv4 zoo, and inversion_maml, on synthetic images."""

import dataclasses
import json
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dfl2l_jax import inversion
from dfl2l_jax import models
from dfl2l_jax import methods
from dfl2l_jax import zoo as zoo_lib
from dfl2l_jax.errors import ConfigError, NotApplicable
from dfl2l_jax.methods import inversion_maml as im
from dfl2l_jax.methods import inverted_images
from dfl2l_jax.methods import zoo_distill as zd
from dfl2l_jax.tasks import fewshot
from tests import helpers

# One xdist worker runs this file (`--dist loadfile`): the module's zoo, compiled once.

HP = inversion.InversionHParams(images_per_class=3, lr=0.1, bn_weight=1.0, tv_weight=1e-3,
                                l2_weight=1e-4, jitter=1, flip=True)


def _config(**overrides):
  base = dict(zoo__num_models=3, inversion_maml__first_order=True, inversion__steps=6,
              inversion__chunk_steps=3, inversion__images_per_class=3,
              maml__meta_steps=2, maml__chunk_steps=1, maml__meta_batch_size=2,
              maml__support_size=6, maml__query_size=6)
  return helpers.fewshot_config(**dict(base, **overrides))


@pytest.fixture(scope="module")
def image_zoo():
  """A benchmark of class-coloured noise images and a zoo of 3 random Conv4s with the
  BatchNorm population statistics their producer computes from their training data."""
  bench = fewshot.make_benchmark(_config(), helpers.synthetic_image_loader())
  zoo = jax.jit(jax.vmap(bench.init_params))(jax.random.split(jax.random.key(0), 3))
  return bench, zoo, zoo_lib.bn_population_stats(zoo, bench)


def test_first_layer_population_statistics_are_the_moments_over_the_training_images(image_zoo):
  """BatchNorm_0's input (the first convolution of the normalised images) depends on no
  batch: its population mean and variance are exactly the moments over every image used."""
  bench, zoo, stats = image_zoo
  assert set(stats) == {f"BatchNorm_{i}" for i in range(4)}
  m = 1
  params = jax.tree.map(lambda x: x[m], zoo)
  idx = bench.zoo_tasks["train_idx"][m].T.reshape(-1)
  used = idx[:(len(idx) // min(len(idx), 32)) * min(len(idx), 32)]  # zoo.batch_size 32
  x = fewshot.normalise(bench.data["train_images"][used], bench.data["mean"], bench.data["std"])
  _, h = inversion.forward_with_bn_inputs(bench.model, params, jax.tree.map(
      lambda s: s[m], stats), x)
  assert [path for path, _ in h] == [(f"BatchNorm_{i}",) for i in range(4)]
  h0 = np.asarray(h[0][1], np.float64).reshape(-1, h[0][1].shape[-1])
  np.testing.assert_allclose(stats["BatchNorm_0"]["mean"][m], h0.mean(0), rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(stats["BatchNorm_0"]["var"][m], h0.var(0), rtol=1e-3, atol=1e-5)
  assert all(np.all(v["var"] >= 0) for v in stats.values())


def _close_after_12_steps(a, b, start):
  """Batched and single-model convolutions round differently, and 12 Adam steps amplify it:
  a near tie (a max-pool, a gradient's sign, which Adam's first steps turn into a whole step)
  that breaks the other way moves a few pixels apart. So the test is on the whole difference,
  against how far the images moved from `start`: 4e-3 of it seen (an Intel Xeon, one model of
  three; elsewhere 1e-5), where a mixed-up model or key differs by about 1.2-1.4 of it."""
  a, b, start = (np.asarray(x, np.float64) for x in (a, b, start))
  moved = np.linalg.norm(b - start)
  assert moved > 0.1 * np.linalg.norm(start), (moved, np.linalg.norm(start))
  assert np.linalg.norm(a - b) < 0.02 * moved, (np.linalg.norm(a - b), moved)


def test_inversion_over_the_zoo_vmapped_mapped_or_looped_equals_one_model_at_a_time(image_zoo):
  bench, zoo, stats = image_zoo
  ways = 3
  chunk, optimizer = inversion.make_chunk(bench.model, ways, HP)
  images = inversion.init_images(jax.random.key(5), 3, ways, HP, (16, 16, 3))
  key = jax.random.key(6)

  def run(rows, steps):
    sub = lambda t: jax.tree.map(lambda x: x[rows], t)
    state = inversion.InversionState(images[rows], optimizer.init(images[rows]), jnp.int32(0))
    return chunk(state, sub(zoo), sub(stats), jnp.asarray(rows), key, length=steps)

  together, hist = run(np.arange(3), 12)
  for m in range(3):
    alone, _ = run(np.array([m]), 12)
    _close_after_12_steps(alone.images[0], together.images[m], images[m])
  loss = np.asarray(hist["loss_mean"])
  assert loss[-1] < 0.7 * loss[0], loss
  assert hist["bn_mean"][-1] < hist["bn_mean"][0]
  before = inversion.own_accuracy(bench.model, zoo, stats, images, ways, 3)
  after = inversion.own_accuracy(bench.model, zoo, stats, together.images, ways, 3)
  # The models recognise their inverted images far better than the starting noise (on the
  # two draws the suite runs, JAX_THREEFRY_PARTITIONABLE=0 and 1: 37 -> 56% and 22 -> 85%).
  assert after.mean() >= before.mean() + 15, (before, after)
  mapped, optimizer = inversion.make_chunk(bench.model, ways, HP, "map")
  state = inversion.InversionState(images, optimizer.init(images), jnp.int32(0))
  one_after_another, _ = mapped(state, zoo, stats, jnp.arange(3), key, length=12)
  _close_after_12_steps(one_after_another.images, together.images, images)
  # One model's step per compiled call, looped from Python, cut into chunks of 5 and 7
  # steps: the same images and the same per-step summary.
  looped, optimizer = inversion.make_chunk(bench.model, ways, HP, "loop")
  state = inversion.InversionState(images, optimizer.init(images), jnp.int32(0))
  state, first = looped(state, zoo, stats, jnp.arange(3), key, length=5)
  state, second = looped(state, zoo, stats, jnp.arange(3), key, length=7)
  assert int(state.step) == 12 and first["loss_mean"].shape == (5,)
  _close_after_12_steps(state.images, together.images, images)
  np.testing.assert_allclose(np.concatenate([first["loss_mean"], second["loss_mean"]]),
                             hist["loss_mean"], rtol=1e-4)
  with pytest.raises(ValueError, match="member_loop"):
    inversion.make_chunk(bench.model, ways, HP, "unroll")


def test_png_grid_is_a_readable_image(tmp_path):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  images = rng.normal(size=(2, 5, 8, 8, 3))
  picture = inversion.grid(inversion.to_uint8(images), 2, 5, pad=2)
  assert picture.shape == (2 * 10 + 2, 5 * 10 + 2, 3)
  path = str(tmp_path / "g.png")
  inversion.write_png(path, picture)
  np.testing.assert_array_equal(np.asarray(Image.open(path)), picture)
  # Each tile is its image min-max scaled to 0..255.
  tile = picture[2:10, 12:20]
  assert tile.min() == 0 and tile.max() == 255
  with pytest.raises(ValueError, match="uint8"):
    inversion.write_png(path, picture[..., 0])
  assert zlib.crc32(open(path, "rb").read()) != 0


def _ctx(bench, zoo, stats, config, tmp_path, method=im.INVERSION_MAML):
  return methods.MethodContext(
      config=config, benchmark=methods.base.DataFreeBenchmark(bench, method.name), zoo=zoo,
      s_idx=np.arange(2), q_idx=np.arange(2, 3), key=jax.random.key(3),
      workdir=str(tmp_path), zoo_bn_stats=stats)


@pytest.mark.slow  # a whole inversion and MAML twice
def test_inversion_maml_runs_without_the_zoo_tasks_data_and_resumes(image_zoo, tmp_path):
  bench, zoo, stats = image_zoo
  config = _config()
  ctx = _ctx(bench, zoo, stats, config, tmp_path)
  theta = im.INVERSION_MAML.make_init(ctx)  # data-free: reading the data would raise
  template = bench.init_params(jax.random.key(0))
  assert jax.tree.structure(theta) == jax.tree.structure(template)
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(theta))
  from PIL import Image  # pylint: disable=g-import-not-at-top
  grid = np.asarray(Image.open(tmp_path / "inversion_grid.png"))
  assert grid.shape == (3 * 18 + 2, 9 * 18 + 2, 3)  # 3 models x (3 classes x 3 images)
  with open(tmp_path / "fusion" / "inversion" / "summary.json") as f:
    summary = json.load(f)
  assert len(summary["own_accuracy_per_model"]) == 3
  assert 0 <= summary["own_accuracy_mean"] <= 100
  # A second call restores both phases from their final checkpoints: the same init.
  again = im.INVERSION_MAML.make_init(ctx)
  for a, b in zip(jax.tree.leaves(theta), jax.tree.leaves(again)):
    np.testing.assert_array_equal(a, b)


def test_inversion_needs_bn_statistics_and_a_classifier_zoo(image_zoo, tmp_path):
  bench, zoo, _ = image_zoo
  with pytest.raises(ConfigError, match="BatchNorm population statistics"):
    inverted_images.invert_zoo(_ctx(bench, zoo, None, _config(), tmp_path))
  sin = helpers.smoke_config()
  from dfl2l_jax import tasks  # pylint: disable=g-import-not-at-top
  sbench = tasks.get_benchmark(sin)
  szoo = jax.vmap(sbench.init_params)(jax.random.split(jax.random.key(0), 2))
  assert zoo_lib.bn_population_stats(szoo, sbench) is None  # an MLP has no BatchNorm
  with pytest.raises(NotApplicable, match="classifier zoo"):
    inverted_images.invert_zoo(dataclasses.replace(_ctx(sbench, szoo, None, sin, tmp_path)))


@pytest.mark.parametrize("field,value,match", [
    ("inversion__steps", 0, "inversion.steps"),
    ("inversion__lr", float("nan"), "inversion.lr"),
    ("inversion__jitter", -1, "inversion.jitter"),
    ("inversion__tv_weight", -0.1, "inversion.tv_weight"),
    ("inversion_maml__start", "zoo", "inversion_maml.start"),
    ("inversion_maml__label_perms", 0, "label_perms"),
])
def test_bad_inversion_settings_are_refused(field, value, match):
  with pytest.raises(ConfigError, match=match):
    im.validate(_config(**{field: value}))


def test_pseudo_episodes_permute_labels_and_draw_from_one_model():
  models, perms = im.label_permutations(0, 4, 3, 5)
  assert models.tolist() == [m for m in range(4) for _ in range(5)]
  assert all(sorted(p) == [0, 1, 2] for p in perms) and len({tuple(p) for p in perms}) > 1
  data = jnp.arange(4 * 3 * 2, dtype=jnp.float32).reshape(4, 6, 1, 1, 1)  # value = index
  batch_fn = im.pseudo_episode_batch_fn(3, 2, 50)
  task = {"model": jnp.int32(2), "perm": jnp.array([2, 0, 1], jnp.int32)}
  b = batch_fn(task, jax.random.key(0), data)
  flat = np.asarray(b["x"]).reshape(-1).astype(int)
  assert np.all(flat // 6 == 2)                     # only model 2's images
  cls = (flat % 6) // 2                              # class-major rows: class = pos // P
  np.testing.assert_array_equal(np.asarray(b["y"]), np.array([2, 0, 1])[cls])


def test_the_inverted_images_do_not_depend_on_which_method_asks(image_zoo, tmp_path):
  """zoo_distill and inversion_maml share workdir/fusion/inversion: its images must be a
  function of the seed, the zoo and config.inversion alone (the earlier inversion_maml key)."""
  from dfl2l_jax import pipeline  # pylint: disable=g-import-not-at-top
  bench, zoo, stats = image_zoo
  config = _config()
  key = jax.random.fold_in(pipeline.method_key(config, "inversion_maml"), 0)
  np.testing.assert_array_equal(jax.random.key_data(inverted_images.init_key(config.seed)),
                                jax.random.key_data(key))
  a = inverted_images.invert_zoo(_ctx(bench, zoo, stats, config, tmp_path / "a"))
  b = inverted_images.invert_zoo(dataclasses.replace(
      _ctx(bench, zoo, stats, config, tmp_path / "b", method=methods.METHODS["zoo_distill"]),
      key=jax.random.key(99)))
  np.testing.assert_array_equal(a, b)


def test_teacher_logits_are_each_model_in_evaluation_mode(image_zoo):
  bench, zoo, stats = image_zoo
  pool = jax.random.normal(jax.random.key(7), (10, 16, 16, 3))
  got = zd.teacher_logits(bench.model, zoo, stats, pool, block=4)    # 3 blocks, last short
  assert got.shape == (3, 10, 3)
  for m in range(3):
    want = bench.model.apply({"params": jax.tree.map(lambda x: x[m], zoo),
                              "batch_stats": jax.tree.map(lambda x: x[m], stats)},
                             pool, train=False)
    np.testing.assert_allclose(got[m], want, rtol=1e-5, atol=1e-5)


def test_image_distillation_ignores_a_shift_of_the_logits_and_learns(image_zoo):
  bench, zoo, stats = image_zoo
  pool = inversion.init_images(jax.random.key(8), 3, 3, HP, (16, 16, 3))
  pool = pool.reshape((-1, 16, 16, 3))
  targets = zd.teacher_logits(bench.model, zoo, stats, pool)
  body, heads, _ = zd.split_heads(zoo)
  body_net = bench.model.clone(head=False)
  features = lambda b, x: models.apply_train_mode(body_net, b, x)
  loss = zd.image_distill_loss(features, body, heads, pool, targets)
  shift = jax.random.normal(jax.random.key(9), (3, pool.shape[0], 1)) * 5
  np.testing.assert_allclose(zd.image_distill_loss(features, body, heads, pool, targets + shift),
                             loss, rtol=1e-4)
  chunk, optimizer = zd.make_image_chunk(bench.model, 8, 1e-2)
  state = zd.DistillState(body, heads, optimizer.init((body, heads)), jnp.int32(0))
  state, hist = chunk(state, pool, targets, jax.random.key(10), length=60)
  losses = np.asarray(hist["loss"])
  assert int(state.step) == 60 and losses[-10:].mean() < 0.5 * losses[:10].mean(), losses


def test_zoo_distill_on_images_is_data_free_and_resumes(image_zoo, tmp_path):
  bench, zoo, stats = image_zoo
  config = _config(zoo_distill__steps=6, zoo_distill__chunk_steps=3, zoo_distill__batch_size=8)
  ctx = _ctx(bench, zoo, stats, config, tmp_path, method=methods.METHODS["zoo_distill"])
  theta = methods.METHODS["zoo_distill"].make_init(ctx)   # reading the data would raise
  template = bench.init_params(jax.random.key(0))
  assert jax.tree.structure(theta) == jax.tree.structure(template)
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(theta))
  assert (tmp_path / "fusion" / "inversion").is_dir() and (tmp_path / "inversion_grid.png").exists()
  again = methods.METHODS["zoo_distill"].make_init(ctx)   # both phases from their checkpoints
  for a, b in zip(jax.tree.leaves(theta), jax.tree.leaves(again)):
    np.testing.assert_array_equal(a, b)
  with pytest.raises(ConfigError, match="BatchNorm population statistics"):
    methods.METHODS["zoo_distill"].make_init(dataclasses.replace(ctx, zoo_bn_stats=None,
                                                                 workdir=None))
  with pytest.raises(ConfigError, match="zoo_distill.lr"):
    methods.METHODS["zoo_distill"].validate(_config(zoo_distill__lr=0.0))


def test_a_screened_distillation_learns_from_the_kept_models_alone(image_zoo, tmp_path,
                                                                   monkeypatch):
  from dfl2l_jax.methods import zoo_features as zf  # pylint: disable=g-import-not-at-top
  bench, zoo, stats = image_zoo
  config = _config(zoo_distill__steps=2, zoo_distill__chunk_steps=2, zoo_distill__batch_size=8,
                   zoo_distill__screen="untrained")
  ctx = _ctx(bench, zoo, stats, config, tmp_path, method=methods.METHODS["zoo_distill"])
  record = {"summary": "kept 2 of 3", "kept": [0, 2], "dropped": [1]}
  monkeypatch.setattr(zf, "screen", lambda c, net, state, option: (np.array([0, 2]), record))
  seen, real = [], zd.teacher_logits
  monkeypatch.setattr(zd, "teacher_logits", lambda model, z, s, pool: seen.append(
      (z, s, pool)) or real(model, z, s, pool))
  methods.METHODS["zoo_distill"].make_init(ctx)
  assert ctx.notes["screen"] is record
  (teachers, teacher_stats, pool), = seen
  images = inverted_images.invert_zoo(ctx)   # every model's, from the shared checkpoint
  np.testing.assert_array_equal(pool, images[np.array([0, 2])].reshape(pool.shape))
  for got, want in ((teachers, zoo), (teacher_stats, stats)):
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
      np.testing.assert_array_equal(a, b[np.array([0, 2])])
  with open(tmp_path / "fusion" / "zoo_distill" / "spec.json") as f:
    assert json.load(f)["screened_teachers"] == [0, 2]   # fewer teachers: another loop
  with pytest.raises(ConfigError, match="zoo_distill.screen"):
    methods.METHODS["zoo_distill"].validate(_config(zoo_distill__screen="often"))


@pytest.mark.parametrize("arch", [
    {"name": "conv4", "filters": 8, "ways": 3},
    {"name": "resnet10", "ways": 3, "widths": [4, 8, 16, 32]},
    {"name": "resnet12", "ways": 3, "widths": [4, 8, 8, 16]}], ids=lambda a: a["name"])
def test_every_batch_norm_input_of_any_architecture_is_matched_to_its_own_statistics(arch):
  """The statistics a batch leaves in train mode (momentum 0: the batch's own) are what
  evaluation mode then normalises with, so every BatchNorm input is the same and matches
  them: the matching loss is 0, and positive against another batch's statistics."""
  from dfl2l_jax.zoo import store  # pylint: disable=g-import-not-at-top
  net = store.network(arch)
  params = jax.tree.map(lambda x: x[0], helpers.random_networks(arch, 1, 0, False, 16)[0])
  x, other = jax.random.normal(jax.random.key(0), (2, 8, 16, 16, 3))
  own = lambda x: net.apply({"params": params}, x, train=True,
                            mutable=["batch_stats"])[1]["batch_stats"]
  logits, h = inversion.forward_with_bn_inputs(net, params, own(x), x)
  assert len(h) == len(jax.tree.leaves(own(x))) // 2 and len(h) >= 4  # mean, var per layer
  np.testing.assert_allclose(logits, net.apply({"params": params}, x, train=True,
                                               mutable=["batch_stats"])[0], atol=1e-4)
  assert float(inversion.bn_matching_loss(h, own(x))) < 1e-3
  assert float(inversion.bn_matching_loss(h, own(other + 1.0))) > 0.1
