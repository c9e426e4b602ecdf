"""Reproducible contamination of a zoo (zoo/contamination.py): which models, what each kind
does to them, and the refusals of a bad `config.zoo.contamination`."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dfl2l_jax import config_lib
from dfl2l_jax.errors import ConfigError, DataError
from dfl2l_jax.zoo import contamination
from tests import helpers


def test_parse_reads_kinds_and_fractions_in_order():
  assert contamination.parse("") == {}
  assert contamination.parse(" fake=0.3 , wrong_classes=0.1") == {"fake": 0.3,
                                                                  "wrong_classes": 0.1}
  assert list(contamination.parse("wrong_classes=0.2,fake=0")) == ["wrong_classes", "fake"]


@pytest.mark.parametrize("spec, match", [
    ("fake=1.0", r"fake must be in \[0, 1\), got 1.0"),
    ("fake=-0.1", r"in \[0, 1\)"),
    ("noisy=0.1", "unknown kind 'noisy'; known: fake, wrong_classes, shuffled_labels, "
                  "out_of_domain"),
    ("fake", "'fake' is not kind=fraction"),
    ("fake=a lot", "'a lot' is not a number"),
    ("fake=0.1,fake=0.2", "fake is named twice"),
    ("fake=0.6,wrong_classes=0.4", "add up to 1; at least one clean model must stay"),
])
def test_bad_contamination_is_refused_in_one_line(spec, match):
  config = helpers.fewshot_config(zoo__contamination=spec)
  with pytest.raises(ConfigError, match=match) as e:
    config_lib.validate(config)
  assert "\n" not in str(e.value) and "config.zoo.contamination" in str(e.value)


def test_one_wrong_class_list_is_refused():
  config = helpers.fewshot_config(zoo__num_models=10, zoo__contamination="wrong_classes=0.1")
  with pytest.raises(ConfigError, match="is one model; .* at least 2 models"):
    config_lib.validate(config)


def test_the_chosen_models_are_disjoint_rounded_and_fixed_by_the_seed():
  fractions = {"fake": 0.3, "wrong_classes": 0.25}
  a = contamination.choose(0, 40, fractions)
  assert [len(v) for v in a.values()] == [12, 10]
  assert not set(a["fake"]) & set(a["wrong_classes"])
  b = contamination.choose(0, 40, fractions)
  assert all(np.array_equal(a[k], b[k]) for k in a)
  assert not np.array_equal(contamination.choose(1, 40, fractions)["fake"], a["fake"])
  # A larger fraction of a kind keeps the models of the smaller one (one permutation).
  assert set(contamination.choose(0, 40, {"fake": 0.1})["fake"]) <= set(
      contamination.choose(0, 40, {"fake": 0.3})["fake"])


def _zoo(n=6):
  """A stacked zoo whose model i is recognisable: every parameter equals i."""
  return {"Dense_0": {"kernel": jnp.arange(n, dtype=jnp.float32)[:, None, None]
                      * jnp.ones((n, 3, 2)), "bias": jnp.arange(n, dtype=jnp.float32)[:, None]
                      * jnp.ones((n, 2))}}


class _Bench:
  @staticmethod
  def init_params(key):
    return {"Dense_0": {"kernel": jax.random.normal(key, (3, 2)) + 100.0,
                        "bias": jnp.zeros((2,)) + 100.0}}


def test_fakes_are_fresh_initialisations_and_wrong_classes_pass_parameters_round():
  config = helpers.fewshot_config(zoo__num_models=6,
                                  zoo__contamination="fake=0.34,wrong_classes=0.34")
  running = {"BatchNorm_0": {"mean": jnp.arange(6.0)[:, None] * jnp.ones((6, 2)),
                             "var": 5.0 + jnp.arange(6.0)[:, None] * jnp.ones((6, 2))}}
  zoo, stats, record = contamination.apply(config, _Bench, _zoo(), running)
  chosen = contamination.choose(config.seed, 6, contamination.parse(config.zoo.contamination))
  fake, wrong = chosen["fake"], chosen["wrong_classes"]
  assert record == {"spec": config.zoo.contamination,
                    "models": {"fake": list(map(int, fake)),
                               "wrong_classes": list(map(int, wrong))}}
  kernel = np.asarray(zoo["Dense_0"]["kernel"])
  for i in range(6):
    if i in fake:
      assert kernel[i].mean() > 90  # a fresh initialisation of the benchmark's network
      assert np.all(np.asarray(stats["BatchNorm_0"]["mean"][i]) == 0.0)
      assert np.all(np.asarray(stats["BatchNorm_0"]["var"][i]) == 1.0)
    elif i in wrong:
      other = wrong[(list(wrong).index(i) + 1) % len(wrong)]
      assert np.all(kernel[i] == other) and other != i
      assert np.all(np.asarray(stats["BatchNorm_0"]["mean"][i]) == other)
    else:
      assert np.all(kernel[i] == i)
      assert np.all(np.asarray(stats["BatchNorm_0"]["var"][i]) == 5.0 + i)
  # No contamination: the zoo as it was, and no record.
  clean = helpers.fewshot_config(zoo__num_models=6)
  same, none_stats, none = contamination.apply(clean, _Bench, _zoo(), None)
  assert none is None and none_stats is None
  np.testing.assert_array_equal(same["Dense_0"]["kernel"], _zoo()["Dense_0"]["kernel"])


def test_shuffled_labels_permute_a_models_training_images_across_its_classes():
  config = helpers.fewshot_config(zoo__num_models=5, zoo__contamination="shuffled_labels=0.4")
  rng = np.random.default_rng(0)
  tasks = {"train_idx": np.arange(5 * 3 * 10).reshape(5, 3, 10),
           "test_idx": rng.integers(0, 9, (5, 3, 4)), "classes": np.zeros((5, 3), np.int32)}
  out = contamination.shuffle_labels(config, tasks)
  chosen = contamination.choose(config.seed, 5, {"shuffled_labels": 0.4})["shuffled_labels"]
  assert len(chosen) == 2
  for m in range(5):
    if m in chosen:
      assert sorted(out["train_idx"][m].ravel()) == sorted(tasks["train_idx"][m].ravel())
      # Each class row now holds images of several classes: its labels are noise.
      assert any(len(set(row // 10)) > 1 for row in out["train_idx"][m])
    else:
      np.testing.assert_array_equal(out["train_idx"][m], tasks["train_idx"][m])
  np.testing.assert_array_equal(out["test_idx"], tasks["test_idx"])  # quality on true labels
  assert contamination.shuffle_labels(helpers.fewshot_config(), tasks) is tasks


def test_only_kinds_made_while_training_are_part_of_the_trained_zoo():
  from dfl2l_jax import zoo as zoo_lib  # pylint: disable=g-import-not-at-top

  class _B:
    spec = {"benchmark": "b"}
  spec = lambda c: zoo_lib.zoo_spec(helpers.fewshot_config(zoo__contamination=c), _B)["zoo"]
  assert "contamination" not in spec("") and "contamination" not in spec("fake=0.3")
  # Where the out-of-domain data lies is not the zoo (a zoo trained before the field
  # existed is still the same zoo); the kind and fraction are.
  assert "out_of_domain_dir" not in spec("") and "out_of_domain_dir" not in spec(
      "out_of_domain=0.25")
  assert spec("out_of_domain=0.25")["contamination"] == "out_of_domain=0.25"
  assert spec("fake=0.3,shuffled_labels=0.25")["contamination"] == "shuffled_labels=0.25"
  with pytest.raises(ConfigError, match="shuffled_labels changes how models are trained"):
    config_lib.validate(helpers.fewshot_config(zoo__contamination="shuffled_labels=0.3",
                                               zoo__source="zoos/mine"))


def _omniglot_like(directory, alphabets=2, characters=3, drawers=4, size=20):
  """A folder shaped as Omniglot's: one zip archive ALPHABET/characterNN/ID_DRAWER.png,
  binary strokes; each character's drawings share one random pattern plus noise."""
  import zipfile  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  import io  # pylint: disable=g-import-not-at-top
  os.makedirs(directory, exist_ok=True)
  rng = np.random.default_rng(0)
  with zipfile.ZipFile(os.path.join(directory, "images_background_small1.zip"), "w") as z:
    for a in range(alphabets):
      for c in range(characters):
        pattern = rng.random((size, size)) < 0.3
        for d in range(drawers):
          pixels = (pattern ^ (rng.random((size, size)) < 0.05)).astype(np.uint8) * 255
          buf = io.BytesIO()
          Image.fromarray(pixels).convert("1").save(buf, format="PNG")
          z.writestr(f"images_background_small1/Alpha{a}/character{c + 1:02d}/"
                     f"{c}_{d + 1:02d}.png", buf.getvalue())
  return directory


def test_out_of_domain_models_are_trained_on_other_characters_than_their_listed_classes(
    tmp_path):
  omniglot = _omniglot_like(str(tmp_path / "omniglot"))
  config = helpers.fewshot_config(zoo__num_models=5, zoo__contamination="out_of_domain=0.4",
                                  zoo__out_of_domain_dir=omniglot)
  images, class_of = contamination.out_of_domain_images(omniglot, 16)
  assert images.shape == (2 * 3 * 4, 16, 16, 3) and images.dtype == np.uint8
  assert np.array_equal(images[..., 0], images[..., 2])  # greyscale, repeated
  assert sorted(np.bincount(class_of)) == [4] * 6
  train_images = np.zeros((150, 16, 16, 3), np.uint8)
  tasks = {"train_idx": np.arange(5 * 3 * 10).reshape(5, 3, 10),
           "test_idx": np.ones((5, 3, 4), np.int64), "classes": np.zeros((5, 3), np.int32)}
  out, images_out = contamination.out_of_domain(config, tasks, train_images)
  assert images_out.shape[0] == 150 + 24
  np.testing.assert_array_equal(images_out[150:], images)
  chosen = contamination.choose(config.seed, 5, {"out_of_domain": 0.4})["out_of_domain"]
  assert len(chosen) == 2
  for m in range(5):
    if m in chosen:
      # Each class row: the drawings of one character (cycled to 10), distinct per class.
      chars = [set(class_of[row - 150]) for row in out["train_idx"][m]]
      assert all(len(c) == 1 for c in chars) and len(set.union(*chars)) == 3
      assert all(len(set(row)) == 4 for row in out["train_idx"][m])
    else:
      np.testing.assert_array_equal(out["train_idx"][m], tasks["train_idx"][m])
  np.testing.assert_array_equal(out["test_idx"], tasks["test_idx"])  # quality: listed classes
  clean = helpers.fewshot_config()
  assert contamination.out_of_domain(clean, tasks, train_images) == (tasks, train_images)
  # The benchmark our trainer trains on: its images then the drawings, its normalisation
  # the clean benchmark's.
  from dfl2l_jax.tasks import fewshot  # pylint: disable=g-import-not-at-top
  bench = fewshot.make_benchmark(config, helpers.synthetic_image_loader())
  plain = fewshot.make_benchmark(helpers.fewshot_config(zoo__num_models=5),
                                 helpers.synthetic_image_loader())
  n_plain = plain.data["train_images"].shape[0]
  assert bench.data["train_images"].shape[0] == n_plain + 24
  np.testing.assert_array_equal(bench.data["mean"], plain.data["mean"])
  for m in range(5):
    ood = bench.zoo_tasks["train_idx"][m] >= n_plain
    assert ood.all() if m in chosen else not ood.any()
  # Refusals: no folder named, a folder that is not there or holds no drawings.
  with pytest.raises(ConfigError, match="set config.zoo.out_of_domain_dir"):
    config_lib.validate(helpers.fewshot_config(zoo__contamination="out_of_domain=0.3"))
  with pytest.raises(DataError, match="is not a folder"):
    contamination.out_of_domain_images(str(tmp_path / "none"), 16)
  os.makedirs(tmp_path / "empty")
  with pytest.raises(DataError, match="holds no PNG drawings"):
    contamination.out_of_domain_images(str(tmp_path / "empty"), 16)
  # A damaged member (bad CRC) or a file that is not an image: one line naming it.
  import zipfile  # pylint: disable=g-import-not-at-top
  broken = tmp_path / "broken"
  os.makedirs(broken)
  with zipfile.ZipFile(os.path.join(omniglot, "images_background_small1.zip")) as z:
    first = next(n for n in z.namelist() if n.endswith(".png"))
    data = z.read(first)
  with zipfile.ZipFile(broken / "set.zip", "w", zipfile.ZIP_STORED) as z:
    z.writestr(first, data)
    z.writestr("set/Alpha9/character01/not_an_image.png", b"<html>")
  raw = bytearray((broken / "set.zip").read_bytes())
  at = raw.index(data[:16]) + 20
  raw[at] ^= 0xFF
  (broken / "set.zip").write_bytes(bytes(raw))
  with pytest.raises(DataError, match=r"set.zip:.*\.png: not a readable image"):
    contamination.out_of_domain_images(str(broken), 16)
  with pytest.raises(ConfigError, match="applies to a zoo of one architecture"):
    config_lib.validate(helpers.fewshot_config(
        zoo__contamination="out_of_domain=0.3", zoo__out_of_domain_dir=omniglot,
        zoo__architectures="conv4-8:3,resnet10:2", zoo__num_models=5))
