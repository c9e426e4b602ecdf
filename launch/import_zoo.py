r"""Imports teachers trained elsewhere into a zoo folder that every launcher reads.

  python -m launch.import_zoo --format=dfml --src=teachers/ --out=zoos/mine \
      --class_names=class_names.txt --image_size=32 \
      --mean=0.5071,0.4867,0.4408 --std=0.2675,0.2565,0.2761
  python -m launch.offline --config=configs/cifarfs_5way.py:proxy --workdir=runs/mine \
      --config.zoo.source=zoos/mine --config.data.manual_dir=/path/to/mini-imagenet

Formats: dfml (FREE / TGR / PURER-Plus teacher files), dfml_bare (PURER's bare state dicts,
with --model_classes), l2l (learn2learn CNN4 / ResNet12 state dicts, with --model_classes),
safetensors (a folder with a zoo.json the user writes). A folder may mix architectures
(Conv4s of several widths, the field's ResNets): each file's network is the one whose names
it holds. docs/zoo_format.md has the details.
"""

import sys

from absl import app
from absl import flags
from absl import logging

from dfl2l_jax import metrics
from dfl2l_jax.errors import Dfl2lError
from dfl2l_jax.zoo import importer
from dfl2l_jax.zoo import store

FORMAT = flags.DEFINE_enum("format", None, importer.FORMATS, "How the teachers are saved.")
SRC = flags.DEFINE_string("src", None, "The folder holding the teacher files.")
OUT = flags.DEFINE_string("out", None, "The zoo folder to write (new or empty).")
CLASS_NAMES = flags.DEFINE_string(
    "class_names", None, "A file with one class name a line, in the order the teachers' "
    "class indices use (for dfml: the meta-training classes in order of first appearance in "
    "the split file).")
MODEL_CLASSES = flags.DEFINE_string(
    "model_classes", None, "dfml_bare, l2l: a file whose line i lists model i's class "
    "indices (into --class_names) in the order of its outputs.")
IMAGE_SIZE = flags.DEFINE_integer("image_size", None, "The side of the square images the "
                                  "teachers were trained on, e.g. 32 or 84.")
MEAN = flags.DEFINE_list("mean", None, "Per-channel mean of the teachers' input "
                         "normalisation, of pixels in [0, 1], e.g. 0.5071,0.4867,0.4408.")
STD = flags.DEFINE_list("std", None, "Per-channel std of the input normalisation.")
CHANNEL_ORDER = flags.DEFINE_enum("channel_order", "RGB", ["RGB", "BGR"],
                                  "The channel order the teachers expect.")



def fail(message):
  print(f"error: {message}", file=sys.stderr)
  sys.exit(1)


def parse_flags(argv):
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    fail(str(e).splitlines()[0])

def _floats(flag, values):
  if values is None:
    return None
  try:
    return [float(v) for v in values]
  except ValueError:
    fail(f"--{flag}={','.join(values)}: expected numbers separated by commas")


def main(argv):
  logging.set_verbosity(logging.WARNING)  # our progress at INFO, other libraries' quiet
  if len(argv) > 1:
    fail(f"unexpected arguments: {' '.join(argv[1:])}")
  for flag in (FORMAT, SRC, OUT):
    if flag.value is None:
      fail(f"--{flag.name} is required (see --help)")
  metrics.install_stderr_handler()
  try:
    names = (importer.read_class_names(CLASS_NAMES.value) if CLASS_NAMES.value else None)
    per_model = (importer.read_model_classes(MODEL_CLASSES.value) if MODEL_CLASSES.value
                 else None)
    manifest = importer.import_zoo(
        FORMAT.value, SRC.value, OUT.value, class_names=names, image_size=IMAGE_SIZE.value,
        mean=_floats("mean", MEAN.value), std=_floats("std", STD.value),
        model_classes=per_model, channel_order=CHANNEL_ORDER.value)
  except Dfl2lError as e:
    fail(e)
  groups = ", ".join(f"{store.group_name(arch)} x{len(indices)}"
                     for arch, indices in store.group_indices(manifest))
  print(f"{OUT.value}: {len(manifest['models'])} models ({groups}; "
        f"{manifest['architecture']['ways']}-way, BatchNorm {manifest['batch_norm']}); use it "
        f"with --config.zoo.source={OUT.value}", file=sys.stdout)


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
