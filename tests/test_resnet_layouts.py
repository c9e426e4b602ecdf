"""The ResNets of models.py and their layouts (zoo/layouts.py): the CloserLook ResNet-10 /
ResNet-18 (layout dfml, FREE's `network.py`) and learn2learn's ResNet12 (layout l2l).

A state dict with the field's names and PyTorch's shapes, written here with numpy from the
PyTorch modules' construction (not from the layout tables), must give once imported the
logits of a float64 numpy reference of the PyTorch eval-mode forward; export and import
must invert each other bit for bit; a missing, extra or misshapen tensor is refused by
name. With torch: modules with the field's structure and names, imported and exported.
"""

import functools

import jax
import numpy as np
import pytest
from flax import traverse_util

from dfl2l_jax import models
from dfl2l_jax.errors import ZooError
from dfl2l_jax.zoo import layouts
from dfl2l_jax.zoo import store

WAYS = 5
WIDTHS = (4, 8, 12, 16)
BLOCKS = {"resnet10": (1, 1, 1, 1), "resnet18": (2, 2, 2, 2)}
LAYOUT = {"resnet10": "dfml", "resnet18": "dfml", "resnet12": "l2l"}
# (architecture, image size): odd and even feature maps for the strided convolutions;
# learn2learn's ResNet12 only on 80-95 pixel images (its last map must be 5x5).
CASES = [("resnet10", 32), ("resnet10", 36), ("resnet18", 84), ("resnet12", 84)]


def _manifest(arch, size, widths=WIDTHS, running=True):
  return {"architecture": {"name": arch, "ways": WAYS, "widths": list(widths)},
          "image_size": size, "batch_norm": "running" if running else "batch"}


# --- State dicts with the field's names, as the PyTorch modules build them. -----------

def _bn(rng, sd, prefix, c):
  sd[f"{prefix}.weight"] = rng.uniform(0.5, 1.5, c).astype(np.float32)
  sd[f"{prefix}.bias"] = rng.normal(0, 0.1, c).astype(np.float32)
  sd[f"{prefix}.running_mean"] = rng.normal(0, 0.2, c).astype(np.float32)
  sd[f"{prefix}.running_var"] = rng.uniform(0.5, 2.0, c).astype(np.float32)
  sd[f"{prefix}.num_batches_tracked"] = np.array(7, np.int64)


def _conv(rng, out, cin, k):
  return rng.normal(0, np.sqrt(2.0 / (cin * k * k)), (out, cin, k, k)).astype(np.float32)


def closerlook_state_dict(rng, arch, widths=WIDTHS, ways=WAYS):
  """FREE's ResNet(SimpleBlock, BLOCKS[arch], widths) with its stem of widths[0]."""
  sd = {"trunk.0.weight": _conv(rng, widths[0], 3, 3)}
  _bn(rng, sd, "trunk.1", widths[0])
  indim, k = widths[0], 2
  for stage, n in enumerate(BLOCKS[arch]):
    for _ in range(n):
      outdim = widths[stage]
      sd[f"trunk.{k}.C1.weight"] = _conv(rng, outdim, indim, 3)
      _bn(rng, sd, f"trunk.{k}.BN1", outdim)
      sd[f"trunk.{k}.C2.weight"] = _conv(rng, outdim, outdim, 3)
      _bn(rng, sd, f"trunk.{k}.BN2", outdim)
      if indim != outdim:
        sd[f"trunk.{k}.shortcut.weight"] = _conv(rng, outdim, indim, 1)
        _bn(rng, sd, f"trunk.{k}.BNshortcut", outdim)
      indim, k = outdim, k + 1
  k += 2  # AdaptiveAvgPool2d, Flatten
  sd[f"trunk.{k}.weight"] = rng.normal(0, 0.3, (ways, indim)).astype(np.float32)
  sd[f"trunk.{k}.bias"] = rng.normal(0, 0.1, ways).astype(np.float32)
  return sd


def l2l_resnet12_state_dict(rng, widths=WIDTHS, ways=WAYS):
  """learn2learn's ResNet12(ways, hidden_size=widths[-1]) at other widths."""
  sd, inplanes = {}, 3
  for i, w in enumerate(widths):
    p = f"features.layer{i + 1}.0"
    for j, cin in ((1, inplanes), (2, w), (3, w)):
      sd[f"{p}.conv{j}.weight"] = _conv(rng, w, cin, 3)
      _bn(rng, sd, f"{p}.bn{j}", w)
    sd[f"{p}.downsample.0.weight"] = _conv(rng, w, inplanes, 1)
    _bn(rng, sd, f"{p}.downsample.1", w)
    inplanes = w
  sd["classifier.weight"] = rng.normal(0, 0.3, (ways, inplanes)).astype(np.float32)
  sd["classifier.bias"] = rng.normal(0, 0.1, ways).astype(np.float32)
  return sd


def state_dict(rng, arch, widths=WIDTHS):
  if arch == "resnet12":
    return l2l_resnet12_state_dict(rng, widths)
  return closerlook_state_dict(rng, arch, widths)


# --- float64 numpy references of PyTorch's eval-mode forwards. ------------------------

def conv2d(x, w, stride=1, padding=0):
  """torch.nn.functional.conv2d without bias, NCHW / OIHW."""
  n, _, h, wd = x.shape
  o, _, kh, kw = w.shape
  xp = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
  ho, wo = (h + 2 * padding - kh) // stride + 1, (wd + 2 * padding - kw) // stride + 1
  out = np.zeros((n, o, ho, wo))
  for i in range(kh):
    for j in range(kw):
      patch = xp[:, :, i:i + stride * (ho - 1) + 1:stride, j:j + stride * (wo - 1) + 1:stride]
      out += np.einsum("nchw,oc->nohw", patch, w[:, :, i, j].astype(np.float64))
  return out


def bn_eval(x, sd, prefix):
  g = lambda k: sd[f"{prefix}.{k}"].astype(np.float64)[None, :, None, None]
  return (x - g("running_mean")) / np.sqrt(g("running_var") + 1e-5) * g("weight") + g("bias")


def closerlook_forward(sd, x, arch):
  x = bn_eval(conv2d(x, sd["trunk.0.weight"], 1, 1), sd, "trunk.1")  # no ReLU, no pool
  k = 2
  for stage, n in enumerate(BLOCKS[arch]):
    for b in range(n):
      stride = 2 if stage >= 1 and b == 0 else 1
      w1 = sd[f"trunk.{k}.C1.weight"]
      out = np.maximum(bn_eval(conv2d(x, w1, stride, 1), sd, f"trunk.{k}.BN1"), 0)
      out = bn_eval(conv2d(out, sd[f"trunk.{k}.C2.weight"], 1, 1), sd, f"trunk.{k}.BN2")
      if w1.shape[0] != w1.shape[1]:
        x = bn_eval(conv2d(x, sd[f"trunk.{k}.shortcut.weight"], stride, 0), sd,
                    f"trunk.{k}.BNshortcut")
      x, k = np.maximum(out + x, 0), k + 1
  x = x.mean(axis=(2, 3))  # AdaptiveAvgPool2d(1), Flatten
  k += 2
  return x @ sd[f"trunk.{k}.weight"].T.astype(np.float64) + sd[f"trunk.{k}.bias"]


def l2l_resnet12_forward(sd, x):
  leaky = lambda v: np.where(v > 0, v, 0.1 * v)
  for i in range(4):
    p = f"features.layer{i + 1}.0"
    out = leaky(bn_eval(conv2d(x, sd[f"{p}.conv1.weight"], 1, 1), sd, f"{p}.bn1"))
    out = leaky(bn_eval(conv2d(out, sd[f"{p}.conv2.weight"], 1, 1), sd, f"{p}.bn2"))
    out = bn_eval(conv2d(out, sd[f"{p}.conv3.weight"], 1, 1), sd, f"{p}.bn3")
    res = bn_eval(conv2d(x, sd[f"{p}.downsample.0.weight"], 1, 0), sd, f"{p}.downsample.1")
    out = leaky(out + res)
    n, c, h, w = out.shape  # MaxPool2d(2): floor
    x = out[:, :, :h // 2 * 2, :w // 2 * 2].reshape(n, c, h // 2, 2, w // 2, 2).max((3, 5))
  n, c, h, w = x.shape  # AvgPool2d(5, stride=1), then Flatten in (C, H, W) order
  pooled = np.stack([np.stack([x[:, :, i:i + 5, j:j + 5].mean((2, 3))
                               for j in range(w - 4)], -1) for i in range(h - 4)], -2)
  x = pooled.reshape(n, -1)
  return x @ sd["classifier.weight"].T.astype(np.float64) + sd["classifier.bias"]


def reference_forward(sd, x_nchw, arch):
  x = x_nchw.astype(np.float64)
  if arch == "resnet12":
    return l2l_resnet12_forward(sd, x)
  return closerlook_forward(sd, x, arch)


# --- Tests. ---------------------------------------------------------------------------

def _ours(arch, flat, x, widths=WIDTHS, train=False):
  variables = traverse_util.unflatten_dict(flat, sep="/")
  net = models.resnet(arch, WAYS, widths)
  if train:
    return np.asarray(jax.jit(functools.partial(models.apply_train_mode, net))(
        variables["params"], x))
  return np.asarray(jax.jit(functools.partial(net.apply, train=False))(variables, x))


def _random_flat(arch, size, seed, widths=WIDTHS):
  """Our parameters and BatchNorm statistics, random (variances positive)."""
  rng = np.random.default_rng(seed)
  shapes = store.expected_shapes(_manifest(arch, size, widths))
  return {k: (rng.uniform(0.5, 2.0, s) if k.endswith("/var") else
              rng.normal(0, np.sqrt(2.0 / np.prod(s[:-1])) if k.endswith("/kernel") else 0.2,
                         s)).astype(np.float32)
          for k, s in shapes.items()}


@pytest.mark.parametrize("arch,size", CASES)
def test_import_gives_the_pytorch_forward(arch, size):
  rng = np.random.default_rng(0)
  sd = state_dict(rng, arch)
  expected = store.expected_shapes(_manifest(arch, size))
  flat = layouts.import_state_dict("t.pth", sd, LAYOUT[arch], expected, size, arch)
  x = rng.normal(0, 1, (3, size, size, 3)).astype(np.float32)
  ref = reference_forward(sd, x.transpose(0, 3, 1, 2), arch)
  assert ref.shape == (3, WAYS)
  np.testing.assert_allclose(_ours(arch, flat, x), ref, rtol=1e-5,
                             atol=1e-5 * np.abs(ref).max())
  assert layouts.infer_resnet("t.pth", sd, LAYOUT[arch], arch) == (WIDTHS, WAYS, True)


@pytest.mark.parametrize("arch", ["resnet10", "resnet18", "resnet12"])
def test_export_import_round_trip_bit_for_bit(arch):
  size = 84
  flat = _random_flat(arch, size, seed=1)
  layout = LAYOUT[arch]
  exported = layouts.export_state_dict(flat, layout, size, arch)
  # The exported names are the field's, as its modules build them.
  assert set(exported) == set(state_dict(np.random.default_rng(0), arch))
  assert all(exported[k].shape == () and exported[k].dtype == np.int64
             for k in exported if k.endswith("num_batches_tracked"))
  expected = store.expected_shapes(_manifest(arch, size))
  back = layouts.import_state_dict("e.pth", exported, layout, expected, size, arch)
  assert set(back) == set(flat)
  for k, v in flat.items():
    assert back[k].dtype == np.float32 and np.array_equal(back[k], v), k
  # and the other way round: their tensors -> ours -> theirs.
  sd = state_dict(np.random.default_rng(2), arch)
  again = layouts.export_state_dict(
      layouts.import_state_dict("t.pth", sd, layout, expected, size, arch), layout, size,
      arch)
  for k, v in sd.items():
    if not k.endswith("num_batches_tracked"):
      assert np.array_equal(again[k], v), k


@pytest.mark.parametrize("arch", ["resnet10", "resnet18", "resnet12"])
def test_batch_statistics_zoo_imports_without_running_stats(arch):
  sd = {k: v for k, v in state_dict(np.random.default_rng(3), arch).items()
        if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))}
  expected = store.expected_shapes(_manifest(arch, 84, running=False))
  flat = layouts.import_state_dict("t.pth", sd, LAYOUT[arch], expected, 84, arch)
  assert set(flat) == set(expected)
  assert set(layouts.export_state_dict(flat, LAYOUT[arch], 84, arch)) == set(sd)


@pytest.mark.parametrize("arch", ["resnet10", "resnet18", "resnet12"])
def test_a_state_dict_that_does_not_fit_is_refused_by_name(arch):
  layout = LAYOUT[arch]
  sd = state_dict(np.random.default_rng(4), arch)
  expected = store.expected_shapes(_manifest(arch, 84))
  imp = lambda d: layouts.import_state_dict("bad.pth", d, layout, expected, 84, arch)
  victim = sorted(k for k in sd if k.endswith("running_var"))[3]
  with pytest.raises(ZooError, match=rf"bad\.pth: does not fit .*missing \['{victim}'\]"):
    imp({k: v for k, v in sd.items() if k != victim})
  extra = "trunk.3.C3.weight" if layout == "dfml" else "features.layer2.0.conv4.weight"
  with pytest.raises(ZooError, match=rf"bad\.pth: .*unmatched names \['{extra}'\]"):
    imp(dict(sd, **{extra: sd[sorted(sd)[0]]}))
  conv = sorted(k for k in sd if k.endswith(("C2.weight", "conv2.weight")))[-1]
  with pytest.raises(ZooError, match=rf"bad\.pth: {conv} has shape"):
    imp(dict(sd, **{conv: sd[conv][:, :-1]}))
  head = "trunk.8.weight" if arch == "resnet10" else (
      "trunk.12.weight" if arch == "resnet18" else "classifier.weight")
  with pytest.raises(ZooError, match=rf"bad\.pth: {head} has shape"):
    imp(dict(sd, **{head: sd[head].T.copy()}))


def test_identify_tells_every_network_of_a_layout_by_its_names():
  from tests import test_zoo_import as conv4  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(8)
  cases = [(state_dict(rng, a), LAYOUT[a], {"name": a, "ways": WAYS, "widths": list(WIDTHS)},
            True) for a in ("resnet10", "resnet18", "resnet12")]
  for layout in ("dfml", "l2l"):
    cases.append((conv4.torch_style_state_dict(rng, layout, width=6, size=84), layout,
                  {"name": "conv4", "filters": 6, "ways": 5}, True))
  cases.append((conv4.torch_style_state_dict(rng, "dfml", width=6, size=84, running=False),
                "dfml", {"name": "conv4", "filters": 6, "ways": 5}, False))
  nobn = {k: v for k, v in state_dict(rng, "resnet10").items()
          if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))}
  cases.append((nobn, "dfml", {"name": "resnet10", "ways": WAYS, "widths": list(WIDTHS)},
                False))
  for sd, layout, arch, running in cases:
    assert layouts.identify("t.pth", sd, layout, 84) == (arch, running), arch
  # Names of another layout's network: none of this one's.
  with pytest.raises(ZooError, match=r"t\.pth: names no network of the dfml layout .*"
                     r"resnet18: trunk\.0\.weight and trunk\.12\.weight\)"):
    layouts.identify("t.pth", state_dict(rng, "resnet12"), "dfml", 84)
  with pytest.raises(ZooError, match=r"names no network of the l2l layout \(conv4: "
                     r"features\.0\.conv\.weight and classifier\.weight; resnet12:"):
    layouts.identify("t.pth", state_dict(rng, "resnet10"), "l2l", 84)


def test_layouts_refuse_what_they_do_not_hold():
  sd18 = state_dict(np.random.default_rng(5), "resnet18")
  with pytest.raises(ZooError, match=r"no trunk\.8\.weight for the dfml layout of resnet10"):
    layouts.infer_resnet("r18.pth", sd18, "dfml", "resnet10")
  with pytest.raises(ZooError, match="the dfml layout has no resnet12"):
    layouts.table("dfml", True, "resnet12")
  with pytest.raises(ZooError, match="the l2l layout has no resnet18"):
    layouts.table("l2l", True, "resnet18")
  # learn2learn's 5x5 average pool is global only on 80-95 pixel images.
  sd12 = state_dict(np.random.default_rng(6), "resnet12")
  expected = store.expected_shapes(_manifest("resnet12", 32))
  with pytest.raises(ZooError, match=r"r12\.pth: .*AvgPool2d\(5, stride=1\).* 2x2"):
    layouts.import_state_dict("r12.pth", sd12, "l2l", expected, 32, "resnet12")
  with pytest.raises(ZooError, match="AvgPool2d"):
    layouts.export_state_dict(_random_flat("resnet12", 32, 0), "l2l", 32, "resnet12")
  # A stem narrower than the first stage: the field's network, not ours (ours ties them).
  sd10 = state_dict(np.random.default_rng(7), "resnet10")
  sd10["trunk.0.weight"] = np.zeros((6, 3, 3, 3), np.float32)
  with pytest.raises(ZooError, match="a stem of 6 channels before a first stage of 4"):
    layouts.infer_resnet("s.pth", sd10, "dfml", "resnet10")


def test_resnet_modules():
  x = np.random.default_rng(8).normal(0, 1, (2, 32, 32, 3)).astype(np.float32)
  for arch in ("resnet10", "resnet12"):
    flat = _random_flat(arch, 32, seed=9)
    variables = traverse_util.unflatten_dict(flat, sep="/")
    feats = jax.jit(functools.partial(models.resnet(arch, WAYS, WIDTHS, head=False).apply,
                                      train=False))(variables, x)
    assert feats.shape == (2, WIDTHS[-1])
    dense = variables["params"]["Dense_0"]
    np.testing.assert_allclose(feats @ dense["kernel"] + dense["bias"],
                               _ours(arch, flat, x), rtol=1e-5, atol=1e-5)
  assert models.resnet("resnet18", 5).widths == (64, 128, 256, 512)
  assert models.resnet("resnet12", 5).widths == (64, 160, 320, 640)
  with pytest.raises(ValueError, match="needs a width change"):  # PyTorch's would fail too
    jax.eval_shape(models.resnet("resnet10", 5, (4, 8, 8, 16)).init, jax.random.key(0), x)


# --- Against PyTorch itself. ----------------------------------------------------------

def _torch_modules(torch):
  nn = torch.nn

  class SimpleBlock(nn.Module):
    """FREE network.py's SimpleBlock (maml=False)."""

    def __init__(self, indim, outdim, half_res):
      super().__init__()
      self.C1 = nn.Conv2d(indim, outdim, 3, stride=2 if half_res else 1, padding=1,
                          bias=False)
      self.BN1 = nn.BatchNorm2d(outdim)
      self.C2 = nn.Conv2d(outdim, outdim, 3, padding=1, bias=False)
      self.BN2 = nn.BatchNorm2d(outdim)
      self.identity = indim == outdim
      if not self.identity:
        self.shortcut = nn.Conv2d(indim, outdim, 1, 2 if half_res else 1, bias=False)
        self.BNshortcut = nn.BatchNorm2d(outdim)

    def forward(self, x):
      out = self.BN2(self.C2(torch.relu(self.BN1(self.C1(x)))))
      short = x if self.identity else self.BNshortcut(self.shortcut(x))
      return torch.relu(out + short)

  class ResNet(nn.Module):
    """FREE network.py's ResNet(SimpleBlock, blocks, widths, out_dim=ways), stem of
    widths[0] channels (FREE: 64, its widths[0])."""

    def __init__(self, blocks, widths, ways):
      super().__init__()
      trunk = [nn.Conv2d(3, widths[0], 3, stride=1, padding=1, bias=False),
               nn.BatchNorm2d(widths[0])]
      indim = widths[0]
      for i in range(4):
        for j in range(blocks[i]):
          trunk.append(SimpleBlock(indim, widths[i], i >= 1 and j == 0))
          indim = widths[i]
      trunk += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(widths[-1], ways)]
      self.trunk = nn.Sequential(*trunk)

    def forward(self, x):
      return self.trunk(x)

  class BasicBlock(nn.Module):
    """learn2learn resnet12.py's BasicBlock (DropBlock omitted: no tensors, identity in
    eval mode)."""

    def __init__(self, inplanes, planes, downsample):
      super().__init__()
      conv = lambda i: nn.Conv2d(i, planes, 3, stride=1, padding=1, bias=False)
      self.conv1, self.bn1 = conv(inplanes), nn.BatchNorm2d(planes)
      self.relu = nn.LeakyReLU(0.1)
      self.conv2, self.bn2 = conv(planes), nn.BatchNorm2d(planes)
      self.conv3, self.bn3 = conv(planes), nn.BatchNorm2d(planes)
      self.maxpool = nn.MaxPool2d(2)
      self.downsample = downsample

    def forward(self, x):
      out = self.relu(self.bn1(self.conv1(x)))
      out = self.relu(self.bn2(self.conv2(out)))
      out = self.bn3(self.conv3(out))
      return self.maxpool(self.relu(out + self.downsample(x)))

  class ResNet12Backbone(nn.Module):

    def __init__(self, widths):
      super().__init__()
      inplanes = 3
      for i, w in enumerate(widths):
        down = nn.Sequential(nn.Conv2d(inplanes, w, 1, stride=1, bias=False),
                             nn.BatchNorm2d(w))
        setattr(self, f"layer{i + 1}", nn.Sequential(BasicBlock(inplanes, w, down)))
        inplanes = w
      self.avgpool = nn.AvgPool2d(5, stride=1)
      self.flatten = nn.Flatten()

    def forward(self, x):
      for i in range(4):
        x = getattr(self, f"layer{i + 1}")(x)
      return self.flatten(self.avgpool(x))

  class ResNet12(nn.Module):
    """learn2learn's ResNet12(ways, hidden_size=widths[-1]) at `widths`."""

    def __init__(self, widths, ways):
      super().__init__()
      self.features = ResNet12Backbone(widths)
      self.classifier = nn.Linear(widths[-1], ways)

    def forward(self, x):
      return self.classifier(self.features(x))

  def build(arch, widths=WIDTHS):
    if arch == "resnet12":
      return ResNet12(widths, WAYS)
    return ResNet(BLOCKS[arch], widths, WAYS)

  return build


@pytest.mark.parametrize("arch", ["resnet10", "resnet18", "resnet12"])
def test_against_torch(arch):
  torch = pytest.importorskip("torch")
  build = _torch_modules(torch)
  size, layout = 84, LAYOUT[arch]
  torch.manual_seed(0)
  net = build(arch)
  with torch.no_grad():
    for m in net.modules():
      if isinstance(m, torch.nn.BatchNorm2d):
        m.weight.uniform_(0.5, 1.5)
        m.bias.normal_(0, 0.1)
        m.running_mean.normal_(0, 0.2)
        m.running_var.uniform_(0.5, 2.0)
  net.eval()
  x = np.random.default_rng(10).normal(0, 1, (3, size, size, 3)).astype(np.float32)
  torch_x = lambda: torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
  sd = {k: v.numpy() for k, v in net.state_dict().items()}
  assert set(sd) == set(state_dict(np.random.default_rng(0), arch))  # our numpy dicts
  expected = store.expected_shapes(_manifest(arch, size))
  flat = layouts.import_state_dict("t.pth", sd, layout, expected, size, arch)
  with torch.no_grad():
    theirs = net(torch_x()).numpy()
  np.testing.assert_allclose(_ours(arch, flat, x), theirs, rtol=1e-5,
                             atol=1e-5 * np.abs(theirs).max())
  # Our parameters exported load strictly into the module and give our logits.
  ours = _random_flat(arch, size, seed=11)
  exported = layouts.export_state_dict(ours, layout, size, arch)
  loaded = build(arch)
  loaded.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in exported.items()},
                         strict=True)
  with torch.no_grad():
    eval_theirs = loaded.eval()(torch_x()).numpy()
    train_theirs = loaded.train()(torch_x()).numpy()
  np.testing.assert_allclose(eval_theirs, _ours(arch, ours, x), rtol=1e-5,
                             atol=1e-5 * np.abs(eval_theirs).max())
  np.testing.assert_allclose(train_theirs, _ours(arch, ours, x, train=True), rtol=1e-4,
                             atol=1e-4 * np.abs(train_theirs).max())
