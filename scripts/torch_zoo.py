r"""A PyTorch teacher zoo made the way the data-free meta-learning field makes its own.

FREE, TGR, PURER-Plus and BiDf-MKD all pretrain their zoo with the same routine and
release none of it. This script follows that routine so that a user, and our CI, can
try our import path without anyone's zoo:

  python scripts/torch_zoo.py --dataset=mini_imagenet32 \
      --manual_dir=/data/mini-imagenet --num_teachers=40 --epochs=60 \
      --out=zoo/mi32 --seed=0

What it does, per teacher i (the field's protocol):

- 5 classes drawn without replacement from the meta-training classes by
  `np.random.default_rng([seed, i])`; different teachers' class sets may overlap.
- Per class, the first 80% of its images (in the split file's order) train the
  teacher and the last 20% are held out; the held-out accuracy of the saved weights
  is logged and recorded.
- The CloserLook Conv4 (`ConvNet` below: four blocks of 3x3 conv with bias -> BN ->
  ReLU -> 2x2 max pool, width 32, flatten, linear head), or with `--architectures` a
  mixed zoo of Conv4s and the field's ResNet-10/18 (`ResNet` below, e.g.
  `--architectures=conv4-32:30,resnet10-8-16-32-64:10`: teachers 0-29 Conv4s, 30-39
  ResNets, each with the classes teacher i of a Conv4 zoo gets), initialised by
  `torch.manual_seed` per teacher with the field's init; Adam at lr 0.01, batch 128,
  cross-entropy, gradients clipped to norm 50, no augmentation, a constant learning
  rate (their step decay at epoch 70 never comes within 60 epochs) and the last
  epoch's weights (their "best epoch" copy is not a copy).
- Inputs scaled to [0, 1] and normalised with CIFAR-100's mean/std at 32x32 and
  ImageNet's at 84x84, as they do.

Outputs in OUT:

- `model_specific_{i}.pth`: `torch.save({'teacher': state_dict, 'specific':
  [5 class indices]})`, the field's file. Output unit j of the teacher is class
  `specific[j]`. Its state dict has the field's names, each conv and BN tensor under
  two names (`trunk.{b}.C.*` = `trunk.{b}.trunk.0.*`, `trunk.{b}.BN.*` =
  `trunk.{b}.trunk.1.*`) and the head as `trunk.5.*` (a ResNet's: its stem
  `trunk.0`/`trunk.1`, block j `trunk.{j+2}.{C1,BN1,C2,BN2,shortcut,BNshortcut}`, its head
  after the pooling and the flatten). `launch.import_zoo --format=dfml` reads a mixed
  folder as a mixed zoo.
- `class_names.txt`: the meta-training class names, one a line; line k names class
  index k. This is the file to pass as `--class_names` when importing the zoo. The
  indices follow our loader's class order (WordNet ids sorted); the field numbers
  classes by first appearance in the split CSV, which is the same order for the
  standard Mini-ImageNet CSVs (grouped by class, in sorted order).
- `teachers.json`: {"settings": {...}, "teachers": [{"index", "file", "specific",
  "classes", "heldout_accuracy" (a fraction in [0, 1], of the saved weights),
  "num_train", "num_heldout", and "architecture" in a mixed zoo}, ...]} in index order.

Every file is written atomically, and a rerun skips each teacher whose file exists and
loads, so an interrupted run is resumed by running the same command again (a larger
--num_teachers extends a zoo: teacher i depends only on the seed and i). Same seed,
same zoo, on one machine with one thread count.

PyTorch is an optional dependency of this project; only this script needs it.
"""

import argparse
import json
import math
import os
import re
import sys
import time

import numpy as np

try:
  import torch
  from torch import nn
  import torch.nn.functional as F
except ImportError:
  sys.exit("scripts/torch_zoo.py needs PyTorch: pip install torch")

WAYS = 5
TRAIN_FRACTION = 0.8
GRAD_CLIP_NORM = 50.0
CIFAR_MEAN, CIFAR_STD = (0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
# The field's normalisation per dataset of our loader: CIFAR's statistics for the 32x32
# protocol (mini_imagenet32 stands in for CIFAR-FS), ImageNet's at 84x84.
NORMALISATION = {
    "cifar_fs": (CIFAR_MEAN, CIFAR_STD),
    "mini_imagenet32": (CIFAR_MEAN, CIFAR_STD),
    "mini_imagenet": (IMAGENET_MEAN, IMAGENET_STD),
}


class Flatten(nn.Module):
  """(n, c, h, w) -> (n, c * h * w), in PyTorch's (c, h, w) order."""

  def forward(self, x):
    return x.view(x.size(0), -1)


def _init_conv_bn(module):
  """The field's init (FREE's `init_layer`): conv weights N(0, sqrt(2 / (k * k * out))),
  BatchNorm scale 1 and shift 0."""
  with torch.no_grad():
    if isinstance(module, nn.Conv2d):
      k = module.kernel_size[0] * module.kernel_size[1] * module.out_channels
      module.weight.normal_(0.0, math.sqrt(2.0 / k))
    elif isinstance(module, nn.BatchNorm2d):
      module.weight.fill_(1.0)
      module.bias.fill_(0.0)


class ConvBlock(nn.Module):
  """3x3 conv (bias, padding 1) -> BatchNorm2d -> ReLU -> MaxPool2d(2).

  As in the CloserLook code, the layers are attributes (`C`, `BN`) and also the items
  of the block's own `Sequential` `trunk`, so the state dict names each tensor twice.
  """

  def __init__(self, indim, outdim):
    super().__init__()
    self.C = nn.Conv2d(indim, outdim, 3, padding=1)
    self.BN = nn.BatchNorm2d(outdim)
    self.relu = nn.ReLU(inplace=True)
    self.pool = nn.MaxPool2d(2)
    _init_conv_bn(self.C)  # conv biases keep PyTorch's default
    _init_conv_bn(self.BN)
    self.trunk = nn.Sequential(self.C, self.BN, self.relu, self.pool)

  def forward(self, x):
    return self.trunk(x)


class ConvNet(nn.Module):
  """The field's Conv4 teacher: `trunk` = 4 `ConvBlock`s, `Flatten`, `Linear`.

  Args:
    width: channels of every conv layer (the field: 32).
    ways: output units.
    image_size: input height and width; the head has width * (image_size // 16)^2
      inputs (128 at 32x32, 800 at 84x84 for width 32).
  """

  def __init__(self, width=32, ways=WAYS, image_size=32):
    super().__init__()
    self.width, self.ways, self.image_size = width, ways, image_size
    blocks = [ConvBlock(3 if b == 0 else width, width) for b in range(4)]
    side = image_size >> 4
    self.trunk = nn.Sequential(*blocks, Flatten(), nn.Linear(width * side * side, ways))

  def forward(self, x):
    return self.trunk(x)


class SimpleBlock(nn.Module):
  """The CloserLook residual block: 3x3 conv (no bias, stride 2 where it halves the
  map) -> BN -> ReLU -> 3x3 conv -> BN, plus the input (through a 1x1 conv and BN where
  the width changes), then ReLU. Layers `C1`, `BN1`, `C2`, `BN2`, `shortcut`,
  `BNshortcut`, as the field names them."""

  def __init__(self, indim, outdim, half_res):
    super().__init__()
    self.C1 = nn.Conv2d(indim, outdim, 3, stride=2 if half_res else 1, padding=1, bias=False)
    self.BN1 = nn.BatchNorm2d(outdim)
    self.C2 = nn.Conv2d(outdim, outdim, 3, padding=1, bias=False)
    self.BN2 = nn.BatchNorm2d(outdim)
    self.identity = indim == outdim
    if not self.identity:
      self.shortcut = nn.Conv2d(indim, outdim, 1, stride=2 if half_res else 1, bias=False)
      self.BNshortcut = nn.BatchNorm2d(outdim)
    self.apply(_init_conv_bn)

  def forward(self, x):
    out = self.BN2(self.C2(F.relu(self.BN1(self.C1(x)))))
    short = x if self.identity else self.BNshortcut(self.shortcut(x))
    return F.relu(out + short)


RESNET_BLOCKS = {"resnet10": (1, 1, 1, 1), "resnet18": (2, 2, 2, 2)}


class ResNet(nn.Module):
  """The field's ResNet-10 / -18 teacher (`ResNet(SimpleBlock, [1,1,1,1] or [2,2,2,2],
  widths)`): `trunk` = a 3x3 conv stem of widths[0] channels (no bias) and its BN, the
  blocks (stages 2-4 start at half resolution), AdaptiveAvgPool2d(1), Flatten, Linear.

  Args:
    name: "resnet10" or "resnet18".
    widths: the 4 stages' channels (the field: 64, 128, 256, 512).
    ways: output units.
  """

  def __init__(self, name, widths=(64, 128, 256, 512), ways=WAYS):
    super().__init__()
    layers = [nn.Conv2d(3, widths[0], 3, padding=1, bias=False), nn.BatchNorm2d(widths[0])]
    indim = widths[0]
    for stage, n in enumerate(RESNET_BLOCKS[name]):
      for j in range(n):
        layers.append(SimpleBlock(indim, widths[stage], stage >= 1 and j == 0))
        indim = widths[stage]
    layers += [nn.AdaptiveAvgPool2d(1), Flatten(), nn.Linear(indim, ways)]
    for m in layers[:2]:
      _init_conv_bn(m)
    self.trunk = nn.Sequential(*layers)

  def forward(self, x):
    return self.trunk(x)


def parse_architectures(spec):
  """[(name, count)] of a spec "NAME:COUNT,...", NAME conv4-W (width W), resnet10 or
  resnet18 (the field's widths) or either with 4 widths (resnet10-16-32-64-128); teachers
  are numbered across the groups in that order."""
  groups = []
  for part in spec.split(","):
    name, sep, count = part.strip().partition(":")
    m = re.fullmatch(r"conv4-\d+|resnet(?:10|18)(?:(?:-\d+){4})?", name)
    if not sep or m is None or not count.isdigit() or int(count) < 1:
      raise ValueError(f"--architectures={spec!r}: {part.strip()!r} is not NAME:COUNT with "
                       "NAME conv4-W, resnet10, resnet18 or a ResNet with 4 widths "
                       "(resnet10-16-32-64-128) and COUNT a positive integer")
    if any(g[0] == name for g in groups):
      raise ValueError(f"--architectures={spec!r}: {name} is named twice")
    widths = [int(w) for w in name.split("-")[1:]] if name.startswith("resnet") else []
    if any(a == b for a, b in zip(widths, widths[1:])):
      raise ValueError(f"--architectures={spec!r}: {name} has two stages of one width; the "
                       "field's block keeps its input as the shortcut when the width does not "
                       "change, which a stage that halves the map cannot")
    groups.append((name, int(count)))
  return groups


def build(name, image_size):
  """The teacher network of an architecture name (parse_architectures)."""
  parts = name.split("-")
  if parts[0] == "conv4":
    return ConvNet(int(parts[1]), WAYS, image_size)
  widths = tuple(int(w) for w in parts[1:]) or (64, 128, 256, 512)
  return ResNet(parts[0], widths, WAYS)


def _format_seconds(seconds):
  seconds = int(round(seconds))
  if seconds >= 3600:
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
  if seconds >= 60:
    return f"{seconds // 60}m{seconds % 60:02d}s"
  return f"{seconds}s"


def _write_atomic(path, write):
  """Calls write(tmp_path), then moves tmp_path to path."""
  tmp = f"{path}.tmp{os.getpid()}"
  try:
    write(tmp)
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def _write_text_atomic(path, text):
  def write(tmp):
    with open(tmp, "w") as f:
      f.write(text)
  _write_atomic(path, write)


def to_inputs(images, image_size, mean, std):
  """uint8 (n, h, w, 3) -> normalised float32 (n, 3, image_size, image_size)."""
  x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255.0
  if x.shape[-1] != image_size or x.shape[-2] != image_size:
    x = F.interpolate(x, size=(image_size, image_size), mode="bilinear",
                      align_corners=False, antialias=True)
  mean = torch.tensor(mean, dtype=torch.float32)[None, :, None, None]
  std = torch.tensor(std, dtype=torch.float32)[None, :, None, None]
  return ((x - mean) / std).contiguous()


def _split(labels, specific):
  """Indices of the train and held-out images of classes `specific`, and their
  relative labels (class specific[j] -> j): per class its first 80% train."""
  train, heldout, train_y, heldout_y = [], [], [], []
  for j, c in enumerate(specific):
    idx = np.flatnonzero(labels == c)
    cut = int(len(idx) * TRAIN_FRACTION)
    train.append(idx[:cut])
    heldout.append(idx[cut:])
    train_y.append(np.full(cut, j))
    heldout_y.append(np.full(len(idx) - cut, j))
  cat = np.concatenate
  return cat(train), cat(heldout), cat(train_y), cat(heldout_y)


def _accuracy(model, x, y, batch_size):
  """Top-1 accuracy of `model` in eval mode (BN on its running statistics)."""
  if len(y) == 0:
    return float("nan")
  model.eval()
  correct = 0
  with torch.no_grad():
    for start in range(0, len(y), batch_size):
      logits = model(x[start:start + batch_size])
      correct += int((logits.argmax(1) == y[start:start + batch_size]).sum())
  return correct / len(y)


def _load_teacher(path, name, image_size):
  """(model, specific) from a teacher file, or None if it cannot be read (then it is
  trained again); a file that reads but holds another network than `name` (an
  architecture of parse_architectures) raises ValueError."""
  try:
    saved = torch.load(path, weights_only=True)
    state, specific = saved["teacher"], [int(c) for c in saved["specific"]]
  except Exception:  # pylint: disable=broad-except
    return None
  model = build(name, image_size)
  try:
    model.load_state_dict(state, strict=True)
  except RuntimeError as e:
    raise ValueError(f"{path} holds another network than {name} at "
                     f"{image_size}x{image_size}: use its settings or another --out "
                     f"({str(e).splitlines()[0]})") from e
  return model, specific


def train_teachers(images, labels, class_names, out_dir, *, num_teachers, epochs, seed,
                   width=32, batch_size=128, lr=0.01, image_size=None, mean=None, std=None,
                   log=print, dataset=None, architectures=None):
  """Trains (or resumes) a zoo of teachers as the field does; see the module doc.

  Args:
    images: uint8 (n, h, w, 3) meta-training images.
    labels: int (n,) class indices into `class_names`; within a class, images in the
      split file's order (the first 80% train, the rest are held out).
    class_names: the meta-training classes; written to OUT/class_names.txt.
    out_dir: where the teacher files, class_names.txt and teachers.json go.
    num_teachers: teachers 0 .. num_teachers - 1.
    epochs: passes over each teacher's training images (the field: 60).
    seed: teacher i draws its classes and batches from `default_rng([seed, i])` and
      seeds its init with `torch.manual_seed` from the same stream.
    width: conv channels (the field: 32).
    architectures: None (every teacher a Conv4 of `width`), or a mixed zoo
      "NAME:COUNT,..." (parse_architectures), the counts adding up to num_teachers:
      teacher i is of the group that i falls in, counting in that order; its classes,
      init seed and batches are those of teacher i of a one-architecture zoo.
    batch_size, lr: Adam's batch size and learning rate (the field: 128, 0.01).
    image_size: input size; None: the images' own (others are resized bilinearly).
    mean, std: per-channel normalisation of [0, 1] inputs; None: CIFAR-100's at 32x32,
      ImageNet's otherwise.
    log: called with one progress line at a time.
    dataset: a name recorded in teachers.json (optional).

  Returns:
    The teachers.json content (a dict).

  Raises:
    ValueError: on bad inputs, or when out_dir holds a zoo made with other settings.
  """
  images, labels = np.asarray(images), np.asarray(labels)
  if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
    raise ValueError(f"images must be uint8 (n, h, w, 3), got {images.dtype} {images.shape}")
  if labels.shape != images.shape[:1]:
    raise ValueError(f"labels {labels.shape} do not match images {images.shape}")
  class_names = [str(c) for c in class_names]
  num_classes = len(class_names)
  if num_classes < WAYS:
    raise ValueError(f"need at least {WAYS} classes, got {num_classes}")
  if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
    raise ValueError(f"labels outside [0, {num_classes})")
  image_size = int(image_size or images.shape[1])
  if image_size < 16:
    raise ValueError(f"image_size {image_size} is below 16 (four 2x2 poolings)")
  default_mean, default_std = (CIFAR_MEAN, CIFAR_STD) if image_size == 32 else (
      IMAGENET_MEAN, IMAGENET_STD)
  mean = [float(m) for m in (default_mean if mean is None else mean)]
  std = [float(s) for s in (default_std if std is None else std)]

  if architectures is None:
    names = [f"conv4-{int(width)}"] * num_teachers
  else:
    groups = parse_architectures(architectures)
    if sum(c for _, c in groups) != num_teachers:
      raise ValueError(f"--architectures={architectures!r} counts "
                       f"{sum(c for _, c in groups)} teachers, --num_teachers {num_teachers}")
    names = [name for name, count in groups for _ in range(count)]

  os.makedirs(out_dir, exist_ok=True)
  settings = {"seed": int(seed), "epochs": int(epochs), "width": int(width),
              "ways": WAYS, "image_size": image_size, "batch_size": int(batch_size),
              "lr": float(lr), "mean": mean, "std": std, "num_classes": num_classes,
              "train_fraction": TRAIN_FRACTION, "grad_clip_norm": GRAD_CLIP_NORM}
  if architectures is not None:  # a zoo of one architecture keeps its old settings
    settings["architectures"] = architectures
  names_path = os.path.join(out_dir, "class_names.txt")
  names_text = "".join(f"{c}\n" for c in class_names)
  if os.path.exists(names_path):
    with open(names_path) as f:
      if f.read() != names_text:
        raise ValueError(f"{names_path} lists other classes: this zoo was made from "
                         "other data; use another --out")
  else:
    _write_text_atomic(names_path, names_text)
  json_path = os.path.join(out_dir, "teachers.json")
  previous = {}
  if os.path.exists(json_path):
    with open(json_path) as f:
      old = json.load(f)
    if old.get("settings") != settings:
      raise ValueError(f"{json_path} was written with other settings "
                       f"({old.get('settings')}, now {settings}); use another --out")
    previous = {t["index"]: t for t in old.get("teachers", [])}

  def write_json(records):
    content = {"dataset": dataset, "class_names_file": "class_names.txt",
               "settings": settings, "teachers": records}
    _write_text_atomic(json_path, json.dumps(content, indent=1) + "\n")
    return content

  records, to_train = [], []
  for i in range(num_teachers):
    rng = np.random.default_rng([seed, i])
    specific = [int(c) for c in rng.choice(num_classes, WAYS, replace=False)]
    path = os.path.join(out_dir, f"model_specific_{i}.pth")
    loaded = _load_teacher(path, names[i], image_size) if os.path.exists(path) else None
    if loaded is None:
      to_train.append((i, rng, specific, path))
      continue
    model, saved_specific = loaded
    if saved_specific != specific:
      raise ValueError(f"{path} was trained on classes {saved_specific}, but seed {seed} "
                       f"draws {specific}: use the seed that made it or another --out")
    record = previous.get(i)
    if record is None:  # The file survived but its record did not: measure again.
      train_idx, held_idx, _, held_y = _split(labels, specific)
      acc = _accuracy(model, to_inputs(images[held_idx], image_size, mean, std),
                      torch.from_numpy(held_y), batch_size)
      record = _record(i, specific, class_names, acc, len(train_idx), len(held_idx),
                       names[i] if architectures else None)
    records.append(record)
  if records:
    log(f"{len(records)} of {num_teachers} teachers already in {out_dir}; "
        f"{len(to_train)} to train")
    write_json(sorted(records, key=lambda r: r["index"]))

  start = time.time()
  epochs_total = len(to_train) * epochs
  epochs_done = 0
  report_every = max(1, math.ceil(epochs / 4))
  for n, (i, rng, specific, path) in enumerate(to_train):
    t0 = time.time()
    train_idx, held_idx, train_y, held_y = _split(labels, specific)
    x_train = to_inputs(images[train_idx], image_size, mean, std)
    y_train = torch.from_numpy(train_y)
    torch.manual_seed(int(rng.integers(2**62)))
    model = build(names[i], image_size)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    for epoch in range(epochs):
      model.train()
      order = torch.from_numpy(rng.permutation(len(train_idx)))
      total_loss = 0.0
      for b in range(0, len(order), batch_size):
        batch = order[b:b + batch_size]
        if len(batch) < 2:  # BatchNorm in training mode needs two examples.
          continue
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x_train[batch]), y_train[batch])
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP_NORM)
        optimizer.step()
        total_loss += loss.item() * len(batch)
      epochs_done += 1
      if (epoch + 1) % report_every == 0 and epoch + 1 < epochs:
        elapsed = time.time() - start
        eta = elapsed / epochs_done * (epochs_total - epochs_done)
        log(f"teacher {i}: epoch {epoch + 1}/{epochs}, train loss "
            f"{total_loss / max(1, len(order)):.3f} (ETA {_format_seconds(eta)})")
    acc = _accuracy(model, to_inputs(images[held_idx], image_size, mean, std),
                    torch.from_numpy(held_y), batch_size)

    def save(tmp, model=model, specific=specific):
      torch.save({"teacher": model.state_dict(), "specific": specific}, tmp)
    _write_atomic(path, save)
    records.append(_record(i, specific, class_names, acc, len(train_idx), len(held_idx),
                           names[i] if architectures else None))
    write_json(sorted(records, key=lambda r: r["index"]))
    seconds = time.time() - t0
    elapsed = time.time() - start
    eta = elapsed / epochs_done * (epochs_total - epochs_done)
    log(f"teacher {i} ({names[i]}, {n + 1}/{len(to_train)}): classes {specific}, held-out "
        f"accuracy {acc:.3f}, {seconds:.1f} s ({epochs * len(train_idx) / seconds:.0f} "
        f"training images/s), ETA {_format_seconds(eta)}")
  return write_json(sorted(records, key=lambda r: r["index"]))


def _record(i, specific, class_names, accuracy, num_train, num_heldout, architecture=None):
  record = {"index": i, "file": f"model_specific_{i}.pth", "specific": specific,
            "classes": [class_names[c] for c in specific],
            "heldout_accuracy": None if math.isnan(accuracy) else accuracy,
            "num_train": int(num_train), "num_heldout": int(num_heldout)}
  if architecture is not None:  # a mixed zoo's teacher
    record["architecture"] = architecture
  return record


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--dataset", required=True, choices=sorted(NORMALISATION))
  parser.add_argument("--manual_dir", default=None,
                      help="the dataset's source files (not needed once it is prepared)")
  parser.add_argument("--data_dir", default=None,
                      help="tfds data dir (default ~/tensorflow_datasets)")
  parser.add_argument("--num_teachers", type=int, default=None,
                      help="default: 100, or the sum of --architectures' counts")
  parser.add_argument("--epochs", type=int, default=60)
  parser.add_argument("--out", required=True, help="the zoo's folder")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--width", type=int, default=32)
  parser.add_argument("--architectures", default=None,
                      help="a mixed zoo, e.g. conv4-32:30,resnet10-8-16-32-64:10 (the "
                      "counts add up to --num_teachers); default: every teacher a Conv4 "
                      "of --width")
  parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
  args = parser.parse_args(argv)

  from dfl2l_jax.data.load import load_split  # pylint: disable=import-outside-toplevel
  from dfl2l_jax.errors import DataError  # pylint: disable=import-outside-toplevel

  if args.num_teachers is None:
    try:
      args.num_teachers = (100 if args.architectures is None else
                           sum(c for _, c in parse_architectures(args.architectures)))
    except ValueError as e:
      raise SystemExit(f"error: {e}") from e
  torch.set_num_threads(args.threads)
  try:
    images, labels, class_names = load_split(
        args.dataset, "train", data_dir=args.data_dir, manual_dir=args.manual_dir,
        strict=True)
  except DataError as e:
    raise SystemExit(f"error: {e}") from e
  print(f"{args.dataset} train: {len(images)} images of {len(class_names)} classes, "
        f"{images.shape[1]}x{images.shape[2]}", flush=True)
  mean, std = NORMALISATION[args.dataset]
  try:
    train_teachers(images, labels, class_names, args.out, num_teachers=args.num_teachers,
                   epochs=args.epochs, seed=args.seed, width=args.width, mean=mean, std=std,
                   log=lambda line: print(line, flush=True), dataset=args.dataset,
                   architectures=args.architectures)
  except ValueError as e:
    raise SystemExit(f"error: {e}") from e


if __name__ == "__main__":
  main()
