"""Image benchmarks for meta-learning: tfds builders and `load.load_split`.

Importing this package does nothing; `dfl2l_jax.data.load` (which needs
tensorflow-datasets, not TensorFlow) holds the entry point `load_split`.
"""
