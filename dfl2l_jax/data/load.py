"""Loading a meta-learning split of an image benchmark into numpy arrays.

`load_split` is the one entry point the rest of the code uses:

  images, labels, class_names = load_split(
      "mini_imagenet", "train", data_dir="~/tfds", manual_dir="~/mini-imagenet")

The first call prepares the tfds dataset under `data_dir` from the source files
in `manual_dir` (see the builders in `mini_imagenet.py` and `cifar_fs.py` for
what goes there); later calls only read it, and then `manual_dir` may be None.
Preparing and reading need tensorflow-datasets, not TensorFlow.

Two processes that prepare one dataset in one `data_dir` at once (two runs started
together on a fresh data_dir) take turns: the first prepares it under a lock
(`<data_dir>/.<name>.<strict|lenient>.lock`), the second waits, then reads it.
"""

import contextlib
import errno
import fcntl
import logging
import os

import numpy as np
import tensorflow_datasets as tfds

from dfl2l_jax.data import builder_lib
from dfl2l_jax.data import cifar_fs
from dfl2l_jax.data import mini_imagenet
from dfl2l_jax.errors import ConfigError
from dfl2l_jax.errors import DataError

BUILDERS = {
    "mini_imagenet": mini_imagenet.MiniImagenet,
    "mini_imagenet32": mini_imagenet.MiniImagenet32,
    "cifar_fs": cifar_fs.CifarFs,
}
SPLITS = builder_lib.SPLITS
_BATCH = 4096
_log = logging.getLogger("dfl2l_jax")


def get_builder(name, *, data_dir, strict=True):
  """The tfds builder of dataset `name` under `data_dir` (nothing prepared).

  Args:
    name: "mini_imagenet", "mini_imagenet32" or "cifar_fs".
    data_dir: the tfds data dir (None: tfds' default, ~/tensorflow_datasets).
    strict: the builder config: "strict" if True, else "lenient" (see
      `builder_lib`); the two are prepared in different folders.

  Returns:
    A `tfds.core.GeneratorBasedBuilder`.

  Raises:
    ConfigError: if `name` is not one of the datasets above.
  """
  if name not in BUILDERS:
    raise ConfigError(
        f"Unknown dataset {name!r}; expected one of {sorted(BUILDERS)}.")
  if data_dir is not None:
    data_dir = os.path.expanduser(os.fspath(data_dir))
  return BUILDERS[name](data_dir=data_dir,
                        config=builder_lib.config_name(strict))


def prepare(builder, manual_dir):
  """Prepares `builder`'s dataset from `manual_dir` unless it is prepared.

  Args:
    builder: a builder from `get_builder`.
    manual_dir: the folder with the source files, or None if the dataset must
      already be prepared.

  Returns:
    The builder to read the prepared dataset with: `builder`, or a new one of the
    same dataset when another process prepared it while this one waited (a builder
    made before the dataset was prepared does not see its metadata).

  Raises:
    DataError: if the dataset is not prepared and `manual_dir` is None or is
      not a folder, or the source data is missing or fails its checks.
  """
  if _is_prepared(builder):
    return builder
  with _preparing(builder):
    if _is_prepared(builder):  # another process prepared it while this one waited.
      return type(builder)(data_dir=os.fspath(builder.data_dir_root),
                           config=builder.builder_config.name)
    _prepare_unlocked(builder, manual_dir)
  return builder


def _is_prepared(builder):
  # (is_prepared() alone logs a warning when the folder does not exist.)
  return builder.data_path.exists() and builder.is_prepared()


@contextlib.contextmanager
def _preparing(builder):
  """Holds the lock of preparing `builder`'s dataset in its data_dir: tfds renames its
  finished folder into place, and a second process preparing the same dataset at once
  failed there (FileExistsError). A process that finds the lock taken waits, saying so."""
  root = os.fspath(builder.data_dir_root)
  os.makedirs(root, exist_ok=True)
  path = os.path.join(root, f".{builder.name}.{builder.builder_config.name}.lock")
  fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
      if e.errno in (errno.EAGAIN, errno.EACCES):
        _log.info("waiting for another process that prepares %s (%s) in %s (%s)",
                  builder.name, builder.builder_config.name, root, path)
        fcntl.flock(fd, fcntl.LOCK_EX)
      elif e.errno == errno.ENOLCK:
        _log.warning("%s: the file system does not support locks; do not prepare %s there "
                     "from two processes at once", root, builder.name)
      else:
        raise
    yield
  finally:
    os.close(fd)  # releases the lock.


def _prepare_unlocked(builder, manual_dir):
  what = builder.SOURCE_FILES
  if manual_dir is None:
    raise DataError(
        f"Dataset {builder.name} ({builder.builder_config.name}) is not "
        f"prepared in {builder.data_dir_root} and no manual_dir was given: "
        f"put {what} in a folder and pass it as manual_dir.")
  manual_dir = os.path.expanduser(os.fspath(manual_dir))
  if not os.path.isdir(manual_dir):
    raise DataError(
        f"manual_dir {manual_dir} is not a folder: create it and put {what} "
        "there.")
  if not os.listdir(manual_dir):
    raise DataError(f"manual_dir {manual_dir} is empty: put {what} there.")
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(
          manual_dir=manual_dir, try_download_gcs=False))


def load_split(name, split, *, data_dir, manual_dir, strict=True):
  """One meta-learning split of an image benchmark as numpy arrays.

  Prepares the tfds dataset under `data_dir` first if it is not prepared yet.

  Args:
    name: "mini_imagenet" (84x84), "mini_imagenet32" (the same at 32x32, a
      stand-in for CIFAR-FS whose results are labelled "CIFAR-FS protocol on
      Mini-ImageNet@32") or "cifar_fs" (32x32).
    split: "train", "val" or "test": the class split.
    data_dir: the tfds data dir the prepared dataset lives in (None: tfds'
      default, ~/tensorflow_datasets).
    manual_dir: the folder with the source files; may be None when the dataset
      is already prepared in `data_dir`.
    strict: if True, check the standard split (class and image counts, and for
      CIFAR-FS the archive's md5) when preparing; False accepts small or
      non-standard data. Each setting is prepared in its own folder.

  Returns:
    (images, labels, class_names): uint8 (n, H, W, 3) images, int32 (n,)
    labels in [0, num_classes) sorted by (label, order in the source), and the
    split's class names (WordNet ids for Mini-ImageNet, CIFAR-100 fine label
    names for CIFAR-FS) in label order.

  Raises:
    ConfigError: if `name` or `split` is unknown.
    DataError: if the data is missing, incomplete or fails its checks.
  """
  if split not in SPLITS:
    raise ConfigError(f"Unknown split {split!r}; expected one of {SPLITS}.")
  builder = get_builder(name, data_dir=data_dir, strict=strict)
  builder = prepare(builder, manual_dir)
  names = builder_lib.class_names(builder, split)
  source = builder.as_data_source(split=split)
  n = len(source)
  shape = builder.info.features["image"].shape
  images = np.empty((n,) + tuple(shape), np.uint8)
  labels = np.empty((n,), np.int32)
  for start in range(0, n, _BATCH):
    batch = source.__getitems__(list(range(start, min(n, start + _BATCH))))
    for i, example in enumerate(batch, start):
      images[i] = example["image"]
      labels[i] = example["label"]
  # The builders store examples in this order already; a stable sort keeps it
  # and makes the promise hold for any dataset prepared otherwise.
  if n and np.any(np.diff(labels) < 0):
    order = np.argsort(labels, kind="stable")
    images, labels = images[order], labels[order]
  if n and (labels[0] < 0 or labels[-1] >= len(names)):
    raise DataError(
        f"Dataset {builder.name} in {builder.data_dir} has labels outside "
        f"[0, {len(names)}) in split {split!r}; delete it and prepare it again.")
  return images, labels, names
