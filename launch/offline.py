r"""The offline DFL2L pipeline: zoo, fusion, meta-test, results.

  python -m launch.offline --config=configs/sinusoid.py --workdir=/tmp/sinusoid_offline

Resumes from the checkpoints in --workdir when rerun with the same command.
"""

from launch import common
from dfl2l_jax import pipeline


def main(config, workdir):
  pipeline.run(config, workdir, setting="offline")


if __name__ == "__main__":
  common.run(main)
