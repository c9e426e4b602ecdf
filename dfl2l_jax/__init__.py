"""dfl2l_jax: Data-Free Learning to Learn (Wang et al., UAI 2022) in JAX.

The library is importable without side effects: no flags, no work at import.
Entry points live in ``launch/``; experiment configs in ``configs/``.
"""

__version__ = "0.1.0"
