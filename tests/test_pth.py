"""torch.save files read and written without torch (dfl2l_jax/zoo/pth.py)."""

import os
import pathlib
import pickle
import struct
import zipfile

import ml_dtypes
import numpy as np
import pytest

from dfl2l_jax.zoo import pth

_LEGACY_MAGIC = pickle.dumps(0x1950a86a20f9469cfc6c, protocol=2)


def _records(path):
  """{name: bytes} of a zip file, in order."""
  with zipfile.ZipFile(path) as zf:
    return {name: zf.read(name) for name in zf.namelist()}


def _write_zip(path, records):
  with zipfile.ZipFile(path, "w") as zf:
    for name, data in records.items():
      zf.writestr(name, data)


def _str(s):
  data = s.encode()
  return b"X" + struct.pack("<I", len(data)) + data


def _ints(xs):
  return b"(" + b"".join(b"K" + bytes([x]) for x in xs) + b"t"


def _tensor_pkl(numel, offset, size, stride, storage="FloatStorage"):
  """data.pkl of {'w': tensor} as torch writes it, with the view given by hand."""
  return (b"\x80\x02}(" + _str("w") + b"ctorch._utils\n_rebuild_tensor_v2\n("
          + b"(" + _str("storage") + b"ctorch\n" + storage.encode() + b"\n"
          + _str("0") + _str("cpu") + b"K" + bytes([numel]) + b"tQ"
          + b"K" + bytes([offset]) + _ints(size) + _ints(stride)
          + b"\x89ccollections\nOrderedDict\n)R" + b"tRu.")


def _assert_same(a, b):
  """Same structure; arrays of the same dtype, shape and bytes (NaN payloads too)."""
  if isinstance(a, dict):
    assert isinstance(b, dict) and list(a) == list(b)
    for k in a:
      _assert_same(a[k], b[k])
  elif isinstance(a, (list, tuple)):
    assert type(a) is type(b) and len(a) == len(b)
    for x, y in zip(a, b):
      _assert_same(x, y)
  elif isinstance(a, np.ndarray):
    assert isinstance(b, np.ndarray) and b.flags.c_contiguous
    assert a.dtype == b.dtype and a.shape == b.shape
    assert np.ascontiguousarray(a).tobytes() == b.tobytes()
  else:
    assert type(a) is type(b) and (a == b or a != a)


def _zoo_of_arrays():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(4, 6)).astype(np.float32)
  x[0, 0] = np.nan
  return {
      "f32": x,
      "f64": rng.normal(size=(3,)),
      "f16": rng.normal(size=(2, 2)).astype(np.float16),
      "bf16": rng.normal(size=(5,)).astype(ml_dtypes.bfloat16),
      "i64": np.array([-2**62, 0, 7], np.int64),
      "i32": np.arange(-3, 3, dtype=np.int32).reshape(2, 3),
      "i16": np.array([-300, 5], np.int16),
      "i8": np.array([-128, 127], np.int8),
      "u8": np.arange(250, 256, dtype=np.uint8),
      "bool": np.array([[True, False], [False, True]]),
      "c64": np.array([1 + 2j, -3j], np.complex64),
      "scalar": np.array(2.5, np.float32),
      "empty": np.zeros((0, 3), np.float32),
      "empty2": np.zeros((2, 0), np.int64),
      "strided": x[::2, ::-3],
      "transposed": x.T,
      "fortran": np.asfortranarray(rng.normal(size=(3, 4))),
  }


def test_round_trip_is_bit_identical(tmp_path):
  arrays = _zoo_of_arrays()
  obj = {"teacher": arrays, "specific": [3, 17, 5],
         "misc": (1.5, None, True, False, -2**70, 2**31, "é", [], {}, ()),
         "nested": [{"a": arrays["i8"]}, (arrays["f16"],)]}
  path = str(tmp_path / "m.pth")
  pth.save(obj, path)
  assert not os.path.exists(path + ".tmp")
  _assert_same(obj, pth.load(path))


def test_written_records_are_aligned_and_shared(tmp_path):
  x = np.arange(6, dtype=np.float32)
  path = str(tmp_path / "m.pth")
  pth.save({"a": x, "b": x, "c": np.ones(3, np.uint8)}, path)
  raw = pathlib.Path(path).read_bytes()
  with zipfile.ZipFile(path) as zf:
    infos = zf.infolist()
  names = [i.filename for i in infos]
  assert names[0] == "archive/data.pkl" and "archive/version" in names
  assert [n for n in names if "/data/" in n] == ["archive/data/0", "archive/data/1"]
  for info in infos:
    name_len, extra_len = struct.unpack("<HH", raw[info.header_offset + 26:][:4])
    assert (info.header_offset + 30 + name_len + extra_len) % 64 == 0, info.filename
  loaded = pth.load(path)
  np.testing.assert_array_equal(loaded["b"], x)


def test_views_with_offset_and_stride(tmp_path):
  path = str(tmp_path / "v.pth")
  data = np.arange(12, dtype=np.float32)
  _write_zip(path, {"x/data.pkl": _tensor_pkl(12, 1, (2, 3), (4, 2)),
                    "x/data/0": data.tobytes(), "x/version": b"3\n"})
  w = pth.load(path)["w"]
  np.testing.assert_array_equal(w, [[1, 3, 5], [5, 7, 9]])
  assert w.flags.c_contiguous and w.flags.writeable


def test_big_endian_file(tmp_path):
  obj = {"a": np.array([1.5, -2], np.float32), "b": np.array([1, -2**40], np.int64),
         "c": np.array([0.5, 3], ml_dtypes.bfloat16)}
  path = str(tmp_path / "m.pth")
  pth.save(obj, path)
  records = _records(path)
  records["archive/byteorder"] = b"big"
  for key, name in enumerate(obj):
    records[f"archive/data/{key}"] = obj[name].byteswap().tobytes()
  _write_zip(path, records)
  _assert_same(obj, pth.load(path))


@pytest.mark.parametrize("module,name", [("os", "system"), ("posix", "system"),
                                         ("builtins", "eval"), ("builtins", "exec")])
def test_hostile_pickle_is_refused_and_not_run(tmp_path, module, name):
  marker = tmp_path / "pwned"
  if name == "system":
    arg = f"touch {marker}"
  else:
    arg = f"open({str(marker)!r}, 'w').close()"
  payload = b"\x80\x02c" + f"{module}\n{name}\n".encode() + _str(arg) + b"\x85R."
  path = str(tmp_path / "evil.pth")
  _write_zip(path, {"archive/data.pkl": payload, "archive/version": b"3\n"})
  with pytest.raises(pth.PthError, match=f"refuses to unpickle {module}.{name} ") as e:
    pth.load(path)
  assert path in str(e.value) and "\n" not in str(e.value)
  assert not marker.exists()


class _Evil:

  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return (eval, (f"open({self.marker!r}, 'w').close()",))


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_hostile_pickle_of_any_protocol_is_refused(tmp_path, protocol):
  marker = str(tmp_path / "pwned")
  path = str(tmp_path / "evil.pth")
  payload = pickle.dumps({"w": [_Evil(marker)]}, protocol=protocol)
  _write_zip(path, {"archive/data.pkl": payload})
  # Protocol 2 writes the Python 2 name, __builtin__.eval.
  eval_refused = r"refuses to unpickle (__builtin__|builtins)\.eval "
  with pytest.raises(pth.PthError, match=eval_refused):
    pth.load(path)
  assert not os.path.exists(marker)


def test_numpy_globals_and_cycles_are_refused(tmp_path):
  path = str(tmp_path / "np.pth")
  _write_zip(path, {"a/data.pkl": pickle.dumps(np.ones(2), protocol=2)})
  with pytest.raises(pth.PthError, match=r"refuses to unpickle numpy\."):
    pth.load(path)
  loop = []
  loop.append(loop)
  _write_zip(path, {"a/data.pkl": pickle.dumps(loop, protocol=2)})
  with pytest.raises(pth.PthError, match="contains itself"):
    pth.load(path)


def _bad_file(tmp_path, kind):
  """A path to a broken file of the given kind, and the message expected."""
  path = str(tmp_path / "teachers" / "model_3.pth")
  os.makedirs(os.path.dirname(path))
  if kind in ("truncated", "no storage", "no data.pkl", "short storage"):
    pth.save({"w": np.arange(100, dtype=np.float32)}, path)
  if kind == "truncated":
    raw = pathlib.Path(path).read_bytes()
    pathlib.Path(path).write_bytes(raw[:len(raw) // 2])
    return path, "truncated or corrupt zip"
  if kind == "legacy":
    pathlib.Path(path).write_bytes(_LEGACY_MAGIC + b"\x80\x02}q\x00.")
    return path, r"legacy .*weights_only=True"
  if kind == "not a zip":
    pathlib.Path(path).write_bytes(b"hello")
    return path, "not a zip archive"
  if kind == "missing":
    return path, "cannot be read"
  if kind == "corrupt pickle":
    _write_zip(path, {"archive/data.pkl": b"\x80\x02}(X\x05\x00"})
    return path, "data.pkl is corrupt"
  records = {} if kind == "tensor past storage" else _records(path)
  if kind == "no storage":
    del records["archive/data/0"]
    message = "storage record archive/data/0 is missing"
  elif kind == "no data.pkl":
    del records["archive/data.pkl"]
    message = "has no archive/data.pkl record"
  elif kind == "short storage":
    records["archive/data/0"] = records["archive/data/0"][:396]
    message = "has 396 bytes, expected 400"
  else:  # A view past the end of its storage.
    records = {"archive/data.pkl": _tensor_pkl(12, 2, (3, 4), (4, 1)),
               "archive/data/0": bytes(48)}
    message = r"needs 14 elements, the storage has 12"
  _write_zip(path, records)
  return path, message


@pytest.mark.parametrize("kind", ["truncated", "legacy", "not a zip", "missing",
                                  "corrupt pickle", "no storage", "no data.pkl",
                                  "short storage", "tensor past storage"])
def test_broken_files_raise_one_line_errors(tmp_path, kind):
  path, message = _bad_file(tmp_path, kind)
  with pytest.raises(pth.PthError, match=message) as e:
    pth.load(path)
  assert str(e.value).startswith(f"{path}: ") and "\n" not in str(e.value)


def test_corrupted_pickles_raise_only_pth_errors(tmp_path):
  path = str(tmp_path / "m.pth")
  pth.save({"a": np.arange(10, dtype=np.float32), "b": [1, (2, "x")],
            "c": np.ones((2, 3), np.int64)}, path)
  records = _records(path)
  pkl = records["archive/data.pkl"]
  rng = np.random.default_rng(0)
  for _ in range(60):
    corrupt = bytearray(pkl)
    for i in rng.integers(len(pkl), size=rng.integers(1, 4)):
      corrupt[i] = rng.integers(256)
    _write_zip(path, {**records, "archive/data.pkl": bytes(corrupt)})
    try:
      pth.load(path)
    except pth.PthError as e:
      assert str(e).startswith(f"{path}: ") and "\n" not in str(e)


def test_save_refuses_other_objects_and_writes_nothing(tmp_path):
  path = str(tmp_path / "m.pth")
  with pytest.raises(pth.PthError, match=r"the set at \['a'\]\[1\]"):
    pth.save({"a": [1, {2}]}, path)
  with pytest.raises(pth.PthError, match="object array"):
    pth.save({"a": np.array([None])}, path)
  assert not os.listdir(tmp_path)


# With torch.


def _net(torch):
  nn = torch.nn
  return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Flatten(),
                       nn.Linear(4 * 5 * 5, 3))


def _model(torch):
  torch.manual_seed(0)
  model = _net(torch)
  model(torch.randn(8, 3, 5, 5))  # Train mode: BN running stats move off 0 and 1.
  return model.eval()


def _assert_matches_torch(loaded, saved):
  if isinstance(saved, dict):
    assert list(loaded) == list(saved)
    for k in saved:
      _assert_matches_torch(loaded[k], saved[k])
  elif isinstance(saved, list):
    assert loaded == saved
  else:
    expected = saved.detach().numpy()
    assert loaded.dtype == expected.dtype and loaded.shape == expected.shape
    np.testing.assert_array_equal(loaded, expected)


def test_reads_torch_state_dicts(tmp_path):
  torch = pytest.importorskip("torch")
  sd = _model(torch).state_dict()
  assert sd["1.num_batches_tracked"].dtype == torch.int64
  ckpt = {"teacher": sd, "specific": [3, 17, 5]}
  for name, obj in [("sd.pth", sd), ("ckpt.pth", ckpt)]:
    torch.save(obj, tmp_path / name)
    loaded = pth.load(str(tmp_path / name))
    assert type(loaded) is dict
    _assert_matches_torch(loaded, obj)


def test_reads_torch_views_of_one_storage(tmp_path):
  torch = pytest.importorskip("torch")
  t = torch.arange(20.).reshape(4, 5)
  obj = {"a": t, "b": t[1:, ::2], "c": t.t(), "d": t[2, 3],
         "p": torch.nn.Parameter(t[0]), "h": torch.ones(3, dtype=torch.bfloat16),
         "u": torch.arange(3).to(torch.uint16)}
  path = str(tmp_path / "views.pth")
  torch.save(obj, path)
  assert sum("/data/" in name for name in _records(path)) == 3
  loaded = pth.load(path)
  for k in ("a", "b", "c", "d", "p"):
    np.testing.assert_array_equal(loaded[k], obj[k].detach().numpy())
    assert loaded[k].flags.c_contiguous
  assert loaded["h"].dtype == ml_dtypes.bfloat16
  np.testing.assert_array_equal(loaded["h"].astype(np.float32), np.ones(3))
  np.testing.assert_array_equal(loaded["u"], np.arange(3, dtype=np.uint16))


def test_refuses_a_pickled_module(tmp_path):
  torch = pytest.importorskip("torch")
  path = str(tmp_path / "model.pth")
  torch.save(_model(torch), path)
  with pytest.raises(pth.PthError,
                     match="refuses to unpickle torch.nn.modules.container.Sequential"):
    pth.load(path)


def test_torch_reads_what_we_save(tmp_path):
  torch = pytest.importorskip("torch")
  model = _model(torch)
  sd = {k: v.numpy() for k, v in model.state_dict().items()}
  path = str(tmp_path / "ours.pth")
  pth.save({"teacher": sd, "specific": [3, 17, 5]}, path)
  loaded = torch.load(path, weights_only=True)
  assert loaded["specific"] == [3, 17, 5]
  torch.manual_seed(1)
  other = _net(torch)
  other.load_state_dict(loaded["teacher"], strict=True)
  other.eval()
  for k, v in model.state_dict().items():
    assert torch.equal(other.state_dict()[k], v), k
  x = torch.randn(2, 3, 5, 5)
  with torch.no_grad():
    assert torch.equal(other(x), model(x))
