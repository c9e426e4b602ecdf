r"""Meta-tests the initialisations saved in --workdir again (Algorithm 3).

  python -m launch.evaluate --config=configs/sinusoid.py --workdir=/tmp/sinusoid \
      --config.metatest.steps=200

Meta-test fields (shots, steps, lr, tasks) may be changed; the zoo must match.
"""

from absl import flags

from launch import common
from dfl2l_jax import pipeline

flags.adopt_module_key_flags(common)  # --help shows --config, --workdir, --dry_run.


def main(config, workdir, command):
  return pipeline.evaluate(config, workdir, command=command)


if __name__ == "__main__":
  common.run(main, setting="offline")
