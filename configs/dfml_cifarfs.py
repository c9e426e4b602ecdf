r"""CIFAR-FS in the data-free meta-learning field's protocol (configs/dfml_protocol.py).

  python -m launch.offline --config=configs/dfml_cifarfs.py --workdir=/tmp/dfml_cifarfs \
      --config.data.manual_dir=/path/to/folder/with/cifar-100-python.tar.gz \
      --config.methods=va,zoo_features

Variants: ':proxy' (Mini-ImageNet at 32x32 for CIFAR-100), ':smoke', ':reduced'; combinable,
e.g. ':proxy,reduced'.
"""

from configs import dfml_protocol


def get_config(arg=None):
  return dfml_protocol.make("cifar_fs", arg)
