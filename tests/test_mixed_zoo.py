"""A zoo of several architectures (Conv4s and ResNets): stored, imported and run.

The manifest gives a model its own architecture; the zoo is read as one stacked group per
architecture; zoo_features reads every group and computes what a loop over the models
computes; every other method runs on one Conv4 group and its rows say which; what cannot
be done is refused in one line.
"""

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dfl2l_jax import adaptation
from dfl2l_jax import models
from dfl2l_jax import pipeline
from dfl2l_jax.errors import ConfigError, NotApplicable, ZooError
from dfl2l_jax.methods import zoo_features as zf
from dfl2l_jax.zoo import importer
from dfl2l_jax.zoo import source
from dfl2l_jax.zoo import store
from tests import helpers
from tests import test_image_pipeline as fake
from tests import test_imported_zoo_pipeline as imported_tests

SIZE, WAYS = 32, 2
CONV4 = {"name": "conv4", "filters": 8, "ways": WAYS}
RESNET = {"name": "resnet10", "ways": WAYS, "widths": [4, 8, 16, 32]}
RESNET12 = {"name": "resnet12", "ways": WAYS, "widths": [4, 8, 8, 16]}
CLASSES = [[0, 1], [1, 2], [2, 3], [3, 0], [0, 2], [1, 3], [2, 0]]


def _random_group(arch, indices, seed, running):
  """ZooGroup of random networks of `arch` (helpers.random_networks) at `indices`."""
  params, stats = helpers.random_networks(arch, len(indices), seed, running, SIZE)
  return store.ZooGroup(store.group_name(arch), arch, np.asarray(indices), params, stats)


def _manifest(archs, batch_norm):
  return {"format": store.FORMAT, "version": store.VERSION, "architecture": CONV4,
          "image_size": SIZE, "channel_order": "RGB",
          "normalization": {"mean": [0.5] * 3, "std": [0.25] * 3},
          "batch_norm": batch_norm,
          "class_names": fake.CLASSES["train"] + fake.CLASSES["test"],
          "models": [dict({"classes": c, "accuracy": None, "source": None},
                          **({"architecture": a} if a != CONV4 else {}))
                     for c, a in zip(CLASSES, archs)]}


def mixed_zoo(directory, batch_norm="running", archs=None):
  """A zoo folder of 4 Conv4-8 and 3 narrow ResNet-10 models, interleaved (or `archs`)."""
  archs = archs or [CONV4, RESNET, CONV4, CONV4, RESNET, CONV4, RESNET]
  distinct = []
  for a in archs:
    if a not in distinct:
      distinct.append(a)
  groups = [_random_group(a, [i for i, b in enumerate(archs) if b == a], seed,
                          batch_norm == "running") for seed, a in enumerate(distinct)]
  store.write(directory, _manifest(archs, batch_norm), groups=groups)
  return directory


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  return imported_tests.data.__wrapped__(tmp_path_factory)


def test_a_mixed_zoo_is_read_as_one_stacked_group_per_architecture(tmp_path):
  zoo = store.load(mixed_zoo(str(tmp_path / "zoo")))
  assert [g.name for g in zoo.groups] == ["conv4-8", "resnet10-4-8-16-32"]
  assert [list(g.indices) for g in zoo.groups] == [[0, 2, 3, 5], [1, 4, 6]]
  assert zoo.mixed and zoo.num_models == 7
  assert zoo.groups[1].params["Block_3"]["C1"]["kernel"].shape == (3, 3, 3, 16, 32)
  assert zoo.groups[1].bn_stats["Block_0"]["BN1"]["var"].shape == (3, 4)
  with pytest.raises(ZooError, match="2 architectures .conv4-8, resnet10-4-8-16-32."):
    zoo.params  # pylint: disable=pointless-statement
  # Each model file holds its own architecture's tensors, written in manifest order.
  manifest = store.read_manifest(str(tmp_path / "zoo"))
  resnet_file = os.path.join(tmp_path, "zoo", manifest["models"][4]["file"])
  flat = store.read_model(resnet_file, store.expected_shapes(manifest, RESNET))
  np.testing.assert_array_equal(flat["params/Dense_0/kernel"],
                                zoo.groups[1].params["Dense_0"]["kernel"][1])


def test_importing_a_users_mixed_safetensors_folder_keeps_every_model(tmp_path):
  zoo_dir = mixed_zoo(str(tmp_path / "zoo"), archs=[CONV4, RESNET12, CONV4, RESNET12, CONV4,
                                                    CONV4, RESNET12])
  user = json.loads(open(os.path.join(zoo_dir, store.MANIFEST)).read())
  for m in user["models"]:
    m.pop("sha256")  # a user's manifest need not give hashes
  with open(os.path.join(zoo_dir, store.MANIFEST), "w") as f:
    json.dump(user, f)
  importer.import_zoo("safetensors", zoo_dir, str(tmp_path / "imported"))
  b = store.load(str(tmp_path / "imported"))
  assert [g.name for g in b.groups] == ["conv4-8", "resnet12-4-8-8-16"]
  assert list(b.groups[1].indices) == [1, 3, 6]
  original = store.read_model(os.path.join(zoo_dir, user["models"][3]["file"]),
                              store.expected_shapes(user, RESNET12))
  np.testing.assert_array_equal(original["params/Block_2/conv3/kernel"],
                                b.groups[1].params["Block_2"]["conv3"]["kernel"][1])


def test_bad_mixed_manifests_and_files_are_refused_in_one_line(tmp_path):
  manifest = _manifest([CONV4, dict(RESNET, ways=3)] + [CONV4] * 5, "batch")
  for i, m in enumerate(manifest["models"]):
    m["file"], m["sha256"] = store.model_file_name(i), "0" * 64
  with pytest.raises(ZooError, match=r"models\[1\]: a 3-way model in a 2-way zoo"):
    store.validate_manifest(manifest)
  manifest["models"][1]["architecture"] = {"name": "resnet34", "ways": 2}
  with pytest.raises(ZooError, match=r"models\[1\] architecture: name must be one of"):
    store.validate_manifest(manifest)
  manifest["models"][1]["architecture"] = dict(RESNET, widths=[4, 4, 16, 32])
  with pytest.raises(ZooError, match="consecutive stages"):
    store.validate_manifest(manifest)
  # A ResNet's file whose weights do not fit the architecture the manifest names.
  zoo_dir = mixed_zoo(str(tmp_path / "zoo"), batch_norm="batch")
  manifest = store.read_manifest(zoo_dir)
  manifest["models"][1]["architecture"] = dict(RESNET, widths=[4, 8, 16, 64])
  with open(os.path.join(zoo_dir, store.MANIFEST), "w") as f:
    json.dump(manifest, f)
  with pytest.raises(ZooError, match=r"model_0001.safetensors: params/Block_3/BN1/bias has "
                                     r"shape \(32,\), expected \(64,\)"):
    store.load(zoo_dir)


def _config(data, zoo, methods="va,zoo_features", group=""):
  c = imported_tests._config(data, zoo, methods=methods)  # pylint: disable=protected-access
  with c.unlocked():
    c.zoo.group = group
  return c


def test_zoo_features_reads_every_group_as_a_loop_over_the_models_would(data, tmp_path):
  zoo_dir = mixed_zoo(str(tmp_path / "zoo"))
  config = _config(data, zoo_dir, methods="zoo_features")
  benchmark = pipeline.prepare(config)
  assert config.zoo.num_models == 4 and config.model.filters == 8  # the Conv4 group
  loaded = benchmark.imported_zoo
  main = source.main_group(loaded)
  ctx = pipeline.method_context(pipeline.RunContext.start(config, benchmark), zf.ZOO_FEATURES,
                                jax.tree.map(jnp.asarray, main.params),
                                (np.arange(3), np.arange(3, 4)), running_stats=main.bn_stats)
  learner = zf.zoo_features(ctx)
  assert ctx.notes["zoo_models"] == "all 7: conv4-8 x4, resnet10-4-8-16-32 x3"
  assert learner.cost(4, 6)["networks"] == 7
  episodes = benchmark.make_episodes(2)
  support, query = benchmark.gather_episode(jax.tree.map(lambda x: x[0], episodes),
                                            benchmark.data)
  got = learner.score(learner.state, support, query)
  # The same by hand: model after model, in manifest order, unit-length features.
  feats_s, feats_q = [], []
  for g in loaded.groups:
    net = store.network(g.architecture, head=False)
    apply = jax.jit(net.apply, static_argnames="train")  # op by op: 200 small compilations
    for row in range(len(g.indices)):
      variables = {"params": jax.tree.map(lambda x: np.asarray(x)[row], g.params),
                   "batch_stats": jax.tree.map(lambda x: np.asarray(x)[row], g.bn_stats)}
      for x, out in ((support["x"], feats_s), (query["x"], feats_q)):
        f = np.asarray(apply(variables, x, train=False), np.float64)
        out.append(f / (np.linalg.norm(f, axis=1, keepdims=True) + 1e-8))
  f_s, f_q = np.concatenate(feats_s, 1), np.concatenate(feats_q, 1)
  y_s = np.asarray(support["y"])
  centroids = np.stack([f_s[y_s == c].mean(0) for c in range(WAYS)])
  pred = np.argmin(((f_q[:, None] - centroids[None]) ** 2).sum(-1), 1)
  want = 100.0 * np.mean(pred == np.asarray(query["y"]))
  assert float(got) == pytest.approx(want, abs=1e-4)


def test_weighed_features_add_the_other_groups_squared_distances_times_the_weight():
  rng = np.random.default_rng(0)
  f0, f1 = jnp.asarray(rng.normal(size=(2, 3))), jnp.asarray(rng.normal(size=(2, 4)))
  for w in (0.0, 0.3, 1.0, 7.0):
    f = zf.weighed([f0, f1], w)
    assert f.shape == (2, 7)
    np.testing.assert_allclose(jnp.sum((f[0] - f[1]) ** 2), jnp.sum((f0[0] - f0[1]) ** 2)
                               + w * jnp.sum((f1[0] - f1[1]) ** 2), rtol=1e-5)


def _mixed_learner(data, zoo_dir, **settings):
  """(learner, notes, benchmark): zoo_features on the mixed zoo at 2 shots, with
  zoo_features.KEY=VALUE settings."""
  config = helpers.override(_config(data, zoo_dir, methods="zoo_features"), shots=(2,),
                            **{f"zoo_features__{k}": v for k, v in settings.items()})
  benchmark = pipeline.prepare(config)
  main = source.main_group(benchmark.imported_zoo)
  ctx = pipeline.method_context(pipeline.RunContext.start(config, benchmark), zf.ZOO_FEATURES,
                                jax.tree.map(jnp.asarray, main.params),
                                (np.arange(3), np.arange(3, 4)), running_stats=main.bn_stats)
  return zf.zoo_features(ctx), ctx.notes, benchmark


def _centroid_by_hand(f_s, y_s, f_q, w):
  """Nearest-centroid labels, the squared distance the first group's plus w times the
  others' (numpy)."""
  d = 0.0
  for i, (a, b) in enumerate(zip(f_s, f_q)):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    cent = np.stack([a[y_s == c].mean(0) for c in range(WAYS)])
    d = d + (1.0 if i == 0 else w) * ((b[:, None] - cent[None]) ** 2).sum(-1)
  return np.argmin(d, 1)


def test_group_weights_weigh_the_other_architectures_chosen_on_meta_validation(data, tmp_path):
  zoo_dir = mixed_zoo(str(tmp_path / "zoo"))
  # 0: the run's group alone, and its rows say so.
  alone, notes, benchmark = _mixed_learner(data, zoo_dir, group_weight=0.0)
  assert notes["zoo_models"] == "conv4-8: 4 of 7 models" and notes["group_weight"] == "2:0"
  assert alone.cost(4, 6)["networks"] == 4 and "others" not in alone.state
  episodes = benchmark.make_episodes(2)
  support, query = benchmark.gather_episode(jax.tree.map(lambda x: x[0], episodes),
                                            benchmark.data)
  nets = tuple(store.network(g.architecture, head=False) for g in benchmark.imported_zoo.groups)
  whole, _, _ = _mixed_learner(data, zoo_dir)
  f_s, f_q = zf.group_features(nets, whole.state, support, query)
  y_s, y_q = np.asarray(support["y"]), np.asarray(query["y"])
  for w, learner in ((0.0, alone), (2.5, _mixed_learner(data, zoo_dir, group_weight=2.5)[0])):
    want = 100.0 * np.mean(_centroid_by_hand(f_s, y_s, f_q, w) == y_q)
    assert float(learner.score(learner.state, support, query)) == pytest.approx(want, abs=1e-4)
  # A grid: the weight of the highest mean accuracy on meta-validation episodes (the one
  # nearest 1 first on a tie), never the test tasks.
  grid = (0.0, 1.0, 2.5)
  chosen, notes, benchmark = _mixed_learner(data, zoo_dir, group_weight_grid=grid,
                                            image_val_tasks=4)
  val, val_data, gather = benchmark.validation_episodes(2, 4)
  means = {w: adaptation.score_learner(_mixed_learner(data, zoo_dir, group_weight=w)[0], val,
                                       batch_size=4, gather_fn=gather, data=val_data).mean()
           for w in (1.0, 2.5, 0.0)}
  best = max(means, key=means.get)  # the first of the highest, in the order 1, 2.5, 0
  assert notes["group_weight"] == f"2:{best:g}"
  assert float(chosen.score(chosen.state, support, query)) == pytest.approx(
      100.0 * np.mean(_centroid_by_hand(f_s, y_s, f_q, best) == y_q), abs=1e-4)
  # A zoo of one architecture has nothing to weigh.
  conv4_only = mixed_zoo(str(tmp_path / "conv4"), archs=[CONV4] * 7)
  with pytest.raises(NotApplicable, match="this zoo has one architecture"):
    _mixed_learner(data, conv4_only, group_weight=0.5)


def test_the_methods_that_invert_use_every_group_each_by_its_own_network(data, tmp_path,
                                                                        monkeypatch):
  from dfl2l_jax import inversion  # pylint: disable=g-import-not-at-top
  from dfl2l_jax.methods import inverted_images  # pylint: disable=g-import-not-at-top
  from dfl2l_jax.methods import zoo_distill  # pylint: disable=g-import-not-at-top
  zoo_dir = mixed_zoo(str(tmp_path / "zoo"))
  config = helpers.override(_config(data, zoo_dir, methods="zoo_distill"), shots=(2,),
                            zoo_distill__steps=2, zoo_distill__chunk_steps=2)
  teachers, real = [], zoo_distill.teacher_logits
  monkeypatch.setattr(zoo_distill, "teacher_logits", lambda net, zoo, stats, pool: (
      teachers.append((type(net).__name__, inversion.zoo_size(zoo), pool.shape[0]))
      or real(net, zoo, stats, pool)))
  workdir = str(tmp_path / "w")
  results = pipeline.run(config, workdir, "offline")
  for row in results["rows"]:
    assert row["notes"]["zoo_models"] == "all 7: conv4-8 x4, resnet10-4-8-16-32 x3"
    assert row["mean"] is not None
  pool = 7 * WAYS * int(config.inversion.images_per_class)  # every model's images
  assert teachers == [("Conv4", 4, pool), ("ResNet", 3, pool)]
  # The zoo's quality: the run's group, and each other group by the same measure.
  other = results["zoo_quality"]["other_groups"]
  assert list(other) == ["resnet10-4-8-16-32"] and other["resnet10-4-8-16-32"]["indices"] == [
      1, 4, 6]
  assert len(other["resnet10-4-8-16-32"]["per_model"]) == 3
  with open(os.path.join(workdir, "results.md")) as f:
    assert "Its other groups, the same measure: resnet10-4-8-16-32 (3 models) mean" in f.read()
  with open(os.path.join(workdir, "fusion", "inversion", "summary.json")) as f:
    assert len(json.load(f)["own_accuracy_per_model"]) == 7
  # The ResNet group's images are its own inversion, by its network and statistics, as if
  # it were inverted alone (its loop checkpointed apart).
  assert os.path.isdir(os.path.join(workdir, "fusion", "inversion_resnet10-4-8-16-32"))
  benchmark = pipeline.prepare(config)
  main = source.main_group(benchmark.imported_zoo)
  # group_quality_fn measures a group as the run measures its own: on the run's group it
  # gives the run's per-model quality.
  assert benchmark.group_quality_fn(main) == pytest.approx(
      results["zoo_quality"]["per_model"], abs=1e-6)
  ctx = pipeline.method_context(pipeline.RunContext.start(config, benchmark),
                                zoo_distill.ZOO_DISTILL, jax.tree.map(jnp.asarray, main.params),
                                (np.arange(3), np.arange(3, 4)), bn_stats=main.bn_stats)
  images = inverted_images.invert_zoo(ctx)
  resnets = source.other_groups(benchmark.imported_zoo, config)[0]
  hp = inverted_images.hparams(config)
  net = store.network(resnets.architecture)  # inverted as the run does (one model per call)
  chunk, optimizer = inversion.make_chunk(net, WAYS, hp, inverted_images.member_loop(net))
  start = inversion.init_images(jax.random.fold_in(inverted_images.init_key(config.seed), 1),
                                3, WAYS, hp, images.shape[2:])
  alone, _ = chunk(inversion.InversionState(start, optimizer.init(start), jnp.int32(0)),
                   resnets.params, resnets.bn_stats, 4 + jnp.arange(3),
                   jax.random.fold_in(jax.random.key(config.seed), 0x1A7E),
                   length=int(config.inversion.steps))
  np.testing.assert_allclose(images[4:], alone.images, rtol=1e-5, atol=1e-6)
  # A group without BatchNorm statistics cannot be inverted: one line naming it.
  batch = mixed_zoo(str(tmp_path / "batch"), batch_norm="batch")
  benchmark = pipeline.prepare(_config(data, batch, methods="zoo_distill"))
  with pytest.raises(ConfigError, match="group resnet10-4-8-16-32 carries none"):
    inverted_images.invert_zoo(dataclasses.replace(ctx, benchmark=benchmark))


def test_a_batch_zoos_other_groups_get_population_statistics_of_their_own_classes(data,
                                                                                 tmp_path):
  from dfl2l_jax.data import load  # pylint: disable=g-import-not-at-top
  from dfl2l_jax.methods import zoo_distill  # pylint: disable=g-import-not-at-top
  from dfl2l_jax.tasks import fewshot  # pylint: disable=g-import-not-at-top
  zoo_dir = mixed_zoo(str(tmp_path / "zoo"), batch_norm="batch")
  config = _config(data, zoo_dir, methods="zoo_distill")
  benchmark = pipeline.prepare(config)
  run = pipeline.RunContext.start(config, benchmark)
  assert pipeline.group_bn_stats(run, [zf.ZOO_FEATURES]) is None  # no method needs them
  stats = pipeline.group_bn_stats(run, [zoo_distill.ZOO_DISTILL])
  resnets = source.other_groups(benchmark.imported_zoo, config)[0]
  assert list(stats) == [resnets.name] and resnets.bn_stats is None
  # Each ResNet's statistics are those of one batch of every training image of its own
  # classes (fewer than zoo.batch_size: one batch) through its own network in train mode.
  manifest = benchmark.imported_zoo.manifest
  train_names = benchmark.spec["train_classes"]
  classes = [[train_names.index(manifest["class_names"][c]) for c in manifest["models"][i]
              ["classes"]] for i in resnets.indices]
  _, labels, _ = load.load_split(config.data.dataset, data_dir=config.data.data_dir,
                                 manual_dir=config.data.manual_dir, strict=False, split="train")
  table = fewshot.class_table(np.asarray(labels), len(train_names))
  images = benchmark.data["train_images"]
  tasks = fewshot.sample_zoo_tasks(config.seed, 3, WAYS, table, classes)
  assert tasks["train_idx"][0].size < config.zoo.batch_size
  net = store.network(RESNET)
  for j in range(3):
    x = fewshot.normalise(images[tasks["train_idx"][j].reshape(-1)],
                          benchmark.data["mean"], benchmark.data["std"])
    _, want = net.apply({"params": jax.tree.map(lambda p: p[j], resnets.params)}, x,
                        train=True, mutable=["batch_stats"])
    got = jax.tree.map(lambda s: s[j], stats[resnets.name])
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
                 got, want["batch_stats"])
  # With them, the methods that invert run on the batch zoo, every group a teacher; each
  # row names the models it used.
  config = helpers.override(_config(data, zoo_dir, methods="va,zoo_features,zoo_distill"),
                            shots=(2,), zoo_distill__steps=2, zoo_distill__chunk_steps=2)
  workdir = str(tmp_path / "w")
  results = pipeline.run(config, workdir, "offline")
  rows = {(r["method"], r["shots"]): r for r in results["rows"]}
  assert all(r["mean"] is not None for r in rows.values())
  assert rows[("va", 2)]["notes"]["zoo_models"] == "conv4-8: 4 of 7 models"
  for method in ("zoo_features", "zoo_distill"):
    assert rows[(method, 2)]["notes"]["zoo_models"] == "all 7: conv4-8 x4, resnet10-4-8-16-32 x3"
  assert rows[("zoo_features", 2)]["cost"]["networks"] == 7
  assert os.path.isdir(os.path.join(workdir, "fusion", "inversion_resnet10-4-8-16-32"))
  assert results["zoo_source"]["groups"] == {"conv4-8": 4, "resnet10-4-8-16-32": 3}
  assert results["split"] == {"n_s": 3, "n_q": 1}  # the Conv4 group's 4 models
  with open(os.path.join(workdir, "results.md")) as f:
    text = f.read()
  assert "zoo_models=conv4-8: 4 of 7 models" in text
  assert ("Zoo: imported (7 models: conv4-8 x4, resnet10-4-8-16-32 x3; the run's network: "
          "conv4-8, BatchNorm batch") in text
  # The zoo's quality is its Conv4 group's, and says so.
  assert results["zoo_quality"]["models"] == "conv4-8: 4 of 7 models"
  assert len(results["zoo_quality"]["per_model"]) == 4
  assert "Zoo quality (accuracy of each model of conv4-8: 4 of 7 models on the" in text


# The batch zoo's report (the reference-normalised path) runs with the slow tests.
@pytest.mark.parametrize("batch_norm", ["running", pytest.param("batch", marks=pytest.mark.slow)])
def test_the_group_report_scores_each_group_alone_and_together(data, tmp_path, batch_norm):
  from scripts import group_report  # pylint: disable=g-import-not-at-top
  zoo_dir = mixed_zoo(str(tmp_path / "zoo"), batch_norm=batch_norm)
  config = _config(data, zoo_dir)
  benchmark = pipeline.prepare(config)
  groups = benchmark.imported_zoo.groups
  table = group_report.scores(benchmark, groups, 2, 3)
  assert set(table) == {"conv4-8", "resnet10-4-8-16-32", "all"}
  assert table["conv4-8"][0].shape == (3, 4) and table["resnet10-4-8-16-32"][0].shape == (3, 3)
  # "together" for the run's group is zoo_features with that group alone, and "all" with
  # every model equal, on the same meta-validation episodes.
  val, val_data, gather = benchmark.validation_episodes(2, 3)
  for name, weight in (("conv4-8", 0.0), ("all", 1.0)):
    learner = _mixed_learner(data, zoo_dir, group_weight=weight)[0]
    want = adaptation.score_learner(learner, val, batch_size=4, gather_fn=gather, data=val_data)
    got = table[name][1] if name == "conv4-8" else table[name]
    np.testing.assert_allclose(got[:, 0], want, atol=1e-4)


def test_groups_that_cannot_be_the_runs_zoo_are_refused(data, tmp_path):
  zoo_dir = mixed_zoo(str(tmp_path / "zoo"))
  with pytest.raises(ConfigError, match="is resnet10-4-8-16-32, but .* a Conv4 here; choose "
                                        "a Conv4 group: config.zoo.group='conv4-8'"):
    pipeline.prepare(_config(data, zoo_dir, group="resnet10-4-8-16-32"))
  with pytest.raises(ConfigError, match="holds the groups conv4-8, resnet10-4-8-16-32"):
    pipeline.prepare(_config(data, zoo_dir, group="conv4-16"))
  # The largest group is a ResNet group: said, with the option that fixes it.
  archs = [RESNET, RESNET, CONV4, RESNET, CONV4, RESNET, CONV4]
  resnets = mixed_zoo(str(tmp_path / "resnets"), archs=archs)
  with pytest.raises(ConfigError, match="its largest group is resnet10"):
    pipeline.prepare(_config(data, resnets))
  pipeline.prepare(_config(data, resnets, group="conv4-8"))
  # A Conv4 group of one model cannot be split into meta-training and validation models.
  lonely = mixed_zoo(str(tmp_path / "lonely"), archs=[RESNET] * 6 + [CONV4])
  with pytest.raises(ConfigError, match="conv4-8 has 1 model"):
    pipeline.prepare(_config(data, lonely, group="conv4-8"))
  # A group without a zoo to choose it from.
  with pytest.raises(ConfigError, match="config.zoo.source names none"):
    pipeline.prepare(_config(data, "", group="conv4-8"))


def test_a_resnet_features_are_its_pooled_last_stage():
  net = models.resnet("resnet10", WAYS, (4, 8, 16, 32), head=False)
  x = jnp.ones((2, SIZE, SIZE, 3))
  variables = _random_group(RESNET, [0], 0, running=True)
  variables = {"params": jax.tree.map(lambda v: v[0], variables.params),
               "batch_stats": jax.tree.map(lambda v: v[0], variables.bn_stats)}
  assert net.apply(variables, x, train=False).shape == (2, 32)


@pytest.mark.slow
def test_our_trainer_produces_a_mixed_zoo_with_the_tasks_of_a_one_architecture_zoo(
    data, tmp_path):
  config = imported_tests._config(data)  # pylint: disable=protected-access
  with config.unlocked():
    config.zoo.architectures = "conv4-8:3,resnet10-4-8-16-32:2"
    config.zoo.steps = 4
    config.zoo.chunk_steps = 2
  workdir = str(tmp_path / "w")
  with pytest.raises(ConfigError, match="trained by launch.pretrain"):
    pipeline.run(config, workdir, "offline")
  folder, quality = pipeline.pretrain(config, workdir)
  manifest = store.read_manifest(folder)
  assert [store.group_name(store.model_architecture(manifest, i)) for i in range(5)] == [
      "conv4-8"] * 3 + ["resnet10-4-8-16-32"] * 2
  assert len(quality["per_model"]) == 5
  assert manifest["producer"]["zoo"]["architectures"] == config.zoo.architectures
  # Model m has the classes of model m of a Conv4 zoo of the same size and seed.
  from dfl2l_jax.tasks import fewshot  # pylint: disable=g-import-not-at-top
  plain = fewshot.make_benchmark(config)  # the config's Conv4 zoo of 5 models
  assert [m["classes"] for m in manifest["models"]] == np.asarray(
      plain.zoo_tasks["classes"]).tolist()
  # Run on it: zoo_features reads all 5, VA the 3 Conv4s.
  run = imported_tests._config(data, folder)  # pylint: disable=protected-access
  results = pipeline.run(run, str(tmp_path / "r"), "offline")
  notes = {r["method"]: r["notes"]["zoo_models"] for r in results["rows"]}
  assert notes["zoo_features"].startswith("all 5")
  assert notes["va"].startswith("conv4-8: 3 of 5")


@pytest.mark.parametrize("bad, match", [
    ("conv4-8:5", "one architecture; set config.model.filters"),
    ("conv4-8:2,resnet10:2", "add up to 4, and config.zoo.num_models is 5"),
    ("conv4-8:3,vgg:2", "'vgg:2' is not NAME:COUNT"),
    ("conv4-8:0,resnet10:5", "count of conv4-8 must be a positive integer"),
    ("conv4-8:3,conv4-8:2", "conv4-8 is named twice"),
])
def test_bad_architectures_are_refused_in_one_line(bad, match):
  from dfl2l_jax import config_lib  # pylint: disable=g-import-not-at-top
  with pytest.raises(ConfigError, match=match) as e:
    config_lib.validate(helpers.fewshot_config(zoo__num_models=5, zoo__architectures=bad))
  assert "\n" not in str(e.value)
  with pytest.raises(ConfigError, match="set one of them"):
    config_lib.validate(helpers.fewshot_config(
        zoo__num_models=5, zoo__architectures="conv4-8:3,resnet10:2", zoo__source="zoos/x"))


def test_a_resnet_groups_members_train_one_after_another_on_cpu_where_conv4s_are_mapped():
  from dfl2l_jax.tasks import fewshot  # pylint: disable=g-import-not-at-top
  config = helpers.fewshot_config()  # member_loop "auto"; this test runs on the CPU
  conv4 = fewshot.make_benchmark(config, helpers.synthetic_image_loader())
  resnet = fewshot.make_benchmark(config, helpers.synthetic_image_loader(),
                                  network=store.network(dict(RESNET, ways=3)))
  assert (conv4.member_loop, resnet.member_loop) == ("map", "loop")
  pinned = fewshot.make_benchmark(helpers.fewshot_config(zoo__member_loop="map"),
                                  helpers.synthetic_image_loader(),
                                  network=store.network(dict(RESNET, ways=3)))
  assert pinned.member_loop == "map"  # a choice in the config is kept
  # Their inversion: the same, one model per compiled call for the ResNet on CPU.
  from dfl2l_jax.methods import inverted_images  # pylint: disable=g-import-not-at-top
  assert inverted_images.member_loop(conv4.model) == "vmap"
  assert inverted_images.member_loop(store.network(dict(RESNET, ways=3))) == "loop"
