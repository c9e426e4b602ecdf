r"""Writes a method's initialisation as a PyTorch or safetensors state dict.

  python -m launch.export --workdir=runs/mine --method=va --format=torch --layout=dfml \
      --out=va_init.pth

Then, in PyTorch: `model.load_state_dict(torch.load("va_init.pth", weights_only=True))`
with the field's ConvNet (--layout=dfml) or learn2learn's CNN4 (--layout=l2l).
docs/zoo_format.md has the details.
"""

import sys

from absl import app
from absl import flags
from absl import logging

from dfl2l_jax.errors import Dfl2lError
from dfl2l_jax.zoo import exporter
from dfl2l_jax.zoo import layouts

WORKDIR = flags.DEFINE_string("workdir", None, "The run directory holding inits/<method>.")
METHOD = flags.DEFINE_string("method", None, "The method whose initialisation to export.")
FORMAT = flags.DEFINE_enum("format", "torch", exporter.FORMATS, "The file format.")
LAYOUT = flags.DEFINE_enum("layout", "dfml", layouts.LAYOUTS,
                           "The state-dict names: the network class that loads it.")
OUT = flags.DEFINE_string("out", None, "The file to write (must not exist).")



def fail(message):
  print(f"error: {message}", file=sys.stderr)
  sys.exit(1)


def parse_flags(argv):
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    fail(str(e).splitlines()[0])

def main(argv):
  logging.set_verbosity(logging.WARNING)  # our progress at INFO, other libraries' quiet
  if len(argv) > 1:
    fail(f"unexpected arguments: {' '.join(argv[1:])}")
  for flag in (WORKDIR, METHOD, OUT):
    if flag.value is None:
      fail(f"--{flag.name} is required (see --help)")
  try:
    state_dict = exporter.export(WORKDIR.value, METHOD.value, FORMAT.value, LAYOUT.value,
                                 OUT.value)
  except Dfl2lError as e:
    fail(e)
  print(f"wrote {OUT.value}: {len(state_dict)} tensors, {LAYOUT.value} layout")


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
