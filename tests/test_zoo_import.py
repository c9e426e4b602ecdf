"""Zoo folders (zoo/store.py), layouts, import and export, without torch.

A dfml-layout state dict written with numpy must give, once imported, the logits of a
numpy reference of the PyTorch forward (eval-mode BatchNorm, padding 1, 2x2 max-pool,
NCHW flatten); every bad input must be refused in one line naming the file.
"""

import json
import os
import shutil

import jax
import numpy as np
import pytest
from flax import traverse_util

from dfl2l_jax.errors import ZooError
from dfl2l_jax.zoo import importer
from dfl2l_jax.zoo import layouts
from dfl2l_jax.zoo import pth
from dfl2l_jax.zoo import store

WIDTH, WAYS, SIZE = 8, 5, 32
NAMES = [f"class_{i}" for i in range(10)]
MEAN, STD = [0.5, 0.45, 0.4], [0.25, 0.24, 0.26]


def torch_style_state_dict(rng, layout="dfml", width=WIDTH, ways=WAYS, size=SIZE,
                           running=True):
  """A random Conv4 state dict with the layout's names and PyTorch's shapes (OIHW conv,
  (ways, C*H*W) head), aliases holding the same arrays."""
  sd, cin = {}, 3
  for i in range(4):
    convs, bns = layouts._block_names(layout, i)  # pylint: disable=protected-access
    w = rng.normal(0, 0.3, (width, cin, 3, 3)).astype(np.float32)
    b = rng.normal(0, 0.1, width).astype(np.float32)
    bn = {"weight": rng.uniform(0.5, 1.5, width), "bias": rng.normal(0, 0.1, width),
          "running_mean": rng.normal(0, 0.2, width), "running_var": rng.uniform(0.5, 2, width)}
    for c in convs:
      sd[f"{c}.weight"], sd[f"{c}.bias"] = w, b
    for name in bns:
      for k, v in bn.items():
        if running or not k.startswith("running"):
          sd[f"{name}.{k}"] = v.astype(np.float32)
      if running:
        sd[f"{name}.num_batches_tracked"] = np.array(11, np.int64)
    cin = width
  f = size // 16
  head = {"dfml": "trunk.5", "l2l": "classifier"}[layout]
  sd[f"{head}.weight"] = rng.normal(0, 0.3, (ways, width * f * f)).astype(np.float32)
  sd[f"{head}.bias"] = rng.normal(0, 0.1, ways).astype(np.float32)
  return sd


def reference_forward(sd, x_nchw, layout="dfml"):
  """PyTorch's eval-mode forward of the CloserLook Conv4, in float64 numpy."""
  x = x_nchw.astype(np.float64)
  for i in range(4):
    convs, bns = layouts._block_names(layout, i)  # pylint: disable=protected-access
    w, b = sd[f"{convs[0]}.weight"], sd[f"{convs[0]}.bias"]
    n, _, h, wd = x.shape
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    out = np.zeros((n, w.shape[0], h, wd))
    for di in range(3):
      for dj in range(3):
        out += np.einsum("nchw,oc->nohw", xp[:, :, di:di + h, dj:dj + wd], w[:, :, di, dj])
    out += b[None, :, None, None]
    bn = lambda k: sd[f"{bns[0]}.{k}"].astype(np.float64)[None, :, None, None]
    out = (out - bn("running_mean")) / np.sqrt(bn("running_var") + 1e-5) * bn("weight") + bn(
        "bias")
    out = np.maximum(out, 0)
    h2, w2 = h // 2, wd // 2
    x = out[:, :, :2 * h2, :2 * w2].reshape(n, out.shape[1], h2, 2, w2, 2).max((3, 5))
  head = {"dfml": "trunk.5", "l2l": "classifier"}[layout]
  return x.reshape(x.shape[0], -1) @ sd[f"{head}.weight"].T + sd[f"{head}.bias"]


def write_dfml(src, n=3, seed=0, **kw):
  rng = np.random.default_rng(seed)
  os.makedirs(src, exist_ok=True)
  sds = []
  for i in range(n):
    sd = torch_style_state_dict(rng, **kw)
    classes = [int(c) for c in rng.choice(len(NAMES), WAYS, replace=False)]
    pth.save({"teacher": sd, "specific": classes}, os.path.join(src, f"model_specific_{i}.pth"))
    sds.append(sd)
  return sds


def import_dfml(src, out, **kw):
  args = dict(class_names=NAMES, image_size=SIZE, mean=MEAN, std=STD)
  args.update(kw)
  return importer.import_zoo("dfml", src, out, **args)


def one(tree, i):
  return jax.tree.map(lambda a: a[i], tree)


def test_dfml_import_matches_the_pytorch_forward(tmp_path):
  sds = write_dfml(str(tmp_path / "src"))
  manifest = import_dfml(str(tmp_path / "src"), str(tmp_path / "zoo"))
  assert manifest["batch_norm"] == "running"
  assert manifest["architecture"] == {"name": "conv4", "filters": WIDTH, "ways": WAYS}
  zoo = store.load(str(tmp_path / "zoo"))
  net = store.network(zoo.manifest)
  x = np.random.default_rng(1).normal(0, 1, (4, SIZE, SIZE, 3)).astype(np.float32)
  for i, sd in enumerate(sds):
    ours = net.apply({"params": one(zoo.params, i), "batch_stats": one(zoo.bn_stats, i)}, x,
                     train=False)
    ref = reference_forward(sd, x.transpose(0, 3, 1, 2))
    np.testing.assert_allclose(np.asarray(ours), ref, rtol=1e-5, atol=1e-5)


def test_l2l_import_matches_the_pytorch_forward(tmp_path):
  rng = np.random.default_rng(2)
  src = tmp_path / "src"
  os.makedirs(src)
  sds = [torch_style_state_dict(rng, layout="l2l") for _ in range(2)]
  for i, sd in enumerate(sds):
    pth.save(sd, str(src / f"cnn4_{i}.pth"))
  (tmp_path / "classes.txt").write_text("0 1 2 3 4\n5, 6, 7, 8, 9\n")
  importer.import_zoo("l2l", str(src), str(tmp_path / "zoo"), class_names=NAMES,
                      image_size=SIZE, mean=MEAN, std=STD,
                      model_classes=importer.read_model_classes(str(tmp_path / "classes.txt")))
  zoo = store.load(str(tmp_path / "zoo"))
  assert [m["classes"] for m in zoo.manifest["models"]] == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]
  x = np.random.default_rng(3).normal(0, 1, (3, SIZE, SIZE, 3)).astype(np.float32)
  net = store.network(zoo.manifest)
  for i, sd in enumerate(sds):
    ours = net.apply({"params": one(zoo.params, i), "batch_stats": one(zoo.bn_stats, i)}, x,
                     train=False)
    np.testing.assert_allclose(np.asarray(ours),
                               reference_forward(sd, x.transpose(0, 3, 1, 2), "l2l"),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("layout", ["dfml", "l2l", "ours"])
def test_import_export_import_is_bit_identical(tmp_path, layout):
  write_dfml(str(tmp_path / "src"), n=2)
  import_dfml(str(tmp_path / "src"), str(tmp_path / "zoo"))
  zoo = store.load(str(tmp_path / "zoo"))
  expected = store.expected_shapes(zoo.manifest)
  for i in range(2):
    flat = {k: np.asarray(v) for k, v in traverse_util.flatten_dict(
        {"params": one(zoo.params, i), "batch_stats": one(zoo.bn_stats, i)}, sep="/").items()}
    exported = layouts.export_state_dict(flat, layout, SIZE)
    pth.save(exported, str(tmp_path / f"e{i}.pth"))
    back = layouts.import_state_dict("e.pth", pth.load(str(tmp_path / f"e{i}.pth")), layout,
                                     expected, SIZE)
    assert sorted(back) == sorted(flat)
    for k in flat:
      assert back[k].dtype == flat[k].dtype and np.array_equal(back[k], flat[k]), k


def test_zoo_folder_round_trip_and_digest(tmp_path):
  write_dfml(str(tmp_path / "src"))
  written = import_dfml(str(tmp_path / "src"), str(tmp_path / "zoo"))
  zoo = store.load(str(tmp_path / "zoo"))
  assert zoo.manifest == written and zoo.num_models == 3
  assert [m["source"] for m in written["models"]] == [f"model_specific_{i}.pth" for i in
                                                      range(3)]
  copy = tmp_path / "copy"
  store.write(str(copy), json.loads(json.dumps(written)), zoo.params, zoo.bn_stats)
  assert store.load(str(copy)).digest == zoo.digest
  assert not [p for p in os.listdir(tmp_path) if ".tmp-" in p]


def _refused(tmp_path, match, src="src", **kw):
  out = tmp_path / "zoo_out"
  with pytest.raises(ZooError, match=match) as e:
    import_dfml(str(tmp_path / src), str(out), **kw)
  assert "\n" not in str(e.value)
  assert not os.path.exists(out), "nothing is written on refusal"
  return str(e.value)


def test_bad_state_dicts_are_refused_naming_the_file(tmp_path):
  rng = np.random.default_rng(5)
  src = tmp_path / "src"
  os.makedirs(src)
  good = torch_style_state_dict(rng)
  cases = {
      "missing": {k: v for k, v in good.items() if not k.startswith("trunk.3.trunk.1.")},
      "extra": dict(good, **{"trunk.6.weight": np.zeros(3, np.float32)}),
      "shape": dict(good, **{"trunk.5.bias": np.zeros(7, np.float32)}),
      "nan": dict(good, **{"trunk.2.C.weight": np.full_like(good["trunk.2.C.weight"], np.nan),
                           "trunk.2.trunk.0.weight":
                               np.full_like(good["trunk.2.C.weight"], np.nan)}),
      "aliases": dict(good, **{"trunk.1.trunk.0.bias": good["trunk.1.C.bias"] + 1}),
  }
  expected = {"missing": "missing .*trunk.3.trunk.1", "extra": "unmatched .*trunk.6.weight",
              "shape": "trunk.5.bias has shape \\(7,\\), expected \\(5,\\)",
              "nan": "NaN or Inf", "aliases": "hold different values"}
  for name, sd in cases.items():
    shutil.rmtree(src)
    os.makedirs(src)
    pth.save({"teacher": good, "specific": [0, 1, 2, 3, 4]}, str(src / "model_specific_0.pth"))
    pth.save({"teacher": sd, "specific": [0, 1, 2, 3, 4]}, str(src / "model_specific_1.pth"))
    message = _refused(tmp_path, expected[name])
    assert "model_specific_1.pth" in message, (name, message)


def test_bad_zoos_are_refused(tmp_path):
  src = tmp_path / "src"
  write_dfml(str(src), n=1)
  _refused(tmp_path, "at least 2 models")
  write_dfml(str(src), n=2)
  rng = np.random.default_rng(9)
  for sd, match in ((torch_style_state_dict(rng, ways=7), "7-way network, unlike "
                     "model_specific_0.pth \\(5-way\\)"),
                    (torch_style_state_dict(rng, running=False), "statistics absent, unlike"),
                    ({"fc.weight": np.zeros((5, 8), np.float32)},
                     "names no network of the dfml layout \\(conv4: trunk.0.C.weight and "
                     "trunk.5.weight; resnet10: trunk.0.weight and trunk.8.weight")):
    pth.save({"teacher": sd, "specific": [0, 1, 2, 3, 4]}, str(src / "model_specific_2.pth"))
    assert "model_specific_2.pth" in _refused(tmp_path, match)
  os.remove(src / "model_specific_2.pth")
  _refused(tmp_path, "is --image_size right", image_size=84)
  _refused(tmp_path, "do not carry --mean", mean=None)
  _refused(tmp_path, "--std=.*positive", std=[0.2, 0.0, 0.2])
  _refused(tmp_path, "indices into the 3 class names", class_names=NAMES[:3])
  with open(src / "model_specific_1.pth", "r+b") as f:  # truncated
    f.truncate(200)
  assert "model_specific_1.pth" in _refused(tmp_path, "truncated or corrupt")
  os.makedirs(tmp_path / "full")
  (tmp_path / "full" / "x").write_text("")
  with pytest.raises(ZooError, match="not an empty folder"):
    import_dfml(str(src), str(tmp_path / "full"))


def test_a_pickled_object_is_refused_and_never_run(tmp_path):
  src = tmp_path / "src"
  write_dfml(str(src), n=2)
  marker = tmp_path / "ran"

  class Hostile:
    def __reduce__(self):
      return (os.system, (f"touch {marker}",))

  import pickle  # pylint: disable=g-import-not-at-top
  import zipfile  # pylint: disable=g-import-not-at-top
  with zipfile.ZipFile(src / "model_specific_1.pth", "w") as z:
    z.writestr("archive/data.pkl", pickle.dumps({"teacher": Hostile(), "specific": [0]},
                                                protocol=2))
    z.writestr("archive/version", "3\n")
  message = _refused(tmp_path, "system")
  assert "model_specific_1.pth" in message
  assert not marker.exists()


def test_manifests_are_checked(tmp_path):
  write_dfml(str(tmp_path / "src"), n=2)
  import_dfml(str(tmp_path / "src"), str(tmp_path / "zoo"))
  path = tmp_path / "zoo" / "zoo.json"
  good = json.loads(path.read_text())

  def refused(manifest, match):
    path.write_text(json.dumps(manifest))
    with pytest.raises(ZooError, match=match):
      store.load(str(tmp_path / "zoo"))

  refused(dict(good, colour="blue"), "unknown field.*colour")
  refused({k: v for k, v in good.items() if k != "normalization"},
          "missing field.*normalization")
  refused(dict(good, batch_norm="moving"), "batch_norm must be one of")
  models = [dict(m) for m in good["models"]]
  models[1]["sha256"] = "0" * 64
  refused(dict(good, models=models), "model_0001.safetensors: its sha256")
  models = [dict(m) for m in good["models"]]
  models[0]["classes"] = [0, 0, 1, 2, 3]
  refused(dict(good, models=models), "repeat a class")
  refused(dict(good, architecture=dict(good["architecture"], filters=16)), "shape")
  path.write_text("{not json")
  with pytest.raises(ZooError, match="not readable JSON"):
    store.load(str(tmp_path / "zoo"))


def test_safetensors_folder_with_a_user_manifest(tmp_path):
  from safetensors import numpy as st_numpy  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(4)
  src = tmp_path / "src"
  os.makedirs(src)
  sds = [torch_style_state_dict(rng) for _ in range(2)]
  for i, sd in enumerate(sds):
    st_numpy.save_file(sd, str(src / f"t{i}.safetensors"))
  user = {"format": "dfl2l_zoo", "version": 1, "layout": "dfml",
          "architecture": {"name": "conv4", "filters": WIDTH, "ways": WAYS},
          "image_size": SIZE, "channel_order": "RGB",
          "normalization": {"mean": MEAN, "std": STD}, "batch_norm": "running",
          "class_names": NAMES,
          "models": [{"file": f"t{i}.safetensors", "classes": [i, 2, 3, 4, 5]}
                     for i in range(2)]}
  (src / "zoo.json").write_text(json.dumps(user))
  importer.import_zoo("safetensors", str(src), str(tmp_path / "zoo"))
  zoo = store.load(str(tmp_path / "zoo"))
  x = rng.normal(0, 1, (2, SIZE, SIZE, 3)).astype(np.float32)
  ours = store.network(zoo.manifest).apply(
      {"params": one(zoo.params, 1), "batch_stats": one(zoo.bn_stats, 1)}, x, train=False)
  np.testing.assert_allclose(np.asarray(ours), reference_forward(sds[1], x.transpose(0, 3, 1, 2)),
                             rtol=1e-5, atol=1e-5)
  del user["normalization"]
  (src / "zoo.json").write_text(json.dumps(user))
  with pytest.raises(ZooError, match="missing field.*normalization"):
    importer.import_zoo("safetensors", str(src), str(tmp_path / "zoo2"))


def test_import_zoo_launcher(tmp_path):
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  write_dfml(str(tmp_path / "src"), n=2)
  (tmp_path / "names.txt").write_text("\n".join(NAMES) + "\n")
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

  def run(*flags):
    return subprocess.run([sys.executable, "-m", "launch.import_zoo", *flags], cwd=root,
                          capture_output=True, text=True, timeout=300)

  common = [f"--src={tmp_path / 'src'}", f"--class_names={tmp_path / 'names.txt'}",
            "--image_size=32", "--mean=0.5,0.45,0.4", "--std=0.25,0.24,0.26", "--format=dfml"]
  bad = run(*common, f"--out={tmp_path / 'zoo'}", "--image_size=84")
  assert bad.returncode == 1
  assert bad.stderr.strip().splitlines()[-1].startswith("error: ")
  assert "is --image_size right" in bad.stderr and not os.path.exists(tmp_path / "zoo")
  good = run(*common, f"--out={tmp_path / 'zoo'}")
  assert good.returncode == 0, good.stderr
  assert f"--config.zoo.source={tmp_path / 'zoo'}" in good.stdout
  assert store.load(str(tmp_path / "zoo")).num_models == 2


def test_teachers_of_several_architectures_import_as_a_mixed_zoo(tmp_path):
  from tests import test_resnet_layouts as resnets  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(3)
  src = tmp_path / "src"
  os.makedirs(src)
  # Files 0 and 3: Conv4-8; 1: a ResNet-10 of widths 4-8-12-16; 2: a Conv4-16.
  sds = [torch_style_state_dict(rng), resnets.closerlook_state_dict(rng, "resnet10"),
         torch_style_state_dict(rng, width=16), torch_style_state_dict(rng)]
  for i, sd in enumerate(sds):
    pth.save({"teacher": sd, "specific": [i, i + 1, i + 2, i + 3, i + 4]},
             str(src / f"model_specific_{i}.pth"))
  manifest = import_dfml(str(src), str(tmp_path / "zoo"))
  resnet = {"name": "resnet10", "ways": WAYS, "widths": list(resnets.WIDTHS)}
  assert manifest["architecture"] == {"name": "conv4", "filters": WIDTH, "ways": WAYS}
  assert [m.get("architecture") for m in manifest["models"]] == [
      None, resnet, {"name": "conv4", "filters": 16, "ways": WAYS}, None]
  zoo = store.load(str(tmp_path / "zoo"))
  assert [(g.name, list(g.indices)) for g in zoo.groups] == [
      ("conv4-8", [0, 3]), ("resnet10-4-8-12-16", [1]), ("conv4-16", [2])]
  assert [m["classes"] for m in zoo.manifest["models"]][1] == [1, 2, 3, 4, 5]
  x = rng.normal(0, 1, (2, SIZE, SIZE, 3)).astype(np.float32)
  for g in zoo.groups:
    net = store.network(g.architecture)
    for row, i in enumerate(g.indices):
      ours = net.apply({"params": one(g.params, row), "batch_stats": one(g.bn_stats, row)}, x,
                       train=False)
      ref = (resnets.reference_forward(sds[i], x.transpose(0, 3, 1, 2), "resnet10") if i == 1
             else reference_forward(sds[i], x.transpose(0, 3, 1, 2)))
      np.testing.assert_allclose(np.asarray(ours), ref, rtol=1e-5,
                                 atol=1e-5 * np.abs(ref).max())


def test_dfml_bare_state_dicts_with_a_classes_file(tmp_path):
  rng = np.random.default_rng(7)
  src = tmp_path / "src"
  os.makedirs(src)
  sds = [torch_style_state_dict(rng) for _ in range(2)]
  for i, sd in enumerate(sds):
    pth.save(sd, str(src / f"model_{i}.pth"))
  with pytest.raises(ZooError, match="--model_classes"):
    importer.import_zoo("dfml_bare", str(src), str(tmp_path / "zoo"), class_names=NAMES,
                        image_size=SIZE, mean=MEAN, std=STD)
  importer.import_zoo("dfml_bare", str(src), str(tmp_path / "zoo"), class_names=NAMES,
                      image_size=SIZE, mean=MEAN, std=STD,
                      model_classes=[[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]])
  zoo = store.load(str(tmp_path / "zoo"))
  assert [m["source"] for m in zoo.manifest["models"]] == ["model_0.pth", "model_1.pth"]
  x = rng.normal(0, 1, (2, SIZE, SIZE, 3)).astype(np.float32)
  ours = store.network(zoo.manifest).apply(
      {"params": one(zoo.params, 1), "batch_stats": one(zoo.bn_stats, 1)}, x, train=False)
  np.testing.assert_allclose(np.asarray(ours), reference_forward(sds[1], x.transpose(0, 3, 1, 2)),
                             rtol=1e-5, atol=1e-5)
