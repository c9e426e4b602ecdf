"""CIFAR-FS (Bertinetto et al. 2019): CIFAR-100 split by class into 64/16/20.

All 600 images of a CIFAR-100 fine class (its 500 training and 100 test images)
go to the meta-learning split its class belongs to; the class lists ship with
this package in `cifar_fs_split.json` as [superclass, class] pairs.

The source is the official python version of CIFAR-100,
`cifar-100-python.tar.gz` (https://www.cs.toronto.edu/~kriz/cifar.html), in the
builder's manual dir. Its pickles `cifar-100-python/{train,test}` hold
`b"data"` (N, 3072) uint8 rows in CHW order and `b"fine_labels"`;
`cifar-100-python/meta` holds `b"fine_label_names"`.
"""

import hashlib
import importlib.resources
import json
import os
import pickle
import tarfile

import numpy as np

from dfl2l_jax.data import builder_lib
from dfl2l_jax.errors import DataError

ARCHIVE = "cifar-100-python.tar.gz"
ARCHIVE_MD5 = "eb9058c3a382ffc7106e4002c42a8d85"
IMAGES_PER_CLASS = 600
_MEMBERS = ("cifar-100-python/train", "cifar-100-python/test")
_META = "cifar-100-python/meta"
_WHAT = (f"{ARCHIVE} (the CIFAR-100 python version from "
         "https://www.cs.toronto.edu/~kriz/cifar.html)")


def split_classes():
  """The CIFAR-FS class split shipped with this package.

  Returns:
    dict split -> list of CIFAR-100 fine class names, in file order.
  """
  text = (importlib.resources.files("dfl2l_jax.data")
          .joinpath("cifar_fs_split.json").read_text())
  spec = json.loads(text)
  return {s: [name for _, name in spec[s]] for s in builder_lib.SPLITS}


def _md5(path):
  h = hashlib.md5()
  with path.open("rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      h.update(block)
  return h.hexdigest()


def _read_archive(path):
  """(images uint8 (N, 32, 32, 3), fine labels (N,), fine label names)."""
  try:
    with tarfile.open(os.fspath(path), "r:*") as tar:
      pickles = {}
      for member in _MEMBERS + (_META,):
        try:
          f = tar.extractfile(member)
        except KeyError:
          f = None
        if f is None:
          raise DataError(
              f"{path} has no member {member}: it is not the CIFAR-100 python "
              "version; download cifar-100-python.tar.gz and put it there.")
        with f:
          pickles[member] = pickle.load(f, encoding="bytes")
  except (tarfile.TarError, OSError, EOFError, pickle.UnpicklingError) as e:
    raise DataError(f"Cannot read {path}: {e}") from e
  try:
    names = [n.decode() for n in pickles[_META][b"fine_label_names"]]
    data = np.concatenate(
        [np.asarray(pickles[m][b"data"], np.uint8) for m in _MEMBERS])
    labels = np.concatenate(
        [np.asarray(pickles[m][b"fine_labels"], np.int64) for m in _MEMBERS])
  except (KeyError, TypeError, ValueError, AttributeError) as e:
    raise DataError(f"{path} is not in the CIFAR-100 python format: {e}") from e
  if data.ndim != 2 or data.shape[1] != 3072 or len(data) != len(labels):
    raise DataError(
        f"{path}: expected data of shape (N, 3072) and N labels, got "
        f"{data.shape} and {labels.shape}.")
  if len(labels) and (labels.min() < 0 or labels.max() >= len(names)):
    raise DataError(f"{path}: fine labels out of range of fine_label_names.")
  images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
  return images, labels, names


class CifarFs(builder_lib.ImageBuilder, skip_registration=True):
  """CIFAR-FS at 32x32; see the module doc."""

  name = "cifar_fs"
  IMAGE_SIZE = 32
  SOURCE_FILES = _WHAT
  MANUAL_DOWNLOAD_INSTRUCTIONS = f"Put {_WHAT} in the manual dir."
  DESCRIPTION = "CIFAR-FS: CIFAR-100, Bertinetto et al. 2019 class split."
  HOMEPAGE = "https://github.com/bertinetto/r2d2"

  def _split_generators(self, dl_manager):
    manual_dir = self._manual_dir(dl_manager)
    path = manual_dir / ARCHIVE
    if not path.exists():
      raise DataError(
          f"{ARCHIVE} not found in {manual_dir}: download the CIFAR-100 python "
          "version (https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz) "
          "and put it there.")
    strict = self.builder_config.strict
    if strict and (md5 := _md5(path)) != ARCHIVE_MD5:
      raise DataError(
          f"{path} has md5 {md5}, the official {ARCHIVE} has {ARCHIVE_MD5}: "
          "download it again (or use strict=False for non-standard data).")
    images, labels, names = _read_archive(path)
    index = {n: i for i, n in enumerate(names)}
    classes_by_split = {s: sorted(c) for s, c in split_classes().items()}
    builder_lib.check_disjoint(classes_by_split, "cifar_fs_split.json")
    plans = {}
    for split, classes in classes_by_split.items():
      unknown = [c for c in classes if c not in index]
      if unknown:
        raise DataError(
            f"{path} has no fine class {unknown[0]!r} of the CIFAR-FS {split} "
            "split: it is not CIFAR-100.")
      # The images of the split's classes, by (label, archive order): train
      # images before test images within a class.
      fine = np.array([index[c] for c in classes])
      split_label = np.full(len(names), -1, np.int64)
      split_label[fine] = np.arange(len(classes))
      mine = split_label[labels]
      keep = np.flatnonzero(mine >= 0)
      keep = keep[np.argsort(mine[keep], kind="stable")]
      counts = dict(zip(classes, np.bincount(mine[keep], minlength=len(classes))
                        .tolist()))
      builder_lib.check_balanced(split, counts, strict, IMAGES_PER_CLASS,
                                 os.fspath(path))
      plans[split] = (keep, mine[keep])
    self.info.metadata["class_names"] = classes_by_split
    self.info.metadata["image_size"] = self.IMAGE_SIZE
    return {split: self._generate_examples(images, keep, split_labels)
            for split, (keep, split_labels) in plans.items()}

  def _generate_examples(self, images, keep, split_labels):
    yield from builder_lib.examples((images[i] for i in keep), split_labels)
