"""Tests of the image-benchmark data layer on tiny fake data in the real layouts.

Every test makes its own source files in `tmp_path` (Mini-ImageNet split CSVs
with stored zips or the flat images/ folder, a CIFAR-100 python archive) and
prepares them with strict=False; nothing is downloaded or read from elsewhere.
"""

import csv
import hashlib
import io
import json
import logging
import os
import pickle
import shutil
import tarfile
import threading
import zipfile

import numpy as np
import pytest

from PIL import Image  # The "test" extra installs pillow and tensorflow-datasets.

from dfl2l_jax.data import builder_lib
from dfl2l_jax.data import cifar_fs
from dfl2l_jax.data import load
from dfl2l_jax.data import mini_imagenet
from dfl2l_jax.errors import ConfigError, DataError

# The 100 CIFAR-100 fine label names in the official meta file's order.
CIFAR100_FINE = (
    "apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy "
    "bridge bus butterfly camel can castle caterpillar cattle chair chimpanzee "
    "clock cloud cockroach couch crab crocodile cup dinosaur dolphin elephant "
    "flatfish forest fox girl hamster house kangaroo keyboard lamp lawn_mower "
    "leopard lion lizard lobster man maple_tree motorcycle mountain mouse "
    "mushroom oak_tree orange orchid otter palm_tree pear pickup_truck pine_tree "
    "plain plate poppy porcupine possum rabbit raccoon ray road rocket rose sea "
    "seal shark shrew skunk skyscraper snail snake spider squirrel streetcar "
    "sunflower sweet_pepper table tank telephone television tiger tractor train "
    "trout tulip turtle wardrobe whale willow_tree wolf woman worm").split()

# Fake Mini-ImageNet: classes of each split as listed (unsorted on purpose).
MINI_CLASSES = {
    "train": ["n03000003", "n01000001", "n02000002"],
    "val": ["n05000005", "n04000004"],
    "test": ["n07000007", "n06000006"],
}
PER_CLASS = 4


def _jpeg(rng, shape):
  buf = io.BytesIO()
  Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(
      buf, "JPEG", quality=90)
  return buf.getvalue()


def make_mini_imagenet(root, layout="zip", sizes=((84, 84), (60, 90))):
  """Writes a tiny Mini-ImageNet source; returns {split: [(file, wnid, jpeg)]}.

  Rows of a split interleave its classes (class-major order is not assumed),
  and the images alternate between the given (h, w) sizes.
  """
  os.makedirs(root, exist_ok=True)
  rng = np.random.default_rng(0)
  rows = {}
  for split, wnids in MINI_CLASSES.items():
    rows[split] = []
    for i in range(PER_CLASS):
      for wnid in wnids:
        h, w = sizes[len(rows[split]) % len(sizes)]
        name = f"{wnid}{i:08d}.jpg"
        rows[split].append((name, wnid, _jpeg(rng, (h, w, 3))))
    with open(os.path.join(root, f"{split}.csv"), "w", newline="") as f:
      writer = csv.writer(f)
      writer.writerow(["filename", "label"])
      writer.writerows((name, wnid) for name, wnid, _ in rows[split])
    if layout == "zip":
      with zipfile.ZipFile(os.path.join(root, f"{split}.zip"), "w",
                           zipfile.ZIP_STORED) as z:
        for name, wnid, data in rows[split]:
          z.writestr(f"{wnid}/{name}", data)
    else:
      os.makedirs(os.path.join(root, "images"), exist_ok=True)
      for name, _, data in rows[split]:
        with open(os.path.join(root, "images", name), "wb") as f:
          f.write(data)
  return rows


def expected_mini(rows, size):
  """Images and labels the loader must return for the rows of one split."""
  classes = sorted({wnid for _, wnid, _ in rows})
  images, labels = [], []
  for label, wnid in enumerate(classes):
    for _, w, data in rows:
      if w == wnid:
        img = Image.open(io.BytesIO(data)).convert("RGB")
        if img.size != (size, size):
          img = img.resize((size, size), Image.Resampling.BICUBIC)
        images.append(np.asarray(img))
        labels.append(label)
  return np.stack(images), np.array(labels), classes


def _cifar_split_names():
  with open(os.path.join(os.path.dirname(cifar_fs.__file__),
                         "cifar_fs_split.json")) as f:
    spec = json.load(f)
  return {s: [c for _, c in spec[s]] for s in ("train", "val", "test")}


def make_cifar100(root, n_train=2, n_test=1, drop_member=None):
  """Writes a tiny cifar-100-python.tar.gz; returns (train, test) (data, labels)."""
  os.makedirs(root, exist_ok=True)
  rng = np.random.default_rng(1)
  parts = {}
  for part, n in (("train", n_train), ("test", n_test)):
    labels = np.tile(np.arange(100), n)
    rng.shuffle(labels)
    data = rng.integers(0, 256, (len(labels), 3072), dtype=np.uint8)
    parts[part] = {
        b"filenames": [f"{part}_{i}.png".encode() for i in range(len(labels))],
        b"fine_labels": labels.tolist(),
        b"coarse_labels": (labels // 5).tolist(),
        b"data": data,
    }
  meta = {b"fine_label_names": [n.encode() for n in CIFAR100_FINE],
          b"coarse_label_names": [b"c%d" % i for i in range(20)]}
  with tarfile.open(os.path.join(root, "cifar-100-python.tar.gz"), "w:gz") as tar:
    for member, obj in (("train", parts["train"]), ("test", parts["test"]),
                        ("meta", meta)):
      if member == drop_member:
        continue
      payload = pickle.dumps(obj, protocol=2)
      info = tarfile.TarInfo(f"cifar-100-python/{member}")
      info.size = len(payload)
      tar.addfile(info, io.BytesIO(payload))
  return ((parts["train"][b"data"], np.array(parts["train"][b"fine_labels"])),
          (parts["test"][b"data"], np.array(parts["test"][b"fine_labels"])))


def expected_cifar(parts, classes):
  images, labels = [], []
  for label, c in enumerate(classes):
    fine = CIFAR100_FINE.index(c)
    for data, fine_labels in parts:  # train before test, file order within.
      for row in data[fine_labels == fine]:
        images.append(row.reshape(3, 32, 32).transpose(1, 2, 0))
        labels.append(label)
  return np.stack(images), np.array(labels)


@pytest.mark.parametrize("layout", ["zip", "folder"])
@pytest.mark.parametrize("name,size", [("mini_imagenet", 84),
                                       ("mini_imagenet32", 32)])
def test_mini_imagenet_loads_every_split_in_order(tmp_path, layout, name, size):
  rows = make_mini_imagenet(tmp_path / "src", layout)
  for split in ("train", "val", "test"):
    images, labels, names = load.load_split(
        name, split, data_dir=tmp_path / "tfds", manual_dir=tmp_path / "src",
        strict=False)
    want_images, want_labels, want_names = expected_mini(rows[split], size)
    assert images.dtype == np.uint8 and images.shape == (
        len(rows[split]), size, size, 3)
    assert labels.dtype == np.int32
    assert names == want_names == sorted(MINI_CLASSES[split])
    np.testing.assert_array_equal(labels, want_labels)
    np.testing.assert_array_equal(images, want_images)


def test_zip_and_folder_layouts_give_the_same_arrays(tmp_path):
  make_mini_imagenet(tmp_path / "a", "zip")
  make_mini_imagenet(tmp_path / "b", "folder")
  a = load.load_split("mini_imagenet", "val", data_dir=tmp_path / "ta",
                      manual_dir=tmp_path / "a", strict=False)
  b = load.load_split("mini_imagenet", "val", data_dir=tmp_path / "tb",
                      manual_dir=tmp_path / "b", strict=False)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x, y)


def test_second_call_reads_the_prepared_data_without_manual_dir(tmp_path):
  make_mini_imagenet(tmp_path / "src")
  kw = dict(data_dir=tmp_path / "tfds", strict=False)
  first = load.load_split("mini_imagenet32", "train",
                          manual_dir=tmp_path / "src", **kw)
  shutil.rmtree(tmp_path / "src")
  second = load.load_split("mini_imagenet32", "train", manual_dir=None, **kw)
  for x, y in zip(first, second):
    np.testing.assert_array_equal(x, y)


def test_the_same_call_twice_from_fresh_builds_gives_identical_arrays(tmp_path):
  make_mini_imagenet(tmp_path / "src")
  out = [load.load_split("mini_imagenet", "test", data_dir=tmp_path / d,
                         manual_dir=tmp_path / "src", strict=False)
         for d in ("t1", "t2")]
  for x, y in zip(*out):
    np.testing.assert_array_equal(x, y)


def test_class_splits_are_disjoint_and_complete(tmp_path):
  make_mini_imagenet(tmp_path / "src")
  names = {s: load.load_split("mini_imagenet32", s, data_dir=tmp_path / "tfds",
                              manual_dir=tmp_path / "src", strict=False)[2]
           for s in ("train", "val", "test")}
  union = [c for s in names.values() for c in s]
  assert len(union) == len(set(union))
  assert set(union) == {c for s in MINI_CLASSES.values() for c in s}


def test_features_are_plain_tensors(tmp_path):
  make_mini_imagenet(tmp_path / "src")
  builder = load.get_builder("mini_imagenet32", data_dir=tmp_path / "tfds",
                             strict=False)
  load.prepare(builder, tmp_path / "src")
  feats = builder.info.features
  assert set(feats.keys()) == {"image", "label"}
  assert feats["image"].shape == (32, 32, 3)
  assert feats["image"].np_dtype == np.uint8
  assert feats["label"].np_dtype == np.int64
  assert str(builder.info.file_format.value) == "array_record"
  assert builder_lib.class_names(builder, "val") == sorted(MINI_CLASSES["val"])


def test_a_run_preparing_a_dataset_another_is_preparing_waits_and_reads_it(tmp_path, caplog):
  """Two runs preparing one fresh data_dir at once: tfds' rename of the second failed
  (FileExistsError), and a builder made before the dataset was prepared read no class
  names. The second now waits for the first's lock and reads what it prepared."""
  make_mini_imagenet(tmp_path / "src")
  tfds_dir = tmp_path / "tfds"
  first = load.get_builder("mini_imagenet32", data_dir=tfds_dir, strict=False)
  got = {}

  def second_run():
    try:
      got["out"] = load.load_split("mini_imagenet32", "train", data_dir=tfds_dir,
                                   manual_dir=tmp_path / "src", strict=False)
    except Exception as e:  # pylint: disable=broad-except
      got["out"] = e

  with caplog.at_level(logging.INFO, logger="dfl2l_jax"):
    with load._preparing(first):  # pylint: disable=protected-access  # the first run
      thread = threading.Thread(target=second_run)
      thread.start()
      thread.join(timeout=3)
      assert thread.is_alive(), got  # the second run waits ...
      load._prepare_unlocked(first, tmp_path / "src")  # pylint: disable=protected-access
    thread.join(timeout=60)
  assert not isinstance(got["out"], Exception), got["out"]
  want = load.load_split("mini_imagenet32", "train", data_dir=tfds_dir, manual_dir=None,
                         strict=False)
  for x, y in zip(got["out"], want):  # ... and reads what the first prepared.
    np.testing.assert_array_equal(x, y)
  assert any("waiting for another process that prepares mini_imagenet32" in r.getMessage()
             for r in caplog.records)


def test_strict_mode_checks_the_standard_counts(tmp_path):
  make_mini_imagenet(tmp_path / "src")
  with pytest.raises(DataError, match="64"):
    load.load_split("mini_imagenet", "train", data_dir=tmp_path / "tfds",
                    manual_dir=tmp_path / "src")
  assert not load.get_builder("mini_imagenet", data_dir=tmp_path / "tfds",
                              strict=True).is_prepared()


def test_lenient_data_is_not_reused_in_strict_mode(tmp_path):
  make_mini_imagenet(tmp_path / "src")
  load.load_split("mini_imagenet", "val", data_dir=tmp_path / "tfds",
                  manual_dir=tmp_path / "src", strict=False)
  with pytest.raises(DataError, match="not prepared"):
    load.load_split("mini_imagenet", "val", data_dir=tmp_path / "tfds",
                    manual_dir=None, strict=True)


def test_missing_zip_names_the_file_and_where_to_put_it(tmp_path):
  make_mini_imagenet(tmp_path / "src")
  os.remove(tmp_path / "src" / "val.zip")
  with pytest.raises(DataError) as e:
    load.load_split("mini_imagenet", "train", data_dir=tmp_path / "tfds",
                    manual_dir=tmp_path / "src", strict=False)
  assert "val.zip" in str(e.value) and str(tmp_path / "src") in str(e.value)
  assert not load.get_builder("mini_imagenet", data_dir=tmp_path / "tfds",
                              strict=False).is_prepared()


def test_missing_csv_names_the_file(tmp_path):
  make_mini_imagenet(tmp_path / "src")
  os.remove(tmp_path / "src" / "test.csv")
  with pytest.raises(DataError, match="test.csv"):
    load.load_split("mini_imagenet", "train", data_dir=tmp_path / "tfds",
                    manual_dir=tmp_path / "src", strict=False)


def test_image_missing_from_a_zip_is_named(tmp_path):
  rows = make_mini_imagenet(tmp_path / "src")
  name, wnid, _ = rows["train"][5]
  path = tmp_path / "src" / "train.zip"
  with zipfile.ZipFile(path) as z:
    members = [(i.filename, z.read(i)) for i in z.infolist()]
  with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
    for member, data in members:
      if member != f"{wnid}/{name}":
        z.writestr(member, data)
  with pytest.raises(DataError) as e:
    load.load_split("mini_imagenet", "train", data_dir=tmp_path / "tfds",
                    manual_dir=tmp_path / "src", strict=False)
  assert name in str(e.value) and "train.zip" in str(e.value)


def test_image_missing_from_the_folder_is_named(tmp_path):
  rows = make_mini_imagenet(tmp_path / "src", "folder")
  name = rows["test"][2][0]
  os.remove(tmp_path / "src" / "images" / name)
  with pytest.raises(DataError) as e:
    load.load_split("mini_imagenet32", "val", data_dir=tmp_path / "tfds",
                    manual_dir=tmp_path / "src", strict=False)
  assert name in str(e.value) and "images" in str(e.value)


def test_unbalanced_classes_are_rejected_even_when_lenient(tmp_path):
  make_mini_imagenet(tmp_path / "src")
  with open(tmp_path / "src" / "val.csv") as f:
    lines = f.read().splitlines()
  with open(tmp_path / "src" / "val.csv", "w") as f:
    f.write("\n".join(lines[:-1]) + "\n")
  with pytest.raises(DataError, match="unbalanced"):
    load.load_split("mini_imagenet", "val", data_dir=tmp_path / "tfds",
                    manual_dir=tmp_path / "src", strict=False)


def test_not_prepared_and_no_manual_dir_is_a_data_error(tmp_path):
  with pytest.raises(DataError, match="manual_dir"):
    load.load_split("cifar_fs", "train", data_dir=tmp_path / "tfds",
                    manual_dir=None, strict=False)
  with pytest.raises(DataError, match="not a folder"):
    load.load_split("cifar_fs", "train", data_dir=tmp_path / "tfds",
                    manual_dir=tmp_path / "nowhere", strict=False)


def test_unknown_name_or_split_is_a_config_error(tmp_path):
  with pytest.raises(ConfigError, match="omniglot"):
    load.load_split("omniglot", "train", data_dir=tmp_path, manual_dir=None)
  with pytest.raises(ConfigError, match="valid"):
    load.load_split("mini_imagenet", "valid", data_dir=tmp_path,
                    manual_dir=None)


def test_cifar_fs_split_file_has_64_16_20_disjoint_cifar100_classes():
  names = cifar_fs.split_classes()
  assert {s: len(c) for s, c in names.items()} == {
      "train": 64, "val": 16, "test": 20}
  union = [c for s in names.values() for c in s]
  assert len(set(union)) == 100 and set(union) == set(CIFAR100_FINE)
  assert names == _cifar_split_names()


def test_cifar_fs_loads_every_split_in_order(tmp_path):
  parts = make_cifar100(tmp_path / "src")
  classes = cifar_fs.split_classes()
  for split in ("train", "val", "test"):
    images, labels, names = load.load_split(
        "cifar_fs", split, data_dir=tmp_path / "tfds",
        manual_dir=tmp_path / "src", strict=False)
    n = len(classes[split]) * 3
    assert images.shape == (n, 32, 32, 3) and images.dtype == np.uint8
    assert labels.dtype == np.int32
    assert names == sorted(classes[split])
    want_images, want_labels = expected_cifar(parts, names)
    np.testing.assert_array_equal(labels, want_labels)
    np.testing.assert_array_equal(images, want_images)
  again = load.load_split("cifar_fs", "val", data_dir=tmp_path / "tfds",
                          manual_dir=None, strict=False)
  want = expected_cifar(parts, sorted(classes["val"]))
  np.testing.assert_array_equal(again[0], want[0])


def test_missing_cifar_archive_names_the_file_and_where_to_put_it(tmp_path):
  (tmp_path / "src").mkdir()
  (tmp_path / "src" / "README").write_text("not the archive")
  with pytest.raises(DataError) as e:
    load.load_split("cifar_fs", "train", data_dir=tmp_path / "tfds",
                    manual_dir=tmp_path / "src", strict=False)
  assert "cifar-100-python.tar.gz" in str(e.value)
  assert str(tmp_path / "src") in str(e.value)


def test_cifar_archive_without_a_member_is_named(tmp_path):
  make_cifar100(tmp_path / "src", drop_member="meta")
  with pytest.raises(DataError, match="cifar-100-python/meta"):
    load.load_split("cifar_fs", "train", data_dir=tmp_path / "tfds",
                    manual_dir=tmp_path / "src", strict=False)


def test_cifar_strict_mode_checks_md5_then_counts(tmp_path, monkeypatch):
  make_cifar100(tmp_path / "src")
  path = tmp_path / "src" / "cifar-100-python.tar.gz"
  with pytest.raises(DataError) as e:
    load.load_split("cifar_fs", "train", data_dir=tmp_path / "tfds",
                    manual_dir=tmp_path / "src")
  assert "md5" in str(e.value) and str(path) in str(e.value)
  monkeypatch.setattr(cifar_fs, "ARCHIVE_MD5",
                      hashlib.md5(path.read_bytes()).hexdigest())
  with pytest.raises(DataError, match="600"):
    load.load_split("cifar_fs", "train", data_dir=tmp_path / "tfds",
                    manual_dir=tmp_path / "src")


def test_the_32x32_stand_in_says_how_its_results_are_labelled():
  doc = " ".join(mini_imagenet.MiniImagenet32.__doc__.split())
  assert '"CIFAR-FS protocol on Mini-ImageNet@32", never "CIFAR-FS"' in doc
