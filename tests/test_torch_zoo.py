"""scripts/torch_zoo.py: the field's teacher files, with the field's state-dict names,
on small synthetic data (2 teachers, 1 epoch)."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from tests import helpers

torch = pytest.importorskip("torch")

SCRIPT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts",
                      "torch_zoo.py")
CLASSES = [f"c{k}" for k in range(8)]
PER_CLASS = 20


def _expected_shapes(width=32, ways=5, side=2):
  """The CloserLook Conv4 state dict: every block's tensors under two names."""
  shapes = {}
  for b in range(4):
    indim = 3 if b == 0 else width
    conv = {"weight": (width, indim, 3, 3), "bias": (width,)}
    bn = {"weight": (width,), "bias": (width,), "running_mean": (width,),
          "running_var": (width,), "num_batches_tracked": ()}
    for prefix, tensors in ((f"trunk.{b}.C.", conv), (f"trunk.{b}.BN.", bn),
                            (f"trunk.{b}.trunk.0.", conv), (f"trunk.{b}.trunk.1.", bn)):
      shapes.update({prefix + k: v for k, v in tensors.items()})
  shapes["trunk.5.weight"] = (ways, width * side * side)
  shapes["trunk.5.bias"] = (ways,)
  return shapes


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
  threads = torch.get_num_threads()
  torch.set_num_threads(1)
  script = helpers.load_script("torch_zoo")
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (len(CLASSES) * PER_CLASS, 32, 32, 3), dtype=np.uint8)
  labels = np.repeat(np.arange(len(CLASSES)), PER_CLASS)
  out = str(tmp_path_factory.mktemp("zoo"))
  lines = []
  content = script.train_teachers(images, labels, CLASSES, out, num_teachers=2, epochs=1,
                                  seed=0, log=lines.append)
  yield script, images, labels, out, content, lines
  torch.set_num_threads(threads)


def test_teacher_files_have_the_field_layout(zoo):
  script, _, _, out, _, _ = zoo
  for i in range(2):
    saved = torch.load(os.path.join(out, f"model_specific_{i}.pth"), weights_only=True)
    assert set(saved) == {"teacher", "specific"}
    specific = saved["specific"]
    assert len(specific) == 5 and len(set(specific)) == 5
    assert all(isinstance(c, int) and 0 <= c < len(CLASSES) for c in specific)
    state = saved["teacher"]
    expected = _expected_shapes()
    assert list(state) == list(script.ConvNet(32, 5, 32).state_dict())
    assert {k: tuple(v.shape) for k, v in state.items()} == expected
    for b in range(4):
      for name, alias in (("C", "trunk.0"), ("BN", "trunk.1")):
        for k in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
          if f"trunk.{b}.{name}.{k}" in state:
            assert torch.equal(state[f"trunk.{b}.{name}.{k}"], state[f"trunk.{b}.{alias}.{k}"])
    assert int(state["trunk.0.BN.num_batches_tracked"]) == 1  # 80 images: one batch
    model = script.ConvNet(32, 5, 32)
    model.load_state_dict(state, strict=True)
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 5)


def test_class_names_and_teachers_json(zoo):
  _, _, _, out, content, lines = zoo
  with open(os.path.join(out, "class_names.txt")) as f:
    assert f.read().splitlines() == CLASSES
  with open(os.path.join(out, "teachers.json")) as f:
    assert json.load(f) == content
  assert [t["index"] for t in content["teachers"]] == [0, 1]
  for t in content["teachers"]:
    saved = torch.load(os.path.join(out, t["file"]), weights_only=True)
    assert t["specific"] == saved["specific"]
    assert t["classes"] == [CLASSES[c] for c in t["specific"]]
    assert 0.0 <= t["heldout_accuracy"] <= 1.0
    assert (t["num_train"], t["num_heldout"]) == (5 * 16, 5 * 4)
  assert content["settings"]["mean"] == pytest.approx([0.5071, 0.4867, 0.4408])
  assert any("ETA" in line for line in lines)


def test_rerun_skips_finished_teachers_and_extends(zoo):
  script, images, labels, out, content, _ = zoo
  path = os.path.join(out, "model_specific_0.pth")
  stamp = os.stat(path).st_mtime_ns
  lines = []
  again = script.train_teachers(images, labels, CLASSES, out, num_teachers=3, epochs=1, seed=0,
                                log=lines.append)
  assert os.stat(path).st_mtime_ns == stamp
  assert again["teachers"][:2] == content["teachers"]
  assert len(again["teachers"]) == 3
  assert os.path.exists(os.path.join(out, "model_specific_2.pth"))
  assert lines[0].startswith("2 of 3 teachers already")
  assert not [f for f in os.listdir(out) if ".tmp" in f]
  with pytest.raises(ValueError, match="other settings"):
    script.train_teachers(images, labels, CLASSES, out, num_teachers=3, epochs=2, seed=0,
                          log=lines.append)


def test_same_seed_same_teacher(zoo, tmp_path):
  script, images, labels, out, _, _ = zoo
  script.train_teachers(images, labels, CLASSES, str(tmp_path), num_teachers=1, epochs=1,
                        seed=0, log=lambda line: None)
  a = torch.load(os.path.join(out, "model_specific_0.pth"), weights_only=True)
  b = torch.load(os.path.join(tmp_path, "model_specific_0.pth"), weights_only=True)
  assert a["specific"] == b["specific"]
  for k, v in a["teacher"].items():
    assert torch.equal(v, b["teacher"][k]), k


def test_init_is_the_fields():
  script = helpers.load_script("torch_zoo")
  torch.manual_seed(0)
  model = script.ConvNet(32, 5, 84)
  assert model.trunk[5].weight.shape == (5, 32 * 5 * 5)
  for b in range(4):
    w = model.trunk[b].C.weight
    assert model.trunk[b].trunk[0] is model.trunk[b].C
    assert abs(float(w.detach().std()) - (2.0 / (9 * 32)) ** 0.5) < 0.01
    assert torch.equal(model.trunk[b].BN.weight, torch.ones(32))
  resnet = script.ResNet("resnet10")  # the field's widths, 64-128-256-512
  block = resnet.trunk[3]  # the first of stage 2: a 1x1 conv shortcut
  for conv, k in ((resnet.trunk[0], 9), (block.C1, 9), (block.C2, 9), (block.shortcut, 1)):
    want = (2.0 / (k * conv.out_channels)) ** 0.5
    assert abs(float(conv.weight.detach().std()) / want - 1) < 0.05
  for bn in (resnet.trunk[1], block.BN1, block.BN2, block.BNshortcut):
    assert torch.equal(bn.weight, torch.ones_like(bn.weight))
    assert torch.equal(bn.bias, torch.zeros_like(bn.bias))


def test_command_line_reads_the_train_split(zoo, tmp_path, monkeypatch):
  from dfl2l_jax.data import load  # pylint: disable=import-outside-toplevel
  script, images, labels, _, _, _ = zoo
  calls = []

  def fake_load_split(name, split, *, data_dir, manual_dir, strict):
    calls.append((name, split, data_dir, manual_dir, strict))
    return images, labels, CLASSES

  monkeypatch.setattr(load, "load_split", fake_load_split)
  script.main(["--dataset=mini_imagenet", "--manual_dir=/src", "--num_teachers=1",
               "--epochs=1", f"--out={tmp_path}", "--seed=0", "--threads=1"])
  assert calls == [("mini_imagenet", "train", None, "/src", True)]
  with open(os.path.join(tmp_path, "teachers.json")) as f:
    content = json.load(f)
  assert content["dataset"] == "mini_imagenet"
  assert content["settings"]["mean"] == pytest.approx([0.485, 0.456, 0.406])
  with pytest.raises(SystemExit, match=r"^error: --architectures='conv4-32:2,vgg:1': 'vgg:1'"):
    script.main(["--dataset=mini_imagenet", "--architectures=conv4-32:2,vgg:1",
                 f"--out={tmp_path / 'bad'}"])
  assert not os.path.exists(tmp_path / "bad")


def test_without_torch_one_line_error_and_exit_1():
  code = ("import sys, runpy; sys.modules['torch'] = None; "
          f"runpy.run_path({SCRIPT!r}, run_name='__main__')")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       check=False)
  assert out.returncode == 1
  assert out.stderr == "scripts/torch_zoo.py needs PyTorch: pip install torch\n"


def test_unreadable_file_is_trained_again_and_other_network_refused(zoo, tmp_path):
  script, images, labels, out, _, _ = zoo
  for name in ("class_names.txt", "model_specific_0.pth", "model_specific_1.pth"):
    shutil.copy(os.path.join(out, name), tmp_path / name)
  with open(tmp_path / "model_specific_1.pth", "wb") as f:
    f.write(b"truncated")
  lines = []
  script.train_teachers(images, labels, CLASSES, str(tmp_path), num_teachers=2, epochs=1,
                        seed=0, log=lines.append)
  assert lines[0].startswith("1 of 2 teachers already")
  a = torch.load(os.path.join(out, "model_specific_1.pth"), weights_only=True)
  b = torch.load(tmp_path / "model_specific_1.pth", weights_only=True)
  for k, v in a["teacher"].items():
    assert torch.equal(v, b["teacher"][k]), k
  os.remove(tmp_path / "teachers.json")
  with pytest.raises(ValueError, match="another network"):
    script.train_teachers(images, labels, CLASSES, str(tmp_path), num_teachers=2, epochs=1,
                          seed=0, width=16, log=lines.append)


def test_a_mixed_zoo_keeps_each_teachers_task_and_imports_with_torchs_logits(zoo, tmp_path):
  import jax  # pylint: disable=import-outside-toplevel
  from dfl2l_jax.zoo import importer  # pylint: disable=import-outside-toplevel
  from dfl2l_jax.zoo import store  # pylint: disable=import-outside-toplevel
  script, images, labels, out, content, _ = zoo
  src = str(tmp_path / "teachers")
  mixed = script.train_teachers(images, labels, CLASSES, src, num_teachers=3, epochs=1,
                                seed=0, architectures="conv4-32:2,resnet10-4-8-12-16:1",
                                log=lambda line: None)
  # Teachers 0 and 1 are the Conv4 zoo's, tensor for tensor; teacher 2 is a ResNet-10 with
  # the classes teacher 2 of a Conv4 zoo gets.
  for i in range(2):
    a = torch.load(os.path.join(out, f"model_specific_{i}.pth"), weights_only=True)
    b = torch.load(os.path.join(src, f"model_specific_{i}.pth"), weights_only=True)
    assert a["specific"] == b["specific"]
    assert all(torch.equal(v, b["teacher"][k]) for k, v in a["teacher"].items())
  assert [t.get("architecture") for t in mixed["teachers"]] == [
      "conv4-32", "conv4-32", "resnet10-4-8-12-16"]
  drawn = np.random.default_rng([0, 2]).choice(len(CLASSES), 5, replace=False)
  assert mixed["teachers"][2]["specific"] == [int(c) for c in drawn]
  resnet = torch.load(os.path.join(src, "model_specific_2.pth"), weights_only=True)["teacher"]
  assert list(resnet) == list(script.ResNet("resnet10", (4, 8, 12, 16)).state_dict())
  # Imported: one group per architecture, each model computing as in torch's eval mode.
  settings = mixed["settings"]
  manifest = importer.import_zoo("dfml", src, str(tmp_path / "zoo"), class_names=CLASSES,
                                 image_size=32, mean=settings["mean"], std=settings["std"])
  assert manifest["models"][2]["architecture"] == {"name": "resnet10", "ways": 5,
                                                   "widths": [4, 8, 12, 16]}
  loaded = store.load(str(tmp_path / "zoo"))
  assert [(g.name, list(g.indices)) for g in loaded.groups] == [
      ("conv4-32", [0, 1]), ("resnet10-4-8-12-16", [2])]
  x = script.to_inputs(images[:6], 32, settings["mean"], settings["std"])
  for g in loaded.groups:
    net = store.network(g.architecture)
    for row, i in enumerate(g.indices):
      model = script.build(mixed["teachers"][i]["architecture"], 32)
      model.load_state_dict(torch.load(os.path.join(src, f"model_specific_{i}.pth"),
                                       weights_only=True)["teacher"])
      with torch.no_grad():
        theirs = model.eval()(x).numpy()
      ours = net.apply({"params": jax.tree.map(lambda a, r=row: a[r], g.params),
                        "batch_stats": jax.tree.map(lambda a, r=row: a[r], g.bn_stats)},
                       x.numpy().transpose(0, 2, 3, 1), train=False)
      np.testing.assert_allclose(np.asarray(ours), theirs, rtol=1e-4,
                                 atol=1e-4 * np.abs(theirs).max())
  for bad, match in (("conv4-32:2,resnet12:1", "is not NAME:COUNT"),
                     ("conv4-32:2,resnet10:2", "counts 4 teachers"),
                     ("conv4-32:2,resnet10-4-8-8-16:1", "two stages of one width")):
    with pytest.raises(ValueError, match=match):
      script.train_teachers(images, labels, CLASSES, str(tmp_path / "bad"), num_teachers=3,
                            epochs=1, seed=0, architectures=bad, log=lambda line: None)
