"""Test setup: several fake CPU devices before JAX starts, so sharding can be tested.

Also a persistent compilation cache for this session only: the pipeline tests run
the same small programs many times through freshly built `jit`s (and the launcher
tests in fresh processes), and XLA compilation dominates their time.
"""

import atexit
import os
import shutil
import sys
import tempfile

import jax

jax.config.update("jax_num_cpu_devices", 4)

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
