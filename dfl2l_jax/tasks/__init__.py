"""Benchmarks: the task distribution, target network, losses and episodes.

`get_benchmark(config)` returns a `base.Benchmark` for `config.benchmark`.
"""

from dfl2l_jax.errors import ConfigError


def get_benchmark(config, imported=None):
  """`imported`: a zoo read from config.zoo.source (zoo.store.LoadedZoo), or None."""
  name = config.benchmark
  if name == "sinusoid":
    if imported is not None:
      raise ConfigError("config.zoo.source: an imported zoo is for the image benchmarks "
                        "(cifar_fs, mini_imagenet); the sinusoid zoo is trained here")
    from dfl2l_jax.tasks import sinusoid
    return sinusoid.make_benchmark(config)
  if name in ("cifar_fs", "mini_imagenet"):
    from dfl2l_jax.tasks import fewshot
    return fewshot.make_benchmark(config, imported=imported)
  raise ConfigError(f"unknown benchmark {name!r}; available: sinusoid, cifar_fs, "
                    "mini_imagenet")
