"""Reproducible contamination of a zoo, for measuring what untrusted models do to a method.

A zoo collected from elsewhere holds models that should not be trusted. For experiments,
`config.zoo.contamination` replaces a share of the run's zoo, after it is trained or
imported, with bad models of the named kinds, e.g. "fake=0.3" or
"fake=0.1,wrong_classes=0.1" (kind=fraction of the N models, rounded; "" = none):

  fake           a random initialisation, never trained (its BatchNorm statistics, where
                 the zoo carries them, PyTorch's initial ones: mean 0, variance 1);
  wrong_classes  a trained model whose class list lies: the chosen models' parameters
                 (and statistics) are passed round among them (model k gets model k+1's,
                 the last the first's), so each keeps the classes the zoo lists for it
                 but computes another model's function (at least 2 such models);
  shuffled_labels  a model trained by our trainer on its task's images with the labels
                 shuffled (its training images permuted across its classes): 100% label
                 noise. It changes the training, so it is part of the trained zoo's spec
                 and needs a zoo trained here (not config.zoo.source);
  out_of_domain  a model trained by our trainer on another domain: its R classes are R
                 Omniglot characters (config.zoo.out_of_domain_dir: a folder of Omniglot's
                 zip archives, or of their extracted alphabets), drawn per model, their
                 20 drawings each resized to the benchmark's size and repeated to 3
                 channels, cycled to the task's number of training images; the zoo still
                 lists its own classes for it. Made while the zoo trains, as
                 shuffled_labels.

Which models, from config.seed alone: one permutation of the zoo, the first models to the
first kind, the next to the second, and so on (kinds never share a model). Nothing marks
them for the methods, as in real life; the run records them (results.json,
"zoo_quality" -> "contamination"). Kinds applied after training leave the trained zoo
(workdir/zoo) clean, so clean and such contaminated runs share one trained zoo.
"""

import functools
import io
import os
import zipfile

import jax
import jax.numpy as jnp
import numpy as np

from dfl2l_jax.errors import ConfigError, DataError

KINDS = ("fake", "wrong_classes", "shuffled_labels", "out_of_domain")
# Kinds made while the zoo trains (the rest: afterwards).
TRAINED = ("shuffled_labels", "out_of_domain")


def parse(spec):
  """"kind=fraction,..." -> {kind: fraction} in the order given; "" -> {}."""
  spec = str(spec or "").strip()
  if not spec:
    return {}
  out = {}
  for part in spec.split(","):
    kind, sep, value = part.strip().partition("=")
    kind = kind.strip()
    if not sep:
      raise ConfigError(f"config.zoo.contamination={spec!r}: {part.strip()!r} is not "
                        "kind=fraction (e.g. fake=0.3)")
    if kind not in KINDS:
      raise ConfigError(f"config.zoo.contamination={spec!r}: unknown kind {kind!r}; "
                        f"known: {', '.join(KINDS)}")
    if kind in out:
      raise ConfigError(f"config.zoo.contamination={spec!r}: {kind} is named twice")
    try:
      fraction = float(value)
    except ValueError:
      raise ConfigError(f"config.zoo.contamination={spec!r}: {value.strip()!r} is not a "
                        "number") from None
    if not 0.0 <= fraction < 1.0:
      raise ConfigError(f"config.zoo.contamination={spec!r}: the fraction of {kind} must "
                        f"be in [0, 1), got {fraction}")
    out[kind] = fraction
  if sum(out.values()) >= 1.0:
    raise ConfigError(f"config.zoo.contamination={spec!r}: the fractions add up to "
                      f"{sum(out.values()):g}; at least one clean model must stay")
  return out


def spec_of(config):
  """config.zoo.contamination ("" where the config has no such field)."""
  return str(config.zoo.get("contamination", "") or "")


def choose(seed, num_models, fractions):
  """{kind: sorted model indices}: disjoint, round(fraction * N) models each, from one
  permutation of the zoo drawn from `seed`."""
  perm = np.random.default_rng([seed, 30]).permutation(num_models)
  out, start = {}, 0
  for kind, fraction in fractions.items():
    count = int(round(fraction * num_models))
    if kind == "wrong_classes" and count == 1:
      raise ConfigError(f"config.zoo.contamination: wrong_classes={fraction} of "
                        f"{num_models} models is one model; a class list that lies is "
                        "made by passing parameters round at least 2 models")
    out[kind] = np.sort(perm[start:start + count])
    start += count
  return out


def validate(config):
  """Refuses a bad config.zoo.contamination with one line (parse, choose)."""
  fractions = parse(spec_of(config))
  if fractions:
    choose(config.seed, config.zoo.num_models, fractions)
  trained = [k for k in fractions if k in TRAINED and fractions[k] > 0]
  if trained and config.zoo.get("source", ""):
    raise ConfigError(f"config.zoo.contamination={spec_of(config)!r}: {trained[0]} changes "
                      "how models are trained, and config.zoo.source names a zoo trained "
                      "elsewhere")
  if fractions.get("out_of_domain") and not config.zoo.get("out_of_domain_dir", ""):
    raise ConfigError(f"config.zoo.contamination={spec_of(config)!r}: out_of_domain trains "
                      "models on another dataset; set config.zoo.out_of_domain_dir to a "
                      "folder of Omniglot's zip archives")


def training_spec(config):
  """The part of config.zoo.contamination made while the zoo trains ("" if none): part
  of the trained zoo's spec."""
  fractions = parse(spec_of(config))
  return ",".join(f"{k}={v:g}" for k, v in fractions.items() if k in TRAINED and v > 0)


def shuffle_labels(config, zoo_tasks):
  """The zoo tasks (sample_zoo_tasks) with each shuffled_labels model's training images
  permuted across its classes (its labels are then noise); the others unchanged."""
  fractions = parse(spec_of(config))
  if not fractions.get("shuffled_labels"):
    return zoo_tasks
  n = zoo_tasks["train_idx"].shape[0]
  train = np.array(zoo_tasks["train_idx"])
  for m in choose(config.seed, n, fractions)["shuffled_labels"]:
    rng = np.random.default_rng([config.seed, 31, int(m)])
    train[m] = rng.permutation(train[m].reshape(-1)).reshape(train[m].shape)
  return dict(zoo_tasks, train_idx=train)


def _png_members(directory):
  """[(character name, [(opener, member)])] of every Omniglot-like folder or zip archive
  in `directory`: a class is a folder holding PNG drawings (ALPHABET/characterNN)."""
  classes = {}
  for entry in sorted(os.listdir(directory)):
    path = os.path.join(directory, entry)
    if entry.endswith(".zip") and os.path.isfile(path):
      try:
        with zipfile.ZipFile(path) as z:
          names = z.namelist()
      except (zipfile.BadZipFile, OSError) as e:
        raise DataError(f"config.zoo.out_of_domain_dir: {path}: not a readable zip "
                        f"archive ({e})") from None
      for name in names:
        if name.lower().endswith(".png"):
          classes.setdefault(f"{entry}:{os.path.dirname(name)}", []).append((path, name))
    elif os.path.isdir(path):
      for root, _, files in os.walk(path):
        for f in sorted(files):
          if f.lower().endswith(".png"):
            classes.setdefault(root, []).append((None, os.path.join(root, f)))
  return sorted(classes.items())


@functools.lru_cache(maxsize=2)
def out_of_domain_images(directory, size):
  """(images uint8 (n, size, size, 3), class_of (n,) int): every drawing of the
  Omniglot-like set in `directory` (`_png_members`), greyscale resized to size x size
  (PIL's antialiased bicubic) and repeated to 3 channels; DataError naming the folder or
  file that cannot serve."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  if not os.path.isdir(directory):
    raise DataError(f"config.zoo.out_of_domain_dir={directory!r} is not a folder (it should "
                    "hold Omniglot's zip archives or their extracted alphabets)")
  classes = _png_members(directory)
  if not classes:
    raise DataError(f"config.zoo.out_of_domain_dir={directory!r} holds no PNG drawings "
                    "(neither in zip archives nor in folders)")
  images, class_of, archives = [], [], {}
  try:
    for c, (_, members) in enumerate(classes):
      for archive, name in members:
        try:
          if archive is None:
            with open(name, "rb") as f:
              raw = f.read()
          else:
            if archive not in archives:
              archives[archive] = zipfile.ZipFile(archive)
            raw = archives[archive].read(name)
          with Image.open(io.BytesIO(raw)) as im:
            grey = im.convert("L").resize((size, size), Image.BICUBIC)
        except (OSError, zipfile.BadZipFile, Image.DecompressionBombError) as e:
          raise DataError(f"config.zoo.out_of_domain_dir: {archive or ''}"
                          f"{':' if archive else ''}{name}: not a readable image "
                          f"({e})") from None
        images.append(np.repeat(np.asarray(grey, np.uint8)[..., None], 3, -1))
        class_of.append(c)
  finally:
    for z in archives.values():
      z.close()
  return np.stack(images), np.asarray(class_of, np.int32)


def out_of_domain(config, zoo_tasks, train_images):
  """(zoo_tasks, train_images): with out_of_domain models (module doc), the benchmark's
  training images followed by the out-of-domain set, and each such model's training
  images its own R characters' (indices into that block); else both unchanged."""
  fractions = parse(spec_of(config))
  if not fractions.get("out_of_domain"):
    return zoo_tasks, train_images
  images, class_of = out_of_domain_images(str(config.zoo.out_of_domain_dir),
                                          int(train_images.shape[1]))
  if images.shape[-1] != train_images.shape[-1]:
    raise DataError("config.zoo.out_of_domain_dir: the benchmark's images have "
                    f"{train_images.shape[-1]} channels; the out-of-domain set has 3")
  train = np.array(zoo_tasks["train_idx"])
  n, ways, n_train = train.shape
  n_classes = int(class_of.max()) + 1
  if n_classes < ways:
    raise DataError(f"config.zoo.out_of_domain_dir holds {n_classes} characters; an "
                    f"out-of-domain model needs {ways}")
  offset = train_images.shape[0]
  for m in choose(config.seed, n, fractions)["out_of_domain"]:
    rng = np.random.default_rng([config.seed, 32, int(m)])
    for r, c in enumerate(rng.choice(n_classes, ways, replace=False)):
      own = offset + rng.permutation(np.flatnonzero(class_of == c))
      train[m, r] = np.resize(own, n_train)  # cycled to the task's number of images
  return (dict(zoo_tasks, train_idx=train),
          np.concatenate([np.asarray(train_images), images.astype(train_images.dtype)]))


def apply(config, benchmark, zoo, running=None):
  """(zoo, running, record): the run's zoo with config.zoo.contamination applied (module
  doc), its BatchNorm statistics where it carries them (else None), and what was done
  ({"spec", "models": {kind: [indices]}}; None without contamination)."""
  fractions = parse(spec_of(config))
  if not fractions:
    return zoo, running, None
  n = jax.tree.leaves(zoo)[0].shape[0]
  chosen = choose(config.seed, n, fractions)
  for kind, idx in chosen.items():
    if not len(idx) or kind in TRAINED:  # made while the zoo trained
      continue
    if kind == "fake":
      keys = jax.random.split(jax.random.fold_in(jax.random.key(config.seed), 30), n)
      fresh = jax.vmap(benchmark.init_params)(keys[idx])
      zoo = jax.tree.map(lambda z, f: jnp.asarray(z).at[idx].set(f), zoo, fresh)
      if running is not None:
        running = jax.tree.map(lambda r, u: jnp.asarray(r).at[idx].set(u), running,
                               untrained_statistics(running, len(idx)))
    else:  # wrong_classes: model idx[k] computes model idx[k + 1]'s function
      source = np.roll(idx, -1)
      zoo = jax.tree.map(lambda z: jnp.asarray(z).at[idx].set(jnp.asarray(z)[source]), zoo)
      if running is not None:
        running = jax.tree.map(
            lambda r: jnp.asarray(r).at[idx].set(jnp.asarray(r)[source]), running)
  record = {"spec": spec_of(config),
            "models": {kind: [int(i) for i in idx] for kind, idx in chosen.items()}}
  return zoo, running, record


def untrained_statistics(stats, count):
  """BatchNorm statistics of `count` never-trained models, shaped like the rows of the
  stacked `stats`: PyTorch's initial ones, mean 0 and variance 1."""
  return jax.tree_util.tree_map_with_path(
      lambda path, leaf: jnp.full((count,) + leaf.shape[1:],
                                  1.0 if str(path[-1].key) == "var" else 0.0, leaf.dtype),
      stats)
