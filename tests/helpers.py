"""Small hand-made objects shared by the tests."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np

from configs import sinusoid as sinusoid_config
from dfl2l_jax import models


def tiny_template():
  """Parameters of a 1-4-1 MLP."""
  return models.MLP(hidden=(4,), out=1).init(jax.random.key(0), jnp.zeros((1, 1)))["params"]


def toy_zoo(n, key=1, spread=1.0, rank=2):
  """n parameter pytrees theta_i = base + spread * (low-rank task factor).

  The zoo has `rank` underlying task dimensions, so a fusion model with
  embed_dim >= rank can fit it exactly.
  """
  template = tiny_template()
  leaves, treedef = jax.tree.flatten(template)
  rng = np.random.default_rng(key)
  z = rng.normal(size=(n, rank)).astype(np.float32)
  out = []
  for leaf in leaves:
    basis = rng.normal(size=(rank,) + leaf.shape).astype(np.float32)
    out.append(jnp.asarray(np.asarray(leaf)[None] + spread * np.tensordot(z, basis, 1)))
  return jax.tree.unflatten(treedef, out)


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def subprocess_env(**extra):
  """The environment of a launcher subprocess: the CPU, and the session's compilation cache.

  The subprocesses share the test session's cache (tests/conftest.py): the
  launcher tests run the same smoke programs in many fresh processes.
  """
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  cache = os.environ.get("DFL2L_TEST_XLA_CACHE")
  if cache:
    env.update(JAX_COMPILATION_CACHE_DIR=cache, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
  env.update(extra)
  return env


def launch(module, *args, timeout=300):
  """Runs `python -m module args` from the repository root, as a user would."""
  return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env=subprocess_env(),
                        capture_output=True, text=True, timeout=timeout)


def smoke_config(**overrides):
  """The sinusoid smoke config, unlocked for overrides like zoo__steps=10.

  With the meta-test's fixed-rate SGD (step_bound 0) unless overridden: the bounded step
  costs a compilation of its own in every pipeline run, and it is tested where it matters
  (tests/test_adaptation.py, and the launcher runs of tests/test_launch.py and
  test_pipeline.py, which use configs/sinusoid.py:smoke as it is).
  """
  overrides.setdefault("metatest__step_bound", 0.0)
  return override(sinusoid_config.get_config("smoke"), **overrides)


def override(config, **overrides):
  """Sets fields given as section__field=value on an unlocked copy of the config."""
  with config.unlocked():
    for key, value in overrides.items():
      node = config
      parts = key.split("__")
      for p in parts[:-1]:
        node = node[p]
      node[parts[-1]] = value
  return config


def synthetic_image_loader(n_train_classes=8, n_test_classes=6, per_class=20, size=16,
                           seed=0):
  """A `loader(split)` for tasks.fewshot: class-dependent colour patterns + noise."""
  def loader(split):
    n = {"train": n_train_classes, "test": n_test_classes, "val": 3}[split]
    offset = {"train": 0, "test": 100, "val": 200}[split]
    rng = np.random.default_rng([seed, offset])
    protos = rng.uniform(40, 215, size=(n, 1, size, size, 3))
    noise = rng.normal(0, 25, size=(n, per_class, size, size, 3))
    images = np.clip(protos + noise, 0, 255).astype(np.uint8).reshape(-1, size, size, 3)
    labels = np.repeat(np.arange(n, dtype=np.int32), per_class)
    names = [f"{split}_class_{i}" for i in range(n)]
    return images, labels, names
  return loader


def fewshot_config(**overrides):
  from configs import fewshot_base  # pylint: disable=g-import-not-at-top
  c = fewshot_base.make("mini_imagenet", 3, "smoke")
  c = override(c, shots=(2, 4), metatest__query_per_class=5, zoo__bn_reference=4)
  return override(c, **overrides)


def load_script(name):
  """scripts/NAME.py as a module (scripts/ is not a package), for calling its main(argv)."""
  import importlib.util  # pylint: disable=import-outside-toplevel
  scripts = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts")
  if scripts not in sys.path:  # as when run as a script: its siblings import
    sys.path.append(scripts)
  path = os.path.join(scripts, name + ".py")
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def random_networks(arch, n, seed, running, size):
  """(params, batch_stats or None): n random networks of `arch` (zoo.store.network) for
  size x size images, stacked; random BatchNorm statistics if `running`.

  Drawn with numpy in the shapes of the network's variables: compiling a ResNet's
  `init` costs about 10 s on a 2-core CPU, its forward well under one.
  """
  from dfl2l_jax.zoo import store  # pylint: disable=g-import-not-at-top
  net = store.network(arch)
  shapes = jax.eval_shape(net.init, jax.random.key(0), jnp.zeros((1, size, size, 3)))
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    name = path[-1].key
    shape = (n,) + leaf.shape
    if name == "kernel":  # fan-in scaled, as a network's initialisation is
      return (rng.normal(size=shape) / np.sqrt(np.prod(leaf.shape[:-1]))).astype(np.float32)
    if name in ("scale", "var"):
      return rng.uniform(0.5, 1.5, shape).astype(np.float32)
    return rng.normal(0, 0.1, shape).astype(np.float32)  # biases, BN shifts, means

  params = jax.tree_util.tree_map_with_path(draw, shapes["params"])
  stats = jax.tree_util.tree_map_with_path(draw, shapes["batch_stats"]) if running else None
  return params, stats
