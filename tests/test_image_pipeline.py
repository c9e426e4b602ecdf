"""The image pipeline end to end on a tiny fake Mini-ImageNet (made here, in the real layout)."""

import csv
import io
import os
import zipfile

import numpy as np
import pytest
from PIL import Image

from configs import fewshot_base
from dfl2l_jax import pipeline
from dfl2l_jax.errors import DataError

CLASSES = {"train": [f"n0100000{i}" for i in range(4)],
           "val": [f"n0200000{i}" for i in range(2)],
           "test": [f"n0300000{i}" for i in range(3)]}
PER_CLASS = 10


def make_fake_mini_imagenet(root):
  """csv + stored zip per split; each class a noisy colour so models can learn it."""
  os.makedirs(root, exist_ok=True)
  rng = np.random.default_rng(0)
  for split, wnids in CLASSES.items():
    rows = []
    with zipfile.ZipFile(os.path.join(root, f"{split}.zip"), "w", zipfile.ZIP_STORED) as z:
      for c, wnid in enumerate(wnids):
        colour = rng.uniform(30, 225, size=3)
        for i in range(PER_CLASS):
          img = np.clip(colour + rng.normal(0, 30, (84, 84, 3)), 0, 255).astype(np.uint8)
          buf = io.BytesIO()
          Image.fromarray(img).save(buf, "JPEG", quality=90)
          name = f"{wnid}{i:08d}.jpg"
          z.writestr(f"{wnid}/{name}", buf.getvalue())
          rows.append((name, wnid))
    with open(os.path.join(root, f"{split}.csv"), "w", newline="") as f:
      w = csv.writer(f)
      w.writerow(["filename", "label"])
      w.writerows(rows)


def _config(manual_dir, data_dir, **overrides):
  c = fewshot_base.make("cifar_fs", 2, "proxy,smoke")
  with c.unlocked():
    c.data.manual_dir = manual_dir
    c.data.data_dir = data_dir
    c.data.strict = False
    c.shots = (2, 4)
    c.metatest.query_per_class = 3
    c.metatest.num_tasks = 4
    c.metatest.batch_size = 2
    c.zoo.num_models = 5
    c.zoo.steps = 20
    c.zoo.chunk_steps = 10
    c.zoo.bn_reference = 3
    c.fusion.chunk_steps = 3
    # The online loop and finetune are covered by the sinusoid tests; inversion_maml is the
    # image-only method (BatchNorm statistics saved with the zoo, inversion, MAML).
    c.methods = "dfl2l,va,inversion_maml"
    c.inversion.steps = 4
    c.inversion.chunk_steps = 2
    c.inversion.images_per_class = 2
    c.inversion_maml.first_order = True
    # One device: the sharded paths are tested in test_sharding.py and by the
    # sinusoid pipeline tests; sharded Conv4 programs would double this test's time.
    c.mesh.num_devices = 1
    for k, v in overrides.items():
      c[k] = v
  return c


@pytest.fixture(scope="module")
def source(tmp_path_factory):
  root = tmp_path_factory.mktemp("data")
  make_fake_mini_imagenet(str(root / "manual"))
  return str(root / "manual"), str(root / "tfds")


@pytest.mark.slow
def test_image_pipeline_runs_and_resumes_to_identical_results(source, tmp_path):
  manual, data_dir = source
  config = _config(manual, data_dir)
  first = pipeline.run(config, str(tmp_path / "a"), "offline")
  assert first["benchmark"] == "cifar_fs_protocol_on_mini_imagenet32"
  assert first["metric"] == "accuracy"
  assert {(r["method"], r["shots"]) for r in first["rows"]} == {
      (m, s) for m in config.methods.split(",") for s in (2, 4)}
  for r in first["rows"]:
    assert r["n_tasks"] == 4 and all(0 <= v <= 100 + 1e-3 for v in r["per_task"])
  assert 0 <= first["zoo_quality"]["mean"] <= 100 + 1e-3
  for path in ("zoo_bn_stats/spec.json", "inversion_grid.png", "fusion/inversion/summary.json",
               "inits/inversion_maml"):
    assert os.path.exists(tmp_path / "a" / path), path

  class Stop(Exception):
    pass

  def hook(phase, step):
    if phase == "dfl2l" and step == 6:
      raise Stop()

  with pytest.raises(Stop):
    pipeline.run(config, str(tmp_path / "b"), "offline", hooks=hook)
  second = pipeline.run(config, str(tmp_path / "b"), "offline")
  per_task = lambda res: {(r["method"], r["shots"]): r["per_task"] for r in res["rows"]}
  assert per_task(second) == per_task(first)


def test_missing_manual_dir_is_a_clear_error(tmp_path):
  config = _config(str(tmp_path / "nowhere"), str(tmp_path / "tfds"))
  with pytest.raises(DataError, match="nowhere"):
    pipeline.run(config, str(tmp_path / "w"), "offline")
  assert not os.path.exists(str(tmp_path / "w" / "results.json"))
