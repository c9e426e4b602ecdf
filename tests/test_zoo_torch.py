"""Imported teachers and exported initialisations against PyTorch itself (skipped without
torch): the field's ConvNet saved by torch.save and by safetensors.torch, imported, gives
torch's own eval-mode logits; an export loads with load_state_dict(strict=True) and gives
our logits in eval and in train mode."""

import json
import os

import jax
import numpy as np
import pytest
from flax import traverse_util

from dfl2l_jax import models
from dfl2l_jax.zoo import importer
from dfl2l_jax.zoo import layouts
from dfl2l_jax.zoo import pth
from dfl2l_jax.zoo import store
from tests import helpers

torch = pytest.importorskip("torch")
torch_zoo = helpers.load_script("torch_zoo")

WIDTH, WAYS, SIZE = 8, 5, 32
NAMES = [f"c{i}" for i in range(10)]
MEAN, STD = [0.5, 0.45, 0.4], [0.25, 0.24, 0.26]


def _teacher(seed):
  """A ConvNet with random weights and BatchNorm running statistics, in eval mode."""
  torch.manual_seed(seed)
  net = torch_zoo.ConvNet(width=WIDTH, ways=WAYS, image_size=SIZE)
  with torch.no_grad():
    for m in net.modules():
      if isinstance(m, torch.nn.BatchNorm2d):
        m.weight.uniform_(0.5, 1.5)
        m.bias.normal_(0, 0.1)
        m.running_mean.normal_(0, 0.2)
        m.running_var.uniform_(0.5, 2.0)
  return net.eval()


def _logits(net, x_nhwc):
  with torch.no_grad():
    return net(torch.from_numpy(x_nhwc.transpose(0, 3, 1, 2).copy())).numpy()


def _ours(zoo, i, x):
  one = lambda t: jax.tree.map(lambda a: a[i], t)
  return np.asarray(store.network(zoo.manifest).apply(
      {"params": one(zoo.params), "batch_stats": one(zoo.bn_stats)}, x, train=False))


def test_torch_saved_teachers_import_to_torch_logits(tmp_path):
  nets = [_teacher(s) for s in range(2)]
  src = tmp_path / "src"
  os.makedirs(src)
  for i, net in enumerate(nets):
    torch.save({"teacher": net.state_dict(), "specific": [i, 2, 3, 4, 5]},
               str(src / f"model_specific_{i}.pth"))
  importer.import_zoo("dfml", str(src), str(tmp_path / "zoo"), class_names=NAMES,
                      image_size=SIZE, mean=MEAN, std=STD)
  zoo = store.load(str(tmp_path / "zoo"))
  x = np.random.default_rng(0).normal(0, 1, (6, SIZE, SIZE, 3)).astype(np.float32)
  for i, net in enumerate(nets):
    np.testing.assert_allclose(_ours(zoo, i, x), _logits(net, x), rtol=1e-5, atol=1e-5)


def test_safetensors_torch_teachers_import_to_torch_logits(tmp_path):
  from safetensors.torch import save_file  # pylint: disable=g-import-not-at-top
  nets = [_teacher(s) for s in (3, 4)]
  src = tmp_path / "src"
  os.makedirs(src)
  entries = []
  for i, net in enumerate(nets):  # clone: safetensors refuses the aliased (shared) tensors
    save_file({k: v.detach().clone() for k, v in net.state_dict().items()},
              str(src / f"t{i}.safetensors"))
    entries.append({"file": f"t{i}.safetensors", "classes": [0, 1, 2, 3, 4 + i]})
  (src / "zoo.json").write_text(json.dumps({
      "format": "dfl2l_zoo", "version": 1, "layout": "dfml",
      "architecture": {"name": "conv4", "filters": WIDTH, "ways": WAYS},
      "image_size": SIZE, "channel_order": "RGB", "normalization": {"mean": MEAN, "std": STD},
      "batch_norm": "running", "class_names": NAMES, "models": entries}))
  importer.import_zoo("safetensors", str(src), str(tmp_path / "zoo"))
  zoo = store.load(str(tmp_path / "zoo"))
  x = np.random.default_rng(1).normal(0, 1, (4, SIZE, SIZE, 3)).astype(np.float32)
  for i, net in enumerate(nets):
    np.testing.assert_allclose(_ours(zoo, i, x), _logits(net, x), rtol=1e-5, atol=1e-5)


def test_export_loads_strictly_into_the_fields_convnet(tmp_path):
  rng = np.random.default_rng(2)
  net = models.Conv4(ways=WAYS, filters=WIDTH)
  x = rng.normal(0, 1, (6, SIZE, SIZE, 3)).astype(np.float32)
  variables = net.init(jax.random.key(0), x)
  params = jax.tree.map(lambda a: a + rng.normal(0, 0.1, a.shape).astype(np.float32),
                        variables["params"])
  stats = jax.tree.map(lambda a: np.abs(a + rng.normal(0, 0.3, a.shape)).astype(np.float32),
                       variables["batch_stats"])
  flat = {k: np.asarray(v) for k, v in traverse_util.flatten_dict(
      {"params": params, "batch_stats": stats}, sep="/").items()}
  pth.save(layouts.export_state_dict(flat, "dfml", SIZE), str(tmp_path / "init.pth"))
  loaded = torch_zoo.ConvNet(width=WIDTH, ways=WAYS, image_size=SIZE)
  loaded.load_state_dict(torch.load(str(tmp_path / "init.pth"), weights_only=True),
                         strict=True)
  eval_ours = net.apply({"params": params, "batch_stats": stats}, x, train=False)
  np.testing.assert_allclose(_logits(loaded.eval(), x), np.asarray(eval_ours), rtol=1e-5,
                             atol=1e-5)
  train_ours = models.apply_train_mode(net, params, x)  # BatchNorm on the batch's statistics
  with torch.no_grad():
    train_theirs = loaded.train()(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()
  np.testing.assert_allclose(train_theirs, np.asarray(train_ours), rtol=1e-4, atol=1e-4)
