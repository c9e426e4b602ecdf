"""Shared plumbing of the absl entry points: flags, logging, clean failures."""

import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from dfl2l_jax import metrics
from dfl2l_jax import sharding
from dfl2l_jax.errors import Dfl2lError

CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a config file.",
                                         lock_config=True)
WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (checkpoints, results).")


def main_wrapper(fn):
  """Runs `fn(config, workdir)`; a Dfl2lError ends with its message and exit 1."""

  def main(argv):
    if len(argv) > 1:
      raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if CONFIG.value is None:
      raise app.UsageError("--config is required, e.g. --config=configs/sinusoid.py")
    if not WORKDIR.value:
      raise app.UsageError("--workdir is required")
    # Our progress at INFO; other libraries' (orbax's many lines) at WARNING.
    logging.set_verbosity(logging.WARNING)
    try:
      # Several hosts: --config.mesh.distributed=True or DFL2L_DISTRIBUTED=1, before
      # anything touches the devices. Then only process 0 logs.
      sharding.initialize_distributed(CONFIG.value)
      metrics.install_stderr_handler()
      fn(CONFIG.value, WORKDIR.value)
    except Dfl2lError as e:
      print(f"error: {e}", file=sys.stderr)
      sys.exit(1)

  return main


def run(fn):
  app.run(main_wrapper(fn))
