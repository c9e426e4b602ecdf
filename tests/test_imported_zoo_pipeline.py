"""Runs on an imported zoo (config.zoo.source), on a tiny fake Mini-ImageNet made here.

A run on the zoo folder our trainer wrote equals the run that trained it; a zoo of
PyTorch-style teachers (running BatchNorm statistics) runs every kind of method; a changed
zoo, a meta-test class in the zoo and a class the dataset lacks are refused; the
initialisation exports back to the field's layout.
"""

import os
import shutil

import numpy as np
import pytest

from dfl2l_jax import inits
from dfl2l_jax import pipeline
from dfl2l_jax.errors import CheckpointError, ConfigError, ZooError
from dfl2l_jax.zoo import exporter
from dfl2l_jax.zoo import importer
from dfl2l_jax.zoo import layouts
from dfl2l_jax.zoo import pth
from dfl2l_jax.zoo import store
from tests import test_image_pipeline as fake
from tests import test_zoo_import as io_tests


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  root = tmp_path_factory.mktemp("data")
  fake.make_fake_mini_imagenet(str(root / "manual"))
  return str(root / "manual"), str(root / "tfds")


def _config(data, source="", methods="va,zoo_features"):
  c = fake._config(*data, methods=methods)  # pylint: disable=protected-access
  with c.unlocked():
    c.zoo.source = source
  return c


def _per_task(results):
  return {(r["method"], r["shots"]): r["per_task"] for r in results["rows"]}


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("trained") / "w")
  return workdir, pipeline.run(_config(data), workdir, "offline")


def test_a_run_on_the_trained_zoo_folder_equals_the_training_run(data, trained, tmp_path):
  workdir, first = trained
  folder = os.path.join(workdir, "zoo_models")
  manifest = store.read_manifest(folder)
  assert manifest["batch_norm"] == "batch" and len(manifest["models"]) == 5
  assert [m["accuracy"] for m in manifest["models"]] == first["zoo_quality"]["per_model"]
  second = pipeline.run(_config(data, folder), str(tmp_path / "b"), "offline")
  assert _per_task(second) == _per_task(first)
  assert second["zoo_source"]["digest"] == store.load(folder).digest
  a = inits.load(workdir, "va")
  b = inits.load(str(tmp_path / "b"), "va")
  for x, y in zip(_leaves(a.params), _leaves(b.params)):
    assert np.array_equal(x, y)
  with open(tmp_path / "b" / "results.md") as f:
    assert "Zoo: imported (5 conv4 models" in f.read()


def _leaves(tree):
  import jax  # pylint: disable=g-import-not-at-top
  return [np.asarray(v).ravel() for v in jax.tree.leaves(tree)]


def _teacher_zoo(tmp_path, classes, name="zoo", seed=0):
  """A zoo folder of random PyTorch-style (dfml) teachers of the fake data's classes."""
  rng = np.random.default_rng(seed)
  src = tmp_path / f"{name}_src"
  os.makedirs(src)
  for i, cls in enumerate(classes):
    sd = io_tests.torch_style_state_dict(rng, width=8, ways=2, size=32)
    pth.save({"teacher": sd, "specific": cls}, str(src / f"model_specific_{i}.pth"))
  names = fake.CLASSES["train"] + fake.CLASSES["test"] + ["n09999999"]
  importer.import_zoo("dfml", str(src), str(tmp_path / name), class_names=names,
                      image_size=32, mean=[0.5] * 3, std=[0.25] * 3)
  return str(tmp_path / name)


@pytest.mark.slow
def test_fusion_and_inversion_methods_run_on_an_imported_teacher_zoo(data, tmp_path):
  zoo = _teacher_zoo(tmp_path, [[0, 1], [1, 2], [2, 3], [3, 0], [0, 2]])
  config = _config(data, zoo, methods="dfl2l,ota,zoo_distill")
  with config.unlocked():
    config.zoo_distill.steps = 4
    config.zoo_distill.chunk_steps = 2
  results = pipeline.run(config, str(tmp_path / "w"), "offline")
  for r in results["rows"]:
    assert r["mean"] is not None and not r.get("failed"), r["method"]


def test_an_imported_teacher_zoo_runs_and_exports(data, tmp_path):
  zoo = _teacher_zoo(tmp_path, [[0, 1], [1, 2], [2, 3], [3, 0], [0, 2]])
  config = _config(data, zoo, methods="va,zoo_features,task_arithmetic")
  workdir = str(tmp_path / "w")
  results = pipeline.run(config, workdir, "offline")
  rows = {(r["method"], r["shots"]): r for r in results["rows"]}
  for m in ("va", "zoo_features"):
    assert rows[(m, 2)]["mean"] is not None, m
  assert rows[("task_arithmetic", 2)].get("na")  # teachers of their own initialisations
  assert results["config"]["zoo"]["num_models"] == 5
  assert results["config"]["model"]["filters"] == 8
  # The export loads into the field's layout and holds theta_init exactly.
  out = str(tmp_path / "va.pth")
  exporter.export(workdir, "va", "torch", "dfml", out)
  sd = pth.load(out)
  assert sd["trunk.0.C.weight"].shape == (8, 3, 3, 3) and "trunk.0.trunk.1.running_var" in sd
  expected = store.expected_shapes(store.read_manifest(zoo))
  back = layouts.import_state_dict(out, sd, "dfml", expected, 32)
  init = inits.load(workdir, "va")
  np.testing.assert_array_equal(back["params/Dense_0/kernel"],
                                np.asarray(init.params["Dense_0"]["kernel"]))
  teachers = store.load(zoo).bn_stats["BatchNorm_2"]["var"].mean(0)
  np.testing.assert_allclose(sd["trunk.2.BN.running_var"], teachers, rtol=1e-6)
  with pytest.raises(ZooError, match="learner, not one network"):
    exporter.export(workdir, "zoo_features", "torch", "dfml", str(tmp_path / "zf.pth"))
  with pytest.raises(ZooError, match="exists"):
    exporter.export(workdir, "va", "torch", "dfml", out)
  # launch.evaluate runs on it too.
  again = pipeline.evaluate(_config(data, zoo, methods="va"), workdir)
  assert _per_task(again)[("va", 2)] == _per_task(results)[("va", 2)]

  # A changed zoo is refused on the same workdir, naming the changed file.
  changed = _teacher_zoo(tmp_path, [[0, 1], [1, 2], [2, 3], [3, 0], [0, 2]], "zoo2", seed=1)
  before = open(os.path.join(workdir, "results.json")).read()
  with pytest.raises(CheckpointError, match="model_0000.safetensors"):
    pipeline.run(_config(data, changed, methods="va"), workdir, "offline")
  assert open(os.path.join(workdir, "results.json")).read() == before
  # ... and so is a trained zoo on it, or an imported zoo on a trained zoo's workdir.
  with pytest.raises(ConfigError, match="imported zoo"):
    pipeline.run(_config(data, methods="va"), workdir, "offline")


@pytest.mark.slow  # a second pipeline run
def test_a_contaminated_run_records_its_models_and_shares_the_trained_zoo(data, trained,
                                                                         tmp_path):
  workdir, clean = trained
  copy = str(tmp_path / "copy")
  shutil.copytree(workdir, copy)
  config = _config(data)
  with config.unlocked():
    config.zoo.contamination = "fake=0.4"
  # In a copy of the trained workdir: its zoo is reused (contamination is not part of the
  # trained zoo's spec), the contaminated rows are added beside the clean ones.
  results = pipeline.run(config, copy, "offline")
  record = results["zoo_quality"]["contamination"]
  fakes = record["models"]["fake"]
  assert record["spec"] == "fake=0.4" and len(fakes) == 2
  per_model, before = results["zoo_quality"]["per_model"], clean["zoo_quality"]["per_model"]
  assert [per_model[i] for i in range(5) if i not in fakes] == [
      before[i] for i in range(5) if i not in fakes]
  tagged = [r for r in results["rows"] if r["settings"]["zoo"].get("contamination")]
  assert {(r["method"], r["shots"]) for r in tagged} == set(_per_task(clean))
  # On the zoo folder the same models are replaced (the choice depends on the seed alone).
  folder = os.path.join(workdir, "zoo_models")
  with config.unlocked():
    config.zoo.source = folder
  again = pipeline.run(config, str(tmp_path / "folder"), "offline")
  assert again["zoo_quality"]["contamination"] == record
  assert again["zoo_quality"]["per_model"] == per_model


def test_leaking_and_unknown_classes_are_refused(data, trained, tmp_path):
  leaking = _teacher_zoo(tmp_path, [[0, 1], [1, 2], [4, 2]], "leak")  # 4: a meta-test class
  with pytest.raises(ZooError, match="model_0002.safetensors was trained on 'n03000000', a "
                                     "meta-test class"):
    pipeline.run(_config(data, leaking), str(tmp_path / "w1"), "offline")
  unknown = _teacher_zoo(tmp_path, [[0, 1], [1, 2], [7, 2]], "unknown")  # 7: no such class
  with pytest.raises(ZooError, match="'n09999999', which is not a meta-training class"):
    pipeline.run(_config(data, unknown), str(tmp_path / "w2"), "offline")
  assert not os.path.exists(tmp_path / "w1" / "results.json")
  ok = _teacher_zoo(tmp_path, [[0, 1], [1, 2], [2, 3]], "ok")
  with pytest.raises(ConfigError, match="holds a zoo trained from a config"):
    pipeline.run(_config(data, ok), trained[0], "offline")
  with pytest.raises(ConfigError, match="pretrain trains a zoo"):
    pipeline.pretrain(_config(data, ok), str(tmp_path / "w3"))
