r"""5-way few-shot classification, Mini-ImageNet protocol (paper Section 5.3, Tables 2-3).

  python -m launch.offline --config=configs/miniimagenet_5way.py --workdir=/tmp/miniimagenet_5way \
      --config.data.manual_dir=/path/to/mini-imagenet

Online: launch.online with the same flags. Variants: ':smoke' (a few minutes on a 2-core CPU)
"""

from configs import fewshot_base


def get_config(arg=None):
  return fewshot_base.make("mini_imagenet", 5, arg)
