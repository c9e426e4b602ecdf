r"""10-way few-shot classification, CIFAR-FS protocol (paper Section 5.3, Tables 2-3).

  python -m launch.offline --config=configs/cifarfs_10way.py --workdir=/tmp/cifarfs_10way \
      --config.data.manual_dir=/path/to/folder/with/cifar-100-python.tar.gz

Online: launch.online with the same flags. Variants: ':smoke' (a few minutes on a 2-core CPU),
':proxy' (Mini-ImageNet at 32x32 stands in for CIFAR-100; manual_dir is then the
Mini-ImageNet folder), combinable as ':proxy,smoke'
"""

from configs import fewshot_base


def get_config(arg=None):
  return fewshot_base.make("cifar_fs", 10, arg)
