import os

import jax.numpy as jnp
import numpy as np
import pytest

from dfl2l_jax import checkpointing
from dfl2l_jax.errors import CheckpointError


def _tree():
  return {"a": jnp.arange(5.0), "b": {"c": jnp.ones((2, 3), jnp.int32)}, "s": jnp.int32(7)}


def test_round_trip(tmp_path):
  with checkpointing.Checkpointer(str(tmp_path / "ck")) as ck:
    assert ck.latest_step() is None
    ck.save(3, _tree())
    assert ck.latest_step() == 3
    got = ck.restore(3, _tree())
  for k in ("a", "s"):
    np.testing.assert_array_equal(got[k], _tree()[k])
  np.testing.assert_array_equal(got["b"]["c"], _tree()["b"]["c"])
  assert got["b"]["c"].dtype == np.int32


def test_save_tree_and_load_tree(tmp_path):
  checkpointing.save_tree(str(tmp_path / "t"), _tree())
  got = checkpointing.load_tree(str(tmp_path / "t"), _tree())
  np.testing.assert_array_equal(got["a"], np.arange(5.0))
  with pytest.raises(CheckpointError, match="no checkpoint"):
    checkpointing.load_tree(str(tmp_path / "missing"), _tree())


def _truncate_data_files(directory):
  n = 0
  for root, _, files in os.walk(directory):
    for f in files:
      path = os.path.join(root, f)
      if os.sep + "d" + os.sep in path + os.sep or os.path.basename(root) == "d":
        with open(path, "r+b") as fh:
          fh.truncate(max(os.path.getsize(path) // 3, 1))
        n += 1
  assert n > 0, "found no data files to truncate"


def test_truncated_checkpoint_gives_a_clear_error(tmp_path):
  directory = str(tmp_path / "ck")
  with checkpointing.Checkpointer(directory) as ck:
    ck.save(1, {"big": jnp.arange(10000.0)})
  _truncate_data_files(os.path.join(directory, "1"))
  with checkpointing.Checkpointer(directory) as ck:
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
      ck.restore(1, {"big": jnp.zeros(10000)})


def test_shape_mismatch_is_rejected(tmp_path):
  with checkpointing.Checkpointer(str(tmp_path / "ck")) as ck:
    ck.save(1, {"w": jnp.ones((3, 4))})
    with pytest.raises(CheckpointError):
      ck.restore(1, {"w": jnp.ones((4, 4))})


def test_spec_mismatch_names_the_field(tmp_path):
  d = str(tmp_path / "zoo")
  assert not checkpointing.check_spec(d, {"x": 1}, "zoo")
  checkpointing.write_spec(d, {"x": 1, "y": {"z": (1, 2)}})
  assert checkpointing.check_spec(d, {"x": 1, "y": {"z": (1, 2)}}, "zoo")
  with pytest.raises(CheckpointError, match=r"y\.z: saved \[1, 2\], now \[1, 3\]"):
    checkpointing.check_spec(d, {"x": 1, "y": {"z": (1, 3)}}, "zoo")
