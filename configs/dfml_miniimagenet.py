r"""Mini-ImageNet in the data-free meta-learning field's protocol (configs/dfml_protocol.py).

  python -m launch.offline --config=configs/dfml_miniimagenet.py --workdir=/tmp/dfml_mini \
      --config.data.manual_dir=/path/to/mini-imagenet --config.methods=va,zoo_features

Variants: ':smoke', ':reduced'.
"""

from configs import dfml_protocol


def get_config(arg=None):
  return dfml_protocol.make("mini_imagenet", arg)
