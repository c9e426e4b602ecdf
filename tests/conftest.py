"""Test setup: several fake CPU devices before JAX starts, so sharding can be tested.

Also a persistent compilation cache for this session only: the pipeline tests run
the same small programs many times through freshly built `jit`s (and the launcher
tests in fresh processes), and XLA compilation dominates their time.

And JAX's threefry random numbers in their non-partitionable form unless
JAX_THREEFRY_PARTITIONABLE says otherwise: on this CPU the partitionable form (JAX's
default) takes about ten times as long to compile (2.7 s against 0.25 s for one
`jax.random.normal`), and draws and initialisations were a fifth of the suite's compile
time. The numbers drawn differ, not what is tested; `.ci/run` runs the slow tests with
JAX's default, the form the launchers use.
"""

import atexit
import os
import shutil
import sys
import tempfile

# Before JAX reads its flags; the launchers the tests start as subprocesses inherit it.
os.environ.setdefault("JAX_THREEFRY_PARTITIONABLE", "0")

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position

jax.config.update("jax_num_cpu_devices", 4)
jax.config.update("jax_threefry_partitionable",
                  os.environ["JAX_THREEFRY_PARTITIONABLE"].lower() in ("1", "true"))

_CACHE = tempfile.mkdtemp(prefix="dfl2l_test_xla_cache_")
atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)
jax.config.update("jax_compilation_cache_dir", _CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
# The launchers the tests start as subprocesses use the same cache (tests/helpers.launch).
os.environ["DFL2L_TEST_XLA_CACHE"] = _CACHE

# `from tests import helpers` needs the repository root on sys.path: `python -m pytest` (the
# README's command) puts it there, a bare `pytest` does not (it adds only tests/).
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


# The files of the longest end-to-end runs first (about 100-170 s each on 2 cores, measured
# with --durations), the others in file order: with `--dist loadfile` a worker takes the next
# file when it runs low, and xdist's own order (most tests first) left a long file for last
# while the other worker had finished. Order only: a file missing here just runs later.
_LONGEST_FIRST = ("test_mixed_zoo.py", "test_pipeline.py", "test_inversion.py",
                  "test_zoo_features.py", "test_imported_zoo_pipeline.py")


def pytest_configure(config):
  if hasattr(config.option, "loadscopereorder"):  # pytest-xdist's "most tests first"
    config.option.loadscopereorder = False


def pytest_collection_modifyitems(items):
  rank = {name: i for i, name in enumerate(_LONGEST_FIRST)}
  items.sort(key=lambda item: rank.get(item.path.name, len(rank)))
