"""dfl2l_jax: Data-Free Learning to Learn (Wang et al., UAI 2022) in JAX/Flax."""

import os
import re

from setuptools import find_packages, setup

here = os.path.dirname(os.path.abspath(__file__))
with open(os.path.join(here, "dfl2l_jax", "__init__.py")) as f:
  version = re.search(r'__version__ = "([^"]+)"', f.read()).group(1)

setup(
    name="dfl2l_jax",
    version=version,
    description="Meta-learning an initialisation from a zoo of pretrained models, "
                "without their data, by Wasserstein DRO model fusion (DFL2L).",
    long_description=open(os.path.join(here, "README.md")).read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["dfl2l_jax", "dfl2l_jax.*", "launch", "configs"]),
    # Floors are the versions this project was developed and tested with.
    install_requires=[
        "jax>=0.10.2",
        "flax>=0.12.8",
        "optax>=0.2.8",
        "chex>=0.1.92",
        "orbax-checkpoint>=0.12.8",
        "ml-collections>=1.1",
        "absl-py>=2.1",
        "numpy>=1.26",
        "scipy>=1.13",                # linear assignment (ota, weight_matching)
        "tensorboardX>=2.6.5",        # metrics as TensorBoard event files
        "safetensors>=0.8.0",         # zoo folders (dfl2l_jax/zoo/store.py), read with numpy
        "ml-dtypes>=0.7.0",           # bfloat16 tensors in .pth files (dfl2l_jax/zoo/pth.py)
    ],
    package_data={"dfl2l_jax.data": ["*.json"]},
    extras_require={
        # The data-layer tests build tiny tfds datasets, so tests need the data extra too.
        "test": ["pytest>=8", "pytest-xdist>=3.6", "tensorflow-datasets>=4.9.10", "importlib_resources>=7.1",
                 "pillow>=13.0"],
        "plots": ["matplotlib>=3.8"],
        # The image benchmarks read their data through tensorflow-datasets
        # (array_record files; TensorFlow itself is not needed).
        "data": ["tensorflow-datasets>=4.9.10", "importlib_resources>=7.1",
                 "pillow>=13.0"],
        # PyTorch: only scripts/torch_zoo.py (an example teacher zoo) and the tests that check
        # our .pth files and layouts against torch itself; importing and exporting need none.
        "torch": ["torch>=2.4"],
        # GPU: pip install -U "jax[cuda12]" (see BUILD.md). TPU: "jax[tpu]".
    },
)
