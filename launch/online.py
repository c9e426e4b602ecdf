r"""The online DFL2L pipeline: zoo, fusion, meta-test, results.

  python -m launch.online --config=configs/sinusoid.py --workdir=/tmp/sinusoid_online

Resumes from the checkpoints in --workdir when rerun with the same command.
"""

from launch import common
from dfl2l_jax import pipeline


def main(config, workdir):
  pipeline.run(config, workdir, setting="online")


if __name__ == "__main__":
  common.run(main)
