"""Handing a method's initialisation back: a PyTorch or safetensors state dict.

`export(workdir, method, fmt, layout, out)` writes theta_init of `method` (saved by a run
in workdir/inits) as the state dict of the layout's network (layouts.py): "dfml" loads
into the field's CloserLook `ConvNet` and "l2l" into learn2learn's `CNN4` with
`load_state_dict(sd, strict=True)` (every aliased name and BatchNorm counter present),
"ours" keeps our names. `fmt` "torch" writes a `torch.save` file (pth.py, no torch
needed), "safetensors" a `.safetensors` file.

BatchNorm statistics: an initialisation is fine-tuned on each new task with BatchNorm on
the batch's statistics (Algorithm 3 here, and the field's meta-test), which is PyTorch's
train mode. For eval mode the file also carries running statistics: the mean of the zoo
models' own where the zoo stores them (an imported zoo with batch_norm "running"),
otherwise PyTorch's initial ones (mean 0, variance 1); `num_batches_tracked` is 0.

A learner (`zoo_features`: a head fitted on each task's support set over all N zoo models'
features) is not one network and is refused, saying so.
"""

import os

import numpy as np
from flax import traverse_util

from dfl2l_jax import inits
from dfl2l_jax import methods as methods_lib
from dfl2l_jax import models
from dfl2l_jax.errors import ZooError
from dfl2l_jax.zoo import layouts
from dfl2l_jax.zoo import pth
from dfl2l_jax.zoo import source
from dfl2l_jax.zoo import store

FORMATS = ("torch", "safetensors")


def running_statistics(workdir, params):
  """{"BatchNorm_i": {"mean", "var"}} exported with an initialisation (module doc)."""
  record = source.read_record(workdir)
  stats = record.get("mean_running_stats") if record is not None else None
  if stats is not None:
    return {k: {s: np.asarray(v, np.float32) for s, v in d.items()} for k, d in stats.items()}
  return {k: {"mean": np.zeros_like(np.asarray(v["scale"]), np.float32),
              "var": np.ones_like(np.asarray(v["scale"]), np.float32)}
          for k, v in params.items() if k.startswith("BatchNorm_")}


def export(workdir, method, fmt, layout, out):
  """Writes `method`'s initialisation in `workdir` to `out`; returns the state dict."""
  if fmt not in FORMATS:
    raise ZooError(f"--format={fmt!r}: expected one of {', '.join(FORMATS)}")
  if layout not in layouts.LAYOUTS:
    raise ZooError(f"--layout={layout!r}: expected one of {', '.join(layouts.LAYOUTS)}")
  m = methods_lib.METHODS.get(method)
  if m is not None and m.learner:
    raise ZooError(f"{method} is a learner, not one network: it keeps all the zoo's models "
                   "and fits a head on each task's support set over their features, so "
                   "there is no single state dict to load into a PyTorch model; use the zoo "
                   "folder itself (docs/zoo_format.md)")
  if os.path.exists(out):
    raise ZooError(f"{out}: exists; choose a new --out (nothing was overwritten)")
  init = inits.load(workdir, method)
  if not isinstance(init.model, models.Conv4):
    raise ZooError(f"the {layout} layout holds a Conv4; {method}'s network in {workdir} is "
                   f"a {type(init.model).__name__}")
  params = {k: np.asarray(v) for k, v in
            traverse_util.flatten_dict(init.params, sep=store.SEPARATOR).items()}
  flat = {f"params/{k}": v for k, v in params.items()}
  stats = running_statistics(workdir, init.params)
  flat.update({f"batch_stats/{k}": v for k, v in
               traverse_util.flatten_dict(stats, sep=store.SEPARATOR).items()})
  image_size = int(init.example_input.shape[1])
  state_dict = layouts.export_state_dict(flat, layout, image_size)
  tmp = f"{out}.tmp-{os.getpid()}"
  try:
    if fmt == "torch":
      pth.save(state_dict, tmp)
    else:
      from safetensors import numpy as st_numpy  # pylint: disable=g-import-not-at-top
      st_numpy.save_file({k: np.ascontiguousarray(v) for k, v in state_dict.items()}, tmp)
    os.replace(tmp, out)
  except OSError as e:
    raise ZooError(f"{out}: cannot be written ({e.strerror or e}); nothing was left there"
                   ) from None
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
  return state_dict
