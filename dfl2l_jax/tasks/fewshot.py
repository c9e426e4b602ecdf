"""Few-shot image classification: CIFAR-FS and Mini-ImageNet (paper Sections 5.3-5.4).

Zoo (paper 5.3): model m solves an R-way task over R classes drawn from the
meta-training classes; each of its classes' images is split 60/20/20 into that
model's train / validation / test images. Meta-test: tasks of R classes drawn
from the meta-test classes, `shots` support and `query_per_class` query images
per class. The network is Conv4 (models.Conv4).

Images stay uint8 in device memory (`Benchmark.data`); tasks and episodes hold
indices into them, and batches are gathered and normalised inside the compiled
programs.

BatchNorm: a training batch is normalised by its own statistics; a zoo model is
evaluated on its test images with the statistics of (up to) `bn_reference`
training images per class; a meta-test query set is evaluated with the
statistics of the task's support set. Query images never share statistics,
within or across tasks.

Randomness: zoo task m from `default_rng([seed, 3, m])`, test task t from
`default_rng([seed, 1, t])`.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util

from dfl2l_jax import models
from dfl2l_jax.errors import ConfigError, DataError, ZooError
from dfl2l_jax.tasks import base
from dfl2l_jax.zoo import contamination
from dfl2l_jax.zoo import source as zoo_source
from dfl2l_jax.zoo import store

# Ways the images of a class are split for each zoo model (paper 5.3).
TRAIN_FRACTION, VAL_FRACTION = 0.6, 0.2

PROTOCOLS = {"cifar_fs": ("cifar_fs", "mini_imagenet32"),
             "mini_imagenet": ("mini_imagenet",)}


def benchmark_name(protocol, dataset):
  """The name results carry: a stand-in dataset is never reported as the real one."""
  if dataset == "mini_imagenet32" and protocol == "cifar_fs":
    return "cifar_fs_protocol_on_mini_imagenet32"
  return protocol


def class_table(labels, n_classes):
  """(n_classes, per_class) image indices, from labels sorted by class."""
  counts = np.bincount(labels, minlength=n_classes)
  if counts.min() != counts.max():
    raise DataError(f"classes have unequal image counts ({counts.min()}..{counts.max()})")
  order = np.argsort(labels, kind="stable")
  return order.reshape(n_classes, counts[0]).astype(np.int32)


def split_sizes(per_class):
  n_train = int(round(TRAIN_FRACTION * per_class))
  n_val = int(round(VAL_FRACTION * per_class))
  return n_train, n_val, per_class - n_train - n_val


def sample_zoo_tasks(seed, num_models, ways, table, classes_of=None, first=0):
  """Per model: R meta-training classes and a 60/20/20 split of their images; the models
  are numbered from `first` (one group of a zoo of several architectures, zoo/mixed.py).

  `classes_of`: (num_models, R) class indices given by an imported zoo's manifest
  (default: drawn from the seed); its models' training images are unknown, so its
  "train" and "test" images are only a split of the benchmark's images of those classes.
  """
  n_classes, per_class = table.shape
  if ways > n_classes:
    raise ConfigError(f"zoo tasks need {ways} classes but the meta-training split has "
                      f"{n_classes}")
  n_train, n_val, n_test = split_sizes(per_class)
  train, test, classes = [], [], []
  for m in range(num_models):
    rng = np.random.default_rng([seed, 3, first + m])
    cls = (rng.choice(n_classes, ways, replace=False) if classes_of is None
           else np.asarray(classes_of[m]))
    perms = np.stack([table[c][rng.permutation(per_class)] for c in cls])
    train.append(perms[:, :n_train])
    test.append(perms[:, n_train + n_val:])
    classes.append(cls)
  return {"train_idx": np.stack(train), "test_idx": np.stack(test),
          "classes": np.stack(classes).astype(np.int32)}


def sample_episodes(seed, num_tasks, ways, shots, query, table, split="meta-test"):
  """Episodes as indices into the images of one class split (`split`, for messages).

  Task t permutes each of its classes' images once; its support set is the
  first `shots` and its query set the last `query`, so the query set is the
  same at every shot count and never overlaps the support set. The meta-validation
  split draws from a random stream of its own.
  """
  n_classes, per_class = table.shape
  if ways > n_classes:
    raise ConfigError(f"{split} tasks need {ways} classes; the {split} split has {n_classes}")
  if shots + query > per_class:
    raise ConfigError(f"{shots} shots + {query} queries per class exceed the {per_class} "
                      f"images a {split} class has")
  stream = 2 if split == "meta-validation" else 1
  s_idx, q_idx, classes = [], [], []
  for t in range(num_tasks):
    rng = np.random.default_rng([seed, stream, t])
    cls = rng.choice(n_classes, ways, replace=False)
    perms = np.stack([table[c][rng.permutation(per_class)] for c in cls])
    s_idx.append(perms[:, :shots].reshape(-1))
    q_idx.append(perms[:, per_class - query:].reshape(-1))
    classes.append(cls)
  labels = lambda k: np.repeat(np.arange(ways, dtype=np.int32), k)
  return {"support_idx": np.stack(s_idx).astype(np.int32),
          "support_y": np.tile(labels(shots), (num_tasks, 1)),
          "query_idx": np.stack(q_idx).astype(np.int32),
          "query_y": np.tile(labels(query), (num_tasks, 1)),
          "classes": np.stack(classes).astype(np.int32)}


def resolve_backend_choices(config):
  """(conv_impl, member_loop): "auto" picks what is fastest on the default backend.

  conv_impl "auto": "patches" on CPU and GPU, "xla" elsewhere (TPU); member_loop
  "auto": "map" on CPU, "vmap" elsewhere. Why: docs/implementation.md, "auto".
  """
  backend = jax.default_backend()
  conv = config.model.conv_impl
  loop = config.zoo.member_loop
  if conv == "auto":
    conv = "patches" if backend in ("cpu", "gpu", "cuda", "rocm") else "xla"
  if loop == "auto":
    loop = "map" if backend == "cpu" else "vmap"
  if conv not in ("xla", "patches"):
    raise ConfigError(f"config.model.conv_impl must be auto, xla or patches, got {conv!r}")
  if loop not in ("vmap", "map"):
    raise ConfigError(f"config.zoo.member_loop must be auto, vmap or map, got {loop!r}")
  return conv, loop


def normalise(images, mean, std):
  return (images.astype(jnp.float32) / 255.0 - mean) / std


def cross_entropy(logits, labels):
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def accuracy(logits, labels):
  return 100.0 * jnp.mean(jnp.argmax(logits, -1) == labels)


def imported_zoo_classes(imported, train_names, test_names, indices=None):
  """(num_models, R) indices into the meta-training classes of an imported zoo's models'
  classes (of the models `indices`, default all); ZooError naming the model and the class
  for a meta-test class or a class the benchmark's meta-training split does not have.
  Every model of the zoo is checked, whichever `indices` are returned."""
  manifest = imported.manifest
  index = {n: i for i, n in enumerate(train_names)}
  test = set(test_names)
  out = []
  for m in manifest["models"]:
    names = [manifest["class_names"][c] for c in m["classes"]]
    for name in names:
      if name in test:
        raise ZooError(f"{imported.directory}: model {m['file']} was trained on {name!r}, a "
                       "meta-test class of this benchmark: its test tasks would not be new "
                       "to the zoo (remove the model, or use another benchmark)")
      if name not in index:
        raise ZooError(f"{imported.directory}: model {m['file']} has class {name!r}, which "
                       "is not a meta-training class of this benchmark (is --class_names the "
                       "list the teachers' labels index into, and the dataset right?)")
    out.append([index[n] for n in names])
  out = np.asarray(out, np.int32)
  return out if indices is None else out[np.asarray(indices)]


def make_benchmark(config, loader=None, imported=None, network=None,
                   first_model=0) -> base.Benchmark:
  """Builds the benchmark; `loader(split)` -> (images, labels, class_names).

  `loader` defaults to the tfds datasets of `dfl2l_jax.data` configured by
  `config.data`; tests pass their own. `imported`: a zoo read from its folder
  (zoo.store.LoadedZoo, config.zoo.source): its manifest then gives the network, the
  input normalisation and channel order, and each zoo model's classes. `network`: the
  zoo's network if not the config's Conv4 (a ResNet group of zoo/mixed.py), whose models
  are numbered from `first_model`.
  """
  protocol, dc = config.benchmark, config.data
  if dc.dataset not in PROTOCOLS[protocol]:
    raise ConfigError(f"config.data.dataset={dc.dataset!r} cannot serve the {protocol} "
                      f"protocol; use one of {PROTOCOLS[protocol]}")
  if loader is None:
    from dfl2l_jax.data import load  # pylint: disable=g-import-not-at-top
    loader = functools.partial(load.load_split, dc.dataset, data_dir=dc.data_dir or None,
                               manual_dir=dc.manual_dir or None, strict=dc.strict)
  manifest = imported.manifest if imported is not None else None
  bgr = manifest is not None and manifest["channel_order"] == "BGR"
  # A zoo trained on BGR images gets every image with its channels reversed.
  load = (lambda split: _reversed_channels(*loader(split))) if bgr else loader
  train_images, train_labels, train_names = load("train")
  test_images, test_labels, test_names = load("test")
  if set(train_names) & set(test_names):
    raise DataError("meta-training and meta-test classes overlap: "
                    f"{sorted(set(train_names) & set(test_names))[:5]}")
  train_table = class_table(np.asarray(train_labels), len(train_names))
  test_table = class_table(np.asarray(test_labels), len(test_names))
  ways = config.zoo.ways
  if ways > test_table.shape[0]:
    raise ConfigError(f"config.zoo.ways={ways}: a test task needs {ways} classes, but the "
                      f"meta-test split has {test_table.shape[0]}")
  if manifest is None:
    zoo_tasks = contamination.shuffle_labels(config, sample_zoo_tasks(
        config.seed, config.zoo.num_models, ways, train_table, first=first_model))
    mean = train_images.reshape(-1, 3).mean(0) / 255.0
    std = train_images.reshape(-1, 3).std(0) / 255.0
    # Out-of-domain models' images follow the benchmark's (after its statistics).
    zoo_tasks, train_images = contamination.out_of_domain(config, zoo_tasks, train_images)
  else:
    if train_images.shape[1:3] != (manifest["image_size"],) * 2:
      raise ConfigError(
          f"the imported zoo {imported.directory} was trained on {manifest['image_size']}-"
          f"pixel images, this benchmark's are {train_images.shape[1]}x"
          f"{train_images.shape[2]}: use the config of its image size")
    # A zoo of several architectures: the run's group is the zoo (zoo/source.py).
    group = zoo_source.main_group(imported, config.zoo.get("group", ""))
    zoo_tasks = sample_zoo_tasks(config.seed, len(group.indices), ways, train_table,
                                 imported_zoo_classes(imported, train_names, test_names,
                                                      group.indices))
    # The zoo's models see the normalisation they were trained with.
    mean = np.asarray(manifest["normalization"]["mean"], np.float32)
    std = np.asarray(manifest["normalization"]["std"], np.float32)
  data = {"train_images": jnp.asarray(train_images), "test_images": jnp.asarray(test_images),
          "mean": jnp.asarray(mean, jnp.float32), "std": jnp.asarray(std, jnp.float32)}
  conv_impl, member_loop = resolve_backend_choices(config)
  if config.model.bn_impl not in models.BN_IMPLS:
    raise ConfigError(f"config.model.bn_impl must be one of {models.BN_IMPLS}, "
                      f"got {config.model.bn_impl!r}")
  net = network or models.Conv4(ways=ways, filters=config.model.filters,
                                conv_impl=conv_impl, bn_impl=config.model.bn_impl)
  if network is not None and config.zoo.member_loop == "auto":
    # A ResNet has XLA's convolutions (no patches). On CPU they are 12x slower inside any
    # compiled loop (scan, lax.map) than called alone, and vmapped members (each its own
    # images) make grouped convolutions: one step of one member per call there, vmapped
    # elsewhere (docs/implementation.md, "member_loop").
    member_loop = "loop" if jax.default_backend() == "cpu" else "vmap"
  batch_size, n_train = config.zoo.batch_size, zoo_tasks["train_idx"].shape[-1]
  n_ref = min(config.zoo.bn_reference, n_train)

  def batch_fn(task, key, data):
    k_cls, k_pos = jax.random.split(key)
    cls = jax.random.randint(k_cls, (batch_size,), 0, ways)
    pos = jax.random.randint(k_pos, (batch_size,), 0, n_train)
    idx = task["train_idx"][cls, pos]
    return {"x": normalise(data["train_images"][idx], data["mean"], data["std"]), "y": cls}

  def loss_fn(params, batch):
    return cross_entropy(models.apply_train_mode(net, params, batch["x"]), batch["y"])

  def metric_fn(params, query, support):
    return accuracy(models.apply_with_reference(net, params, query["x"], support["x"]),
                    query["y"])

  def evaluate(network, params, task, data, bn_stats=None):
    """Accuracy of `network` on the task's test images; BatchNorm from `bn_stats` (a zoo
    that carries running statistics) or from `bn_reference` training images per class."""
    img = lambda idx: normalise(data["train_images"][idx.reshape(-1)], data["mean"],
                                data["std"])
    test_idx = task["test_idx"]
    labels = jnp.repeat(jnp.arange(ways), test_idx.shape[1])
    if bn_stats is not None:
      logits = network.apply({"params": params, "batch_stats": bn_stats}, img(test_idx),
                             train=False)
    else:
      logits = models.apply_with_reference(network, params, img(test_idx),
                                           img(task["train_idx"][:, :n_ref]))
    return accuracy(logits, labels)

  zoo_eval_fn = functools.partial(evaluate, net)
  zoo_bn_stats_fn = functools.partial(population_stats, net, batch_size)

  def group_tasks(group):
    """The zoo tasks of `group`, a group of the imported zoo other than the run's: those
    it would have as the run's group (images of its models' own classes)."""
    return sample_zoo_tasks(config.seed, len(group.indices), ways, train_table,
                            imported_zoo_classes(imported, train_names, test_names,
                                                 group.indices))

  def group_bn_stats_fn(group):
    """The BatchNorm population statistics of `group`, a group of the imported zoo other
    than the run's, whose models normalise with a batch's statistics (batch_norm
    "batch"): each model's over images of its own classes (group_tasks), by its own
    network, as zoo_bn_stats_fn gives the run's."""
    return group_population_stats(store.network(group.architecture), batch_size,
                                  group.params, group_tasks(group), data)

  def group_quality_fn(group):
    """Each model's zoo_eval_fn measure for `group`, a group of the imported zoo other
    than the run's: by its own network on its group_tasks, with its stored BatchNorm
    statistics where the zoo carries them (map_models). A list, in the group's order."""
    gnet = store.network(group.architecture)
    stats = group.bn_stats if imported.manifest["batch_norm"] == "running" else None
    values = map_models(gnet, lambda p, t, s, d: evaluate(gnet, p, t, d, s),
                        (group.params, group_tasks(group), stats), data)
    return [float(v) for v in values]

  def gather_episode(ep, data):
    return _gather(ep, data, "test_images")

  mt = config.metatest
  per_class = test_table.shape[1]
  validation = {}  # the meta-validation images, loaded on first use

  def validation_episodes(shots, num_tasks):
    if not validation:
      images, labels, names = load("val")
      overlap = set(names) & (set(train_names) | set(test_names))
      if overlap:
        raise DataError("meta-validation classes overlap the meta-training or meta-test "
                        f"ones: {sorted(overlap)[:5]}")
      validation["table"] = class_table(np.asarray(labels), len(names))
      validation["data"] = {"val_images": jnp.asarray(images), "mean": data["mean"],
                            "std": data["std"]}
    eps = sample_episodes(config.seed, num_tasks, ways, shots, mt.query_per_class,
                          validation["table"], split="meta-validation")
    return eps, validation["data"], gather_validation_episode

  return base.Benchmark(
      name=benchmark_name(protocol, dc.dataset), metric="accuracy", model=net,
      example_input=np.zeros((1,) + train_images.shape[1:], np.float32),
      zoo_tasks=zoo_tasks, batch_fn=batch_fn, loss_fn=loss_fn, metric_fn=metric_fn,
      zoo_eval_fn=zoo_eval_fn,
      make_episodes=lambda shots: sample_episodes(config.seed, mt.num_tasks, ways, shots,
                                                  mt.query_per_class, test_table),
      points_available=per_class - mt.query_per_class,
      spec={"benchmark": protocol, "dataset": dc.dataset,
            "model": "Conv4" if network is None else type(network).__name__,
            "filters": config.model.filters, "ways": ways,
            "image_shape": list(train_images.shape[1:]),
            "train_classes": list(train_names), "test_classes": list(test_names),
            **({"imported_zoo": imported.digest} if imported is not None else {}),
            **({"imported_zoo_group": group.name}
               if imported is not None and imported.mixed else {})},
      data=data, gather_episode=gather_episode, member_loop=member_loop, imported_zoo=imported,
      zoo_bn_stats_fn=zoo_bn_stats_fn, validation_episodes=validation_episodes,
      group_bn_stats_fn=group_bn_stats_fn if imported is not None and imported.mixed else None,
      group_quality_fn=group_quality_fn if imported is not None and imported.mixed else None)


def population_stats(net, batch_size, params, task, data):
  """Population statistics of each BatchNorm input of `net` over a zoo model's training
  images: the mean over training batches (classes interleaved, `batch_size` images, the
  remainder dropped) of the batch means, and of the batch second moments minus the
  squared population mean; each batch normalised by its own statistics, as in training."""
  idx = task["train_idx"].T.reshape(-1)  # position-major: every batch mixes the classes
  size = min(batch_size, idx.shape[0])
  batches = idx[:(idx.shape[0] // size) * size].reshape(-1, size)

  def one(b):  # per layer ("Block_0/BN1": a ResNet's nest) its (mean, second moment)
    x = normalise(data["train_images"][b], data["mean"], data["std"])
    _, state = net.apply({"params": params}, x, train=True, mutable=["batch_stats"])
    st = traverse_util.flatten_dict(state["batch_stats"], sep="/")
    layers = [k[:-len("/mean")] for k in st if k.endswith("/mean")]
    return {k: (st[k + "/mean"], st[k + "/var"] + st[k + "/mean"] ** 2) for k in layers}

  moments = jax.tree.map(lambda a: a.mean(0), jax.lax.map(one, batches))
  stats = {}
  for layer, (mean, sq) in moments.items():
    stats[layer + "/mean"], stats[layer + "/var"] = mean, jnp.maximum(sq - mean ** 2, 0.0)
  return traverse_util.unflatten_dict(stats, sep="/")


def map_models(net, fn, stacked, data):
  """fn(*one model's slice of `stacked`, data) for every model of a group of network `net`
  (`stacked`: pytrees with a leading model axis), stacked as host arrays. A Conv4 group
  in one compiled call over the models; a ResNet's on CPU one model per call (XLA's CPU
  convolutions are 12x slower inside a compiled loop: docs/implementation.md,
  "member_loop")."""
  stacked = jax.tree.map(jnp.asarray, stacked)
  if isinstance(net, models.Conv4) or jax.default_backend() != "cpu":
    out = jax.jit(lambda s, d: jax.lax.map(lambda a: fn(*a, d), s))(stacked, data)
  else:
    one = jax.jit(fn)
    n = jax.tree.leaves(stacked)[0].shape[0]
    out = jax.tree.map(lambda *o: jnp.stack(o), *[
        one(*jax.tree.map(lambda x, m=m: x[m], stacked), data) for m in range(n)])
  return jax.tree.map(np.asarray, out)


def group_population_stats(net, batch_size, params, tasks, data):
  """population_stats of every model of a group (`params` and `tasks` stacked on a
  leading model axis), as host arrays (map_models)."""
  return map_models(net, functools.partial(population_stats, net, batch_size),
                    (params, tasks), data)


def _reversed_channels(images, labels, names):
  return np.ascontiguousarray(images[..., ::-1]), labels, names


def _gather(ep, data, images):
  img = lambda idx: normalise(data[images][idx], data["mean"], data["std"])
  return ({"x": img(ep["support_idx"]), "y": ep["support_y"]},
          {"x": img(ep["query_idx"]), "y": ep["query_y"]})


def gather_validation_episode(ep, data):
  """One meta-validation episode (a module-level function: a stable static argument)."""
  return _gather(ep, data, "val_images")
