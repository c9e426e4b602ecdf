"""Importing teachers trained elsewhere into a zoo folder (store.py).

Formats (`FORMATS`; docs/zoo_format.md has an example of each):

  dfml         FREE / TGR / PURER-Plus / BiDf-MKD / Trustworthy-DFML teacher files,
               `model_specific_{i}.pth` = {'teacher': state_dict, 'specific': [class
               indices]}, the CloserLook ConvNet or ResNet-10/18 (layouts.py "dfml");
               the indices point into the list the user passes as class_names (the
               meta-training classes in order of first appearance in the split file)
  dfml_bare    PURER's bare state dicts `model_{i}.pth` of the same network; each model's
               classes from `model_classes` (a file, line i: model i's class indices)
  l2l          learn2learn `CNN4` / `MiniImagenetCNN` / `ResNet12` state dicts, `*.pth` in
               name order, classes from `model_classes`
  safetensors  a folder of `.safetensors` files and a `zoo.json` the user writes: our
               manifest (store.py) whose models may omit "sha256", with an optional
               top-level "layout" ("ours", "dfml" or "l2l") naming the files' tensor names

`.pth` files are read by pth.py (no torch, nothing unpickled but tensors and plain
containers). Each file's network is the one of the layout whose name table it fits
(layouts.identify: a Conv4 of any width; for dfml also the field's ResNet-10/18, for l2l
learn2learn's ResNet12), with its sizes read from its tensors; files of several
architectures make a mixed zoo (a model not of the first file's architecture names its own
in the manifest; the zoo is read as one group per architecture). Every model has the first
file's ways and BatchNorm statistics (stored or not), else the zoo is refused naming the
file; NaN/Inf, a wrong shape, a missing or an unexpected name refuse the zoo naming the
file. The folder is written only when every model has been read and checked.
"""

import json
import os
import re

import numpy as np

from dfl2l_jax import metrics
from dfl2l_jax.errors import ZooError
from dfl2l_jax.zoo import layouts
from dfl2l_jax.zoo import pth
from dfl2l_jax.zoo import store

FORMATS = ("dfml", "dfml_bare", "l2l", "safetensors")
_PATTERNS = {"dfml": re.compile(r"^model_specific_(\d+)\.pth$"),
             "dfml_bare": re.compile(r"^model_(\d+)\.pth$"),
             "l2l": re.compile(r"^(.*)\.pth$")}
_LAYOUT = {"dfml": "dfml", "dfml_bare": "dfml", "l2l": "l2l"}
_USER_FIELDS = store.FIELDS + ("layout",)


def read_class_names(path):
  """One class name a line, in index order (blank lines at the end ignored)."""
  try:
    with open(path, encoding="utf-8") as f:
      names = [ln.strip() for ln in f.read().splitlines()]
  except (OSError, UnicodeDecodeError) as e:
    raise ZooError(f"{path}: cannot be read as text ({e})") from None
  while names and not names[-1]:
    names.pop()
  if not names or not all(names):
    raise ZooError(f"{path}: expected one class name a line, with no blank line between")
  return names


def read_model_classes(path):
  """Line i: model i's class indices, separated by commas or spaces."""
  try:
    with open(path, encoding="utf-8") as f:
      lines = [ln.strip() for ln in f.read().splitlines() if ln.strip()]
    return [[int(v) for v in re.split(r"[,\s]+", ln)] for ln in lines]
  except (OSError, UnicodeDecodeError, ValueError) as e:
    raise ZooError(f"{path}: expected one line of class indices per model, e.g. "
                   f"'3, 17, 5, 40, 8' ({e})") from None


def _natural_key(name):
  return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def list_files(fmt, src):
  """The model files of `fmt` in `src`, in model order."""
  if not os.path.isdir(src):
    raise ZooError(f"{src}: no such folder (--src)")
  pattern = _PATTERNS[fmt]
  found = [n for n in os.listdir(src) if pattern.match(n)]
  if fmt in ("dfml", "dfml_bare"):
    found.sort(key=lambda n: int(pattern.match(n).group(1)))
  else:
    found.sort(key=_natural_key)
  if len(found) < 2:
    expected = {"dfml": "model_specific_{i}.pth", "dfml_bare": "model_{i}.pth",
                "l2l": "*.pth"}[fmt]
    raise ZooError(f"{src}: a zoo needs at least 2 models; found {len(found)} file(s) named "
                   f"{expected} for --format={fmt}")
  return [os.path.join(src, n) for n in found]


def _state_dict(fmt, path):
  """(state dict {name: array}, classes or None) of one `.pth` file."""
  obj = pth.load(path)
  if fmt == "dfml":
    if not isinstance(obj, dict) or set(obj) != {"teacher", "specific"}:
      keys = sorted(obj)[:6] if isinstance(obj, dict) else type(obj).__name__
      raise ZooError(f"{path}: a dfml teacher file holds {{'teacher': state_dict, "
                     f"'specific': [classes]}}, this one {keys} (--format=dfml_bare for "
                     "bare state dicts)")
    sd, classes = obj["teacher"], obj["specific"]
    if (not isinstance(classes, (list, tuple))
        or not all(isinstance(c, int) and not isinstance(c, bool) for c in classes)):
      raise ZooError(f"{path}: 'specific' must be a list of class indices, got {classes!r}")
    classes = list(classes)
  else:
    sd, classes = obj, None
  if not isinstance(sd, dict) or not all(isinstance(v, np.ndarray) for v in sd.values()):
    raise ZooError(f"{path}: expected a state dict (names -> tensors)")
  return sd, classes


def _check_like_first(path, arch, running, first):
  """A zoo's models may differ in architecture (a mixed zoo), not in ways nor in how
  their BatchNorm normalises."""
  first_arch, first_running, first_file = first
  if arch["ways"] != first_arch["ways"]:
    raise ZooError(f"{path}: a {arch['ways']}-way network, unlike {first_file} "
                   f"({first_arch['ways']}-way): every model of a zoo has the same ways")
  if running != first_running:
    stored = lambda r: "stored" if r else "absent"
    raise ZooError(f"{path}: BatchNorm statistics {stored(running)}, unlike {first_file} "
                   f"({stored(first_running)}): every model of a zoo normalises alike")


def _model_entry(path, src, classes, ways, n_names, where):
  if classes is None:
    raise ZooError(f"{where}: no classes for {os.path.basename(path)} (--model_classes)")
  if len(classes) != ways or not all(0 <= c < n_names for c in classes):
    raise ZooError(f"{path}: classes {classes} must be {ways} indices into the {n_names} "
                   f"class names (its head has {ways} outputs)")
  return {"classes": [int(c) for c in classes], "accuracy": None,
          "source": os.path.relpath(path, src)}


def import_pth(fmt, src, out, *, class_names, image_size, mean, std, model_classes=None,
               channel_order="RGB"):
  """Imports the `.pth` teachers of `fmt` in `src` into the zoo folder `out`."""
  files = list_files(fmt, src)
  if fmt != "dfml" and model_classes is None:
    raise ZooError(f"--format={fmt} files do not say their classes: pass --model_classes "
                   "(line i: model i's class indices into --class_names)")
  if model_classes is not None and len(model_classes) != len(files):
    raise ZooError(f"--model_classes gives {len(model_classes)} lines, {src} holds "
                   f"{len(files)} model files")
  layout = _LAYOUT[fmt]
  first, manifest, flats, entries, expected = None, None, [], [], {}
  for i, path in enumerate(files):
    sd, classes = _state_dict(fmt, path)
    arch, running = layouts.identify(path, sd, layout, image_size)
    if first is None:
      first = (arch, running, os.path.basename(path))
      manifest = _manifest(arch, running, image_size, channel_order, mean, std, class_names,
                           [], {"name": "dfl2l_jax.zoo.importer", "format": fmt})
    _check_like_first(path, arch, running, first)
    key = json.dumps(arch, sort_keys=True)
    if key not in expected:
      expected[key] = store.expected_shapes(manifest, arch)
    if classes is None and model_classes is not None:
      classes = model_classes[i]
    entry = _model_entry(path, src, classes, arch["ways"], len(class_names), src)
    if arch != manifest["architecture"]:  # a mixed zoo: the model names its own
      entry["architecture"] = arch
    entries.append(entry)
    flat = layouts.import_state_dict(path, sd, layout, expected[key], image_size,
                                     arch["name"])
    store.check_tensors(path, flat, expected[key])
    flats.append(flat)
  manifest["models"] = entries
  return _write(out, manifest, flats)


def _manifest(arch, running, image_size, channel_order, mean, std, class_names, entries,
              producer):
  return {"format": store.FORMAT, "version": store.VERSION, "architecture": arch,
          "image_size": int(image_size), "channel_order": channel_order,
          "normalization": {"mean": [float(v) for v in mean], "std": [float(v) for v in std]},
          "batch_norm": "running" if running else "batch", "class_names": list(class_names),
          "models": entries, "producer": producer}


def _write(out, manifest, flats):
  for i, entry in enumerate(manifest["models"]):
    entry.setdefault("file", store.model_file_name(i))
    entry.setdefault("sha256", "0" * 64)
  store.validate_manifest(manifest, f"{out} (the manifest to write)")
  groups = []
  for arch, indices in store.group_indices(manifest):
    params, stats = store.stack([flats[i] for i in indices])
    groups.append(store.ZooGroup(store.group_name(arch), arch, np.asarray(indices), params,
                                 stats))
  written = store.write(out, manifest, groups=groups)
  metrics.log.info("wrote %s: %d models (%s)", out, len(flats),
                   ", ".join(f"{m['source']}" for m in written["models"][:3])
                   + (" ..." if len(flats) > 3 else ""))
  return written


def import_safetensors(src, out):
  """Imports a folder of `.safetensors` files described by the user's `src/zoo.json`."""
  path = os.path.join(src, store.MANIFEST)
  try:
    with open(path, encoding="utf-8") as f:
      user = json.load(f)
  except FileNotFoundError:
    raise ZooError(f"{path}: missing; --format=safetensors needs a zoo.json beside the "
                   "files (docs/zoo_format.md)") from None
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    raise ZooError(f"{path}: not readable JSON ({e})") from None
  if not isinstance(user, dict):
    raise ZooError(f"{path}: expected a JSON object")
  unknown = sorted(set(user) - set(_USER_FIELDS))
  if unknown:
    raise ZooError(f"{path}: unknown field(s) {unknown} (known: {list(_USER_FIELDS)})")
  layout = user.pop("layout", "ours")
  if layout not in layouts.LAYOUTS:
    raise ZooError(f"{path}: layout must be one of {layouts.LAYOUTS}, got {layout!r}")
  manifest = dict(user)
  given = {}
  for i, m in enumerate(manifest.get("models") or []):
    if isinstance(m, dict):
      given[i] = m.get("sha256")
      manifest["models"][i] = dict(m, sha256=m.get("sha256") or "0" * 64)
  store.validate_manifest(manifest, path)
  expected = {}  # per architecture: a mixed zoo names one per model
  flats = []
  for i, m in enumerate(manifest["models"]):
    file = os.path.join(src, m["file"])
    arch = store.model_architecture(manifest, i)
    key = json.dumps(arch, sort_keys=True)
    if key not in expected:
      expected[key] = store.expected_shapes(manifest, arch)
    tensors = store.read_safetensors(file, given[i], expected_by=path)
    flat = layouts.import_state_dict(file, tensors, layout, expected[key],
                                     manifest["image_size"], arch["name"])
    store.check_tensors(file, flat, expected[key])
    flats.append(flat)
    m["source"] = m.get("source") or m["file"]
    del m["file"], m["sha256"]
  manifest["producer"] = dict(manifest.get("producer") or {}, imported_by=
                              "dfl2l_jax.zoo.importer", layout=layout)
  return _write(out, manifest, flats)


def import_zoo(fmt, src, out, *, class_names=None, image_size=None, mean=None, std=None,
               model_classes=None, channel_order="RGB"):
  """Imports the zoo in `src` (format `fmt`) into the zoo folder `out`; returns the
  manifest written. Checks what it can before reading any model."""
  if fmt not in FORMATS:
    raise ZooError(f"--format={fmt!r}: expected one of {', '.join(FORMATS)}")
  if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
    raise ZooError(f"{out}: exists and is not an empty folder; choose a new --out")
  if fmt == "safetensors":
    return import_safetensors(src, out)
  missing = [flag for flag, v in (("--class_names", class_names), ("--image_size", image_size),
                                  ("--mean", mean), ("--std", std)) if v is None]
  if missing:
    raise ZooError(f"--format={fmt} files do not carry {', '.join(missing)}: pass "
                   f"{'them' if len(missing) > 1 else 'it'} (docs/zoo_format.md)")
  for name, v in (("--mean", mean), ("--std", std)):
    if len(v) != 3 or not all(np.isfinite(v)) or (name == "--std" and min(v) <= 0):
      raise ZooError(f"{name}={','.join(map(str, v))}: expected 3 finite numbers"
                     + (", positive" if name == "--std" else ""))
  if channel_order not in store.CHANNEL_ORDERS:
    raise ZooError(f"--channel_order={channel_order!r}: expected one of "
                   f"{store.CHANNEL_ORDERS}")
  return import_pth(fmt, src, out, class_names=class_names, image_size=image_size,
                    mean=mean, std=std, model_classes=model_classes,
                    channel_order=channel_order)
