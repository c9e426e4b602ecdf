r"""Meta-tests the initialisations saved in --workdir again (Algorithm 3).

  python -m launch.evaluate --config=configs/sinusoid.py --workdir=/tmp/sinusoid \
      --config.metatest.steps=200

Meta-test fields (shots, steps, lr, tasks) may be changed; the zoo must match.
"""

from launch import common
from dfl2l_jax import pipeline


def main(config, workdir):
  pipeline.evaluate(config, workdir)


if __name__ == "__main__":
  common.run(main)
