r"""The online DFL2L pipeline: zoo, fusion, meta-test, results.

  python -m launch.online --config=configs/sinusoid.py --workdir=/tmp/sinusoid_online

Resumes from the checkpoints in --workdir when rerun with the same command.
"""

from absl import flags

from launch import common
from dfl2l_jax import pipeline

flags.adopt_module_key_flags(common)  # --help shows --config, --workdir, --dry_run.


def main(config, workdir, command):
  return pipeline.run(config, workdir, setting="online", command=command)


if __name__ == "__main__":
  common.run(main, setting="online")
