r"""Trains the model zoo only (resumable).

  python -m launch.pretrain --config=configs/sinusoid.py --workdir=/tmp/sinusoid
"""

from absl import flags

from launch import common
from dfl2l_jax import pipeline

flags.adopt_module_key_flags(common)  # --help shows --config, --workdir, --dry_run.


def main(config, workdir, command):
  pipeline.pretrain(config, workdir)


if __name__ == "__main__":
  common.run(main, setting="offline")
