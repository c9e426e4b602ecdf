r"""Trains the model zoo only (resumable).

  python -m launch.pretrain --config=configs/sinusoid.py --workdir=/tmp/sinusoid
"""

from launch import common
from dfl2l_jax import pipeline


def main(config, workdir):
  pipeline.pretrain(config, workdir)


if __name__ == "__main__":
  common.run(main)
