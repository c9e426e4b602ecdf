"""Where zoo models come from and where what is learned from them goes.

A zoo is data: a folder with a manifest (`zoo.json`) and one `.safetensors` file per
model (`store.py`, the format every method reads; docs/zoo_format.md). Producers:

  trainer.py   our vmapped ensemble trainer (the config's seed derives every model's
               classes, data and initialisation);
  importer.py  teachers trained elsewhere: the data-free meta-learning field's PyTorch
               files, learn2learn state dicts, safetensors files;

and the other way, `exporter.py` hands a method's initialisation back to PyTorch or
safetensors. `layouts.py` holds the name tables between our Flax parameters and each
framework's state-dict names; `pth.py` reads and writes `torch.save` files without torch
and without unpickling anything but tensors and plain containers.

The trainer's functions are re-exported here (`zoo.train_zoo`, `zoo.split`, ...), as the
pipeline and the methods use them.
"""

from dfl2l_jax.zoo.trainer import bn_population_stats
from dfl2l_jax.zoo.trainer import bn_stats
from dfl2l_jax.zoo.trainer import check_finite
from dfl2l_jax.zoo.trainer import initial_params
from dfl2l_jax.zoo.trainer import member_keys
from dfl2l_jax.zoo.trainer import split
from dfl2l_jax.zoo.trainer import take
from dfl2l_jax.zoo.trainer import train_zoo
from dfl2l_jax.zoo.trainer import zoo_quality
from dfl2l_jax.zoo.trainer import zoo_spec
from dfl2l_jax.zoo.trainer import zoo_settings
from dfl2l_jax.zoo.trainer import write_zoo_folder
