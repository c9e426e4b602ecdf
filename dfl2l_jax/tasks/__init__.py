"""Benchmarks: the task distribution, target network, losses and episodes.

`get_benchmark(config)` returns a `base.Benchmark` for `config.benchmark`.
"""

from dfl2l_jax.errors import ConfigError


def get_benchmark(config):
  name = config.benchmark
  if name == "sinusoid":
    from dfl2l_jax.tasks import sinusoid
    return sinusoid.make_benchmark(config)
  if name in ("cifar_fs", "mini_imagenet"):
    from dfl2l_jax.tasks import fewshot
    return fewshot.make_benchmark(config)
  raise ConfigError(f"unknown benchmark {name!r}; available: sinusoid, cifar_fs, "
                    "mini_imagenet")
