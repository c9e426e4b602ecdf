"""What the image-benchmark tfds builders share: configs, features, image decoding.

Each builder writes `array_record` files with `Tensor` features only, so that
preparing and reading the data needs tensorflow-datasets but not TensorFlow.
Every example is `{"image": uint8 (H, W, 3), "label": int64 ()}`, where `label`
is the index of the image's class among the classes of its split, sorted by name.

Strictness is a builder config: `strict` (the default) also checks the standard
class and image counts (and, for CIFAR-FS, the archive's md5), `lenient` only
checks that the data is complete and balanced, for tiny fake data in tests.
The two are prepared in different folders
(`<data_dir>/<name>/{strict,lenient}/<version>/`), so a dataset prepared in one
mode is never reused in the other.

The ordered class names of each split are stored in the dataset's
`metadata.json` (`builder.info.metadata["class_names"][split]`), written when the
dataset is prepared; read them with `class_names(builder, split)`.

Limit without TensorFlow: a split must stay below 1000 MiB serialized. Why:
docs/implementation.md, "data/builder_lib.py".
"""

import concurrent.futures
import dataclasses
import io
import os

from etils import epath
import numpy as np
from PIL import Image
import tensorflow_datasets as tfds

from dfl2l_jax.errors import DataError

SPLITS = ("train", "val", "test")
# The meta-learning class splits every builder here uses: 64/16/20 classes.
STANDARD_NUM_CLASSES = {"train": 64, "val": 16, "test": 20}
# Decoding threads; PIL releases the GIL while it decodes and resizes.
_NUM_THREADS = min(16, os.cpu_count() or 1)
_CHUNK = 2048


@dataclasses.dataclass(eq=False)
class StrictnessConfig(tfds.core.BuilderConfig):
  """A builder config that says how strictly the source data is checked.

  Attributes:
    strict: if True, also check the standard class and image counts (and any
      archive checksum); if False, only check that every listed image is there
      and that each class of a split has the same number of images.
  """
  strict: bool = True


STRICT = StrictnessConfig(
    name="strict", strict=True,
    description="Standard split, counts and checksums checked.")
LENIENT = StrictnessConfig(
    name="lenient", strict=False,
    description="Counts and checksums not checked (small or fake data).")


def config_name(strict):
  """The builder config name for a strictness flag."""
  return STRICT.name if strict else LENIENT.name


class ImageBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Base of the builders here: array_record files, strict/lenient configs.

  Subclasses set `name`, `IMAGE_SIZE`, `SOURCE_FILES` (what goes in the manual
  dir, for messages), `MANUAL_DOWNLOAD_INSTRUCTIONS`, `DESCRIPTION`, `HOMEPAGE`
  and `_split_generators`. They are not registered with tfds by name (no clash
  with other datasets of the same name); build them from their class.
  """

  IMAGE_SIZE = 0
  SOURCE_FILES = ""
  DESCRIPTION = ""
  HOMEPAGE = ""
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First release."}
  BUILDER_CONFIGS = [STRICT, LENIENT]
  DEFAULT_CONFIG_NAME = STRICT.name

  def __init__(self, *, file_format="array_record", **kwargs):
    # tfds defaults to tfrecord files, which need TensorFlow to write.
    super().__init__(file_format=file_format, **kwargs)

  def _info(self):
    return self.dataset_info_from_configs(
        description=self.DESCRIPTION,
        features=features(self.IMAGE_SIZE),
        supervised_keys=("image", "label"),
        # Examples are stored in key order, i.e. the order generated.
        disable_shuffling=True,
        # Filled with the class names of each split when preparing.
        metadata=tfds.core.MetadataDict(),
        homepage=self.HOMEPAGE,
    )

  def _manual_dir(self, dl_manager):
    """The manual dir as an `epath.Path`, or a DataError."""
    return manual_dir(dl_manager, self.SOURCE_FILES)


def features(image_size):
  """The features of every example: a square RGB uint8 image and its label."""
  return tfds.features.FeaturesDict({
      # Raw bytes, not tfds' default encoding: docs/implementation.md, "data/builder_lib.py".
      "image": tfds.features.Tensor(
          shape=(image_size, image_size, 3), dtype=np.uint8,
          encoding=tfds.features.Encoding.BYTES),
      "label": tfds.features.Tensor(shape=(), dtype=np.int64),
  })


def class_names(builder, split):
  """The class names of `split`, in label order, of a prepared dataset.

  Args:
    builder: a prepared builder of this package.
    split: "train", "val" or "test".

  Returns:
    A list of str; `class_names(builder, split)[label]` is the label's class.

  Raises:
    DataError: if the prepared dataset has no class names recorded.
  """
  try:
    return list(builder.info.metadata["class_names"][split])
  except (KeyError, TypeError) as e:
    raise DataError(
        f"The prepared dataset in {builder.data_dir} records no class names for "
        f"split {split!r}; delete that folder and prepare it again.") from e


def check_balanced(split, counts, strict, per_class, where):
  """Checks that the classes of a split have equal (and standard) image counts.

  Args:
    split: the split name, for messages.
    counts: dict class name -> number of images.
    strict: whether to also check the standard class count and `per_class`.
    per_class: the standard number of images per class.
    where: a description of the source (a file or folder), for messages.

  Raises:
    DataError: if a check fails.
  """
  if not counts:
    raise DataError(f"Split {split!r} has no images in {where}.")
  if strict and len(counts) != STANDARD_NUM_CLASSES[split]:
    raise DataError(
        f"Split {split!r} in {where} has {len(counts)} classes, the standard "
        f"split has {STANDARD_NUM_CLASSES[split]} (use strict=False for "
        "non-standard data).")
  empty = [c for c, n in counts.items() if n == 0]
  if empty:
    raise DataError(f"Class {empty[0]} of split {split!r} has no images in "
                    f"{where}.")
  if len(set(counts.values())) != 1:
    first = sorted(counts.items(), key=lambda kv: (kv[1], kv[0]))
    raise DataError(
        f"Split {split!r} in {where} is unbalanced: class {first[0][0]} has "
        f"{first[0][1]} images, class {first[-1][0]} has {first[-1][1]}.")
  n = next(iter(counts.values()))
  if strict and n != per_class:
    raise DataError(
        f"Split {split!r} in {where} has {n} images per class, the standard "
        f"split has {per_class} (use strict=False for non-standard data).")


def check_disjoint(classes_by_split, where):
  """Raises DataError if a class appears in two splits."""
  seen = {}
  for split, classes in classes_by_split.items():
    for c in classes:
      if c in seen:
        raise DataError(
            f"Class {c} is in both split {seen[c]!r} and split {split!r} "
            f"({where}); the meta-learning splits must be disjoint.")
      seen[c] = split


def decode_image(data, image_size, name):
  """Decodes an encoded image into a uint8 (image_size, image_size, 3) array.

  The image is converted to RGB and, unless it already has that size, resized
  with PIL's antialiased bicubic filter.

  Args:
    data: the encoded image (JPEG, PNG, ...), bytes.
    image_size: the side of the square output image.
    name: the image's file name, for messages.

  Returns:
    A uint8 numpy array of shape (image_size, image_size, 3).

  Raises:
    DataError: if PIL cannot decode the image.
  """
  try:
    with Image.open(io.BytesIO(data)) as img:
      img = img.convert("RGB")
      if img.size != (image_size, image_size):
        img = img.resize((image_size, image_size), Image.Resampling.BICUBIC)
      return np.asarray(img, dtype=np.uint8)
  except (OSError, ValueError, Image.DecompressionBombError) as e:
    raise DataError(f"Cannot decode image {name}: {e}") from e


def decoded(items, image_size):
  """Decodes encoded images on a thread pool, in order.

  Args:
    items: an iterable of (name, read) pairs, `read()` returning the encoded
      bytes; `read` is called on the calling thread, in order.
    image_size: the side of the square output images.

  Yields:
    The decoded uint8 (image_size, image_size, 3) arrays, in the order of
    `items`.
  """
  items = iter(items)
  with concurrent.futures.ThreadPoolExecutor(_NUM_THREADS) as pool:
    while True:
      chunk = [(name, read()) for name, read in _take(items, _CHUNK)]
      if not chunk:
        return
      yield from pool.map(lambda c: decode_image(c[1], image_size, c[0]), chunk)


def _take(it, n):
  out = []
  for x in it:
    out.append(x)
    if len(out) == n:
      break
  return out


def examples(images, labels):
  """(key, example) pairs for `_generate_examples`, keyed by position.

  The builders here set `disable_shuffling=True`, so the examples are stored in
  key order: the data source returns them in the order generated.
  """
  for i, (image, label) in enumerate(zip(images, labels)):
    yield i, {"image": image, "label": np.int64(label)}


def manual_dir(dl_manager, what):
  """The manual dir of `dl_manager` as an `epath.Path`, or a DataError.

  Args:
    dl_manager: the builder's `tfds.download.DownloadManager`.
    what: what the user must put there, for the message.

  Returns:
    The manual dir.

  Raises:
    DataError: if no manual dir was given or it does not exist or is empty.
  """
  try:
    return epath.Path(dl_manager.manual_dir)
  except AssertionError as e:
    raise DataError(
        f"{e.args[0].splitlines()[0]} Put {what} in a folder and pass it as "
        "the manual dir.") from e
