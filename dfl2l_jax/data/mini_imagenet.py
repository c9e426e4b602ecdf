"""Mini-ImageNet (Vinyals et al. 2016) with the Ravi & Larochelle (2017) split.

100 ImageNet classes, 600 images each, split by class into 64 train, 16 val and
20 test classes. Two tfds builders read the same source: `MiniImagenet` at
84x84 and `MiniImagenet32` at 32x32.

The source is a folder (the builder's manual dir) holding the split files
`{train,val,test}.csv` (header `filename,label`, one row per image, `label` the
class's WordNet id such as n01532829) and the images, either

- `{train,val,test}.zip`: one zip per split with members `<wnid>/<filename>`, or
- `images/<filename>`: the original flat folder of all 60,000 JPEGs.

A split uses its zip if there is one, else `images/`.
"""

import csv
import os
import zipfile

from dfl2l_jax.data import builder_lib
from dfl2l_jax.errors import DataError

IMAGES_PER_CLASS = 600
_WHAT = ("the Mini-ImageNet split files {train,val,test}.csv and the images "
         "(either {train,val,test}.zip with members <wnid>/<filename>, or the "
         "flat folder images/<filename>)")


class _Source:
  """The images of one split: a zip or the flat `images/` folder."""

  def __init__(self, manual_dir, split):
    self.zip_path = manual_dir / f"{split}.zip"
    self.folder = manual_dir / "images"
    self.zip = None
    if self.zip_path.exists():
      try:
        self.zip = zipfile.ZipFile(os.fspath(self.zip_path))
      except (zipfile.BadZipFile, OSError) as e:
        raise DataError(f"{self.zip_path} is not a readable zip: {e}") from e
      # Members by file name; the folder above each (normally <wnid>/) is not
      # needed since Mini-ImageNet file names are unique.
      self.members = {}
      for info in self.zip.infolist():
        if not info.is_dir():
          self.members.setdefault(os.path.basename(info.filename), info)
      self.names = None
    elif self.folder.is_dir():
      self.names = set(os.listdir(os.fspath(self.folder)))
    else:
      raise DataError(
          f"{split}.zip not found in {manual_dir} (and no images/ folder "
          f"there): put the Mini-ImageNet {split} images there as {split}.zip "
          "(members <wnid>/<filename>) or all images in images/<filename>.")

  @property
  def where(self):
    return os.fspath(self.zip_path if self.zip else self.folder)

  def has(self, filename):
    return filename in (self.members if self.zip else self.names)

  def reader(self, filename):
    if self.zip:
      return lambda: self.zip.read(self.members[filename])
    return lambda: (self.folder / filename).read_bytes()

  def close(self):
    if self.zip:
      self.zip.close()


def _read_csv(path):
  """(filename, wnid) rows of a split file, in file order."""
  if not path.exists():
    raise DataError(
        f"{path.name} not found in {path.parent}: put the Mini-ImageNet split "
        f"file {path.name} (header filename,label) there.")
  with path.open() as f:
    rows = list(csv.reader(f))
  if not rows or [c.strip() for c in rows[0]] != ["filename", "label"]:
    raise DataError(f"{path} does not start with the header 'filename,label'.")
  out = []
  for i, row in enumerate(rows[1:], start=2):
    if not row:
      continue
    if len(row) != 2:
      raise DataError(f"{path} line {i}: expected 'filename,label', got {row}.")
    filename, wnid = row[0].strip(), row[1].strip()
    if not os.path.splitext(filename)[1]:
      filename += ".jpg"
    out.append((filename, wnid))
  if not out:
    raise DataError(f"{path} lists no images.")
  return out


def _ordered_rows(rows):
  """Class names sorted, and the rows sorted by (class, file order)."""
  classes = sorted({wnid for _, wnid in rows})
  index = {c: i for i, c in enumerate(classes)}
  order = sorted(range(len(rows)), key=lambda i: (index[rows[i][1]], i))
  return classes, [rows[i] for i in order], [index[rows[i][1]] for i in order]


class _MiniImagenetBase(builder_lib.ImageBuilder, skip_registration=True):
  """Mini-ImageNet builder at `IMAGE_SIZE`x`IMAGE_SIZE`; see the module doc."""

  SOURCE_FILES = _WHAT
  MANUAL_DOWNLOAD_INSTRUCTIONS = f"Put {_WHAT} in the manual dir."
  HOMEPAGE = "https://github.com/twitter-research/meta-learning-lstm"

  def _split_generators(self, dl_manager):
    manual_dir = self._manual_dir(dl_manager)
    strict = self.builder_config.strict
    # Check all splits before writing anything.
    plans, classes_by_split = {}, {}
    try:
      for split in builder_lib.SPLITS:
        rows = _read_csv(manual_dir / f"{split}.csv")
        source = _Source(manual_dir, split)
        plans[split] = (source, rows, None)
        missing = next((r for r in rows if not source.has(r[0])), None)
        if missing is not None:
          raise DataError(
              f"Image {missing[1]}/{missing[0]} listed in {split}.csv is "
              f"missing from {source.where}: put the Mini-ImageNet {split} "
              f"images in {manual_dir} as {split}.zip (members "
              "<wnid>/<filename>) or in images/<filename>.")
        counts = {}
        for _, wnid in rows:
          counts[wnid] = counts.get(wnid, 0) + 1
        builder_lib.check_balanced(
            split, counts, strict, IMAGES_PER_CLASS, f"{split}.csv")
        classes, rows, labels = _ordered_rows(rows)
        classes_by_split[split] = classes
        plans[split] = (source, rows, labels)
      builder_lib.check_disjoint(classes_by_split, os.fspath(manual_dir))
    except BaseException:
      for source, _, _ in plans.values():
        source.close()
      raise
    self.info.metadata["class_names"] = classes_by_split
    self.info.metadata["image_size"] = self.IMAGE_SIZE
    return {split: self._generate_examples(*plan)
            for split, plan in plans.items()}

  def _generate_examples(self, source, rows, labels):
    try:
      images = builder_lib.decoded(
          ((f, source.reader(f)) for f, _ in rows), self.IMAGE_SIZE)
      yield from builder_lib.examples(images, labels)
    finally:
      source.close()


class MiniImagenet(_MiniImagenetBase, skip_registration=True):
  """Mini-ImageNet at 84x84 (Ravi & Larochelle split); see the module doc."""

  name = "mini_imagenet"
  IMAGE_SIZE = 84
  DESCRIPTION = "Mini-ImageNet, Ravi & Larochelle split, 84x84."


class MiniImagenet32(_MiniImagenetBase, skip_registration=True):
  """Mini-ImageNet at 32x32: a stand-in for CIFAR-FS where CIFAR-100 is missing.

  The same images and the same 64/16/20 class split as `MiniImagenet`, resized
  to 32x32 with PIL's antialiased bicubic filter, so that the CIFAR-FS protocol
  (32x32 inputs, its network and episode settings) can run without CIFAR-100.
  Results from it are labelled "CIFAR-FS protocol on Mini-ImageNet@32", never
  "CIFAR-FS": the classes, images and difficulty are Mini-ImageNet's.
  """

  name = "mini_imagenet32"
  IMAGE_SIZE = 32
  DESCRIPTION = ("Mini-ImageNet, Ravi & Larochelle split, resized to 32x32: "
                 "'CIFAR-FS protocol on Mini-ImageNet@32', not CIFAR-FS.")
