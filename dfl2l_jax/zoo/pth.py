"""PyTorch `torch.save` files, read and written without torch.

Model files come from strangers, so `load` never unpickles an arbitrary object: its
unpickler resolves only the globals that a saved state dict needs (`find_class`:
`collections.OrderedDict`, torch's tensor-rebuild functions, the typed storage classes,
the dtypes of `_rebuild_tensor_v3`, `torch.device` and `torch.Size`) and refuses every
other one by name (a pickled `nn.Module`, `builtins.eval`, `os.system`, ...) before it
is imported or called. What comes back is plain Python: dicts (an `OrderedDict` becomes
a dict in the same key order; its `_metadata` is dropped), lists, tuples, ints, floats,
strings, bools, None, bytes, and a C-contiguous `numpy.ndarray` copy for every tensor.

The format (torch >= 1.6; torch 2.14 writes exactly this): a zip archive, every record
under one folder `<prefix>/`, stored uncompressed and 64-byte aligned:

  data.pkl            the object, pickle protocol 2. A tensor is
                      `torch._utils._rebuild_tensor_v2(storage, storage_offset,
                      size, stride, requires_grad, backward_hooks)` (a `nn.Parameter`
                      wraps it in `torch._utils._rebuild_parameter`), a storage the
                      persistent id `('storage', torch.FloatStorage, key, location,
                      numel)`; dtypes without a storage class (uint16, float8) use
                      `_rebuild_tensor_v3` with `torch.storage.UntypedStorage` and the
                      dtype as a global;
  data/<key>          the storage's bytes, `numel * itemsize` of them;
  byteorder           'little' or 'big' (absent before torch 1.10: little);
  version             '3\\n'; also .format_version, .storage_alignment and
                      .data/serialization_id, which readers do not need.

A legacy (pre-1.6, not zip) file is refused with the command that re-saves it. `save`
writes the same format, with `torch.load(path, weights_only=True)` as its reader.
"""

import collections
import io
import os
import pickle
import struct
import sys
import zipfile

import ml_dtypes
import numpy as np

from dfl2l_jax.errors import ZooError

# Typed storage class (`torch.<name>`) -> element dtype.
_STORAGE_DTYPES = {
    "DoubleStorage": np.dtype(np.float64),
    "FloatStorage": np.dtype(np.float32),
    "HalfStorage": np.dtype(np.float16),
    "BFloat16Storage": np.dtype(ml_dtypes.bfloat16),
    "LongStorage": np.dtype(np.int64),
    "IntStorage": np.dtype(np.int32),
    "ShortStorage": np.dtype(np.int16),
    "CharStorage": np.dtype(np.int8),
    "ByteStorage": np.dtype(np.uint8),
    "BoolStorage": np.dtype(np.bool_),
    "ComplexFloatStorage": np.dtype(np.complex64),
    "ComplexDoubleStorage": np.dtype(np.complex128),
}
# Dtype globals (`torch.<name>`) that `_rebuild_tensor_v3` names -> numpy dtype.
_TORCH_DTYPES = {
    "float64": np.dtype(np.float64),
    "float32": np.dtype(np.float32),
    "float16": np.dtype(np.float16),
    "bfloat16": np.dtype(ml_dtypes.bfloat16),
    "float8_e4m3fn": np.dtype(ml_dtypes.float8_e4m3fn),
    "float8_e5m2": np.dtype(ml_dtypes.float8_e5m2),
    "int64": np.dtype(np.int64),
    "int32": np.dtype(np.int32),
    "int16": np.dtype(np.int16),
    "int8": np.dtype(np.int8),
    "uint64": np.dtype(np.uint64),
    "uint32": np.dtype(np.uint32),
    "uint16": np.dtype(np.uint16),
    "uint8": np.dtype(np.uint8),
    "bool": np.dtype(np.bool_),
    "complex64": np.dtype(np.complex64),
    "complex128": np.dtype(np.complex128),
}
# numpy dtype -> storage class, for `save`.
_SAVE_STORAGES = {dtype: name for name, dtype in _STORAGE_DTYPES.items()}
_ALIGNMENT = 64  # Bytes; torch aligns every record's data to this.
_PREFIX = "archive"  # The folder torch.save uses when it writes to a buffer.
_FORMAT_VERSION = b"3\n"  # The `version` record torch.save writes.
_LEGACY_MAGIC = bytes.fromhex("8a0a6cfc9c46f9206aa85019")  # 0x1950a86a20f9469cfc6c
_RESAVE = "torch.save(torch.load(f, weights_only=True), f)"


class PthError(ZooError):
  """A `.pth` file cannot be read or written: corrupt, legacy, or holding code."""


class _StorageType:
  """What `find_class` returns for `torch.<X>Storage`: a name, not torch's class."""

  __slots__ = ("name", "dtype")

  def __init__(self, name, dtype):
    self.name, self.dtype = name, dtype

  def __setstate__(self, state):
    raise pickle.UnpicklingError(f"BUILD applied to torch.{self.name}")


class _TorchDtype(_StorageType):
  """What `find_class` returns for a dtype global such as `torch.uint16`."""

  __slots__ = ()


class _Storage:
  """One storage record: its bytes and the element dtype its storage class gives."""

  __slots__ = ("key", "data", "dtype")

  def __init__(self, key, data, dtype):
    self.key, self.data, self.dtype = key, data, dtype

  def __setstate__(self, state):
    raise pickle.UnpicklingError("BUILD applied to a storage")


class _Tensor:
  """A tensor rebuilt during unpickling; `_plain` unwraps it to its array."""

  __slots__ = ("array",)

  def __init__(self, array):
    self.array = array

  def __setstate__(self, state):
    raise pickle.UnpicklingError("BUILD applied to a tensor")


def _is_int(x):
  """Whether `x` is an int and not a bool."""
  return type(x) is int  # pylint: disable=unidiomatic-typecheck  (bool is no size)


class _Unpickler(pickle.Unpickler):
  """Unpickles `data.pkl`, resolving only the globals `find_class` lists.

  Storages are read from the zip as `persistent_load` meets them; every tensor is
  built at once as a numpy copy, so nothing of the file stays referenced.
  """

  def __init__(self, data, zf, prefix, path, big_endian):
    super().__init__(io.BytesIO(data))
    self._zf, self._prefix, self._path = zf, prefix, path
    self._big_endian = big_endian
    self._records = {}  # key -> bytes of data/<key>.

  def _error(self, problem):
    return PthError(f"{self._path}: {problem}")

  def find_class(self, module, name):
    """Resolves a global if it is in the whitelist, else raises naming it."""
    qualname = _printable(f"{module}.{name}")
    if qualname == "collections.OrderedDict":
      return collections.OrderedDict
    if qualname == "torch._utils._rebuild_tensor_v2":
      return self._rebuild_tensor_v2
    if qualname == "torch._utils._rebuild_tensor_v3":
      return self._rebuild_tensor_v3
    if qualname == "torch._utils._rebuild_parameter":
      return _rebuild_parameter
    if qualname == "torch._utils._rebuild_parameter_with_state":
      return _rebuild_parameter_with_state
    if qualname == "torch.device":
      return _device
    if qualname == "torch.Size":
      return _size
    if qualname == "torch.storage.UntypedStorage":
      return _StorageType("UntypedStorage", np.dtype(np.uint8))
    if module == "torch" and name in _STORAGE_DTYPES:
      return _StorageType(name, _STORAGE_DTYPES[name])
    if module == "torch" and name in _TORCH_DTYPES:
      return _TorchDtype(name, _TORCH_DTYPES[name])
    raise self._error(f"refuses to unpickle {qualname} (only tensors and plain "
                      "containers are read)")

  def persistent_load(self, pid):
    """Reads the storage record `('storage', storage_type, key, location, numel)`."""
    if (not isinstance(pid, tuple) or len(pid) != 5 or pid[0] != "storage"
        or not isinstance(pid[1], _StorageType) or isinstance(pid[1], _TorchDtype)
        or not isinstance(pid[2], str) or not _is_int(pid[4]) or pid[4] < 0):
      raise self._error(f"data.pkl has a malformed storage reference {_short(pid)}")
    storage_type, key, numel = pid[1], pid[2], pid[4]
    name = _printable(f"{self._prefix}data/{key}")
    if key not in self._records:
      try:
        info = self._zf.getinfo(f"{self._prefix}data/{key}")
      except KeyError:
        raise self._error(f"storage record {name} is missing") from None
      expected = numel * storage_type.dtype.itemsize
      if info.file_size != expected:
        raise self._error(f"storage record {name} has {info.file_size} bytes, "
                          f"expected {expected} ({numel} x torch.{storage_type.name})")
      self._records[key] = _read(self._zf, f"{self._prefix}data/{key}", self._path)
    data = self._records[key]
    if len(data) != numel * storage_type.dtype.itemsize:
      raise self._error(f"storage record {name} has {len(data)} bytes but is also "
                        f"referenced as {numel} x torch.{storage_type.name}")
    return _Storage(key, data, storage_type.dtype)

  def _rebuild_tensor_v2(self, storage, storage_offset, size, stride,
                         requires_grad=False, backward_hooks=None, metadata=None):
    """`torch._utils._rebuild_tensor_v2`: a view of a typed storage, copied."""
    del requires_grad, backward_hooks  # Neither matters to an array.
    if not isinstance(storage, _Storage):
      raise self._error("data.pkl rebuilds a tensor from something not a storage")
    return self._tensor(storage, storage.dtype, storage_offset, size, stride, metadata)

  def _rebuild_tensor_v3(self, storage, storage_offset, size, stride, requires_grad,
                         backward_hooks, dtype, metadata=None):
    """`torch._utils._rebuild_tensor_v3`: a view of an untyped storage as `dtype`."""
    del requires_grad, backward_hooks  # Neither matters to an array.
    if not isinstance(storage, _Storage) or not isinstance(dtype, _TorchDtype):
      raise self._error("data.pkl rebuilds a tensor from something not a storage")
    return self._tensor(storage, dtype.dtype, storage_offset, size, stride, metadata)

  def _tensor(self, storage, dtype, offset, size, stride, metadata):
    """The C-contiguous copy of one strided view of `storage`, checked to fit."""
    where = f"tensor on storage {_printable(storage.key)}"
    if metadata:
      raise self._error(f"{where} has metadata {_short(metadata)} (not supported)")
    if (not isinstance(size, tuple) or not isinstance(stride, tuple)
        or len(size) != len(stride)
        or not all(_is_int(n) and n >= 0 for n in size + stride + (offset,))):
      raise self._error(f"{where} has a malformed size {_short(size)}, stride "
                        f"{_short(stride)} or offset {_short(offset)}")
    available = len(storage.data) // dtype.itemsize
    if 0 in size:
      end = offset
    else:
      end = offset + 1 + sum((n - 1) * s for n, s in zip(size, stride))
    if end > available:
      raise self._error(f"{where} (offset {offset}, size {list(size)}, stride "
                        f"{list(stride)}) needs {end} elements, the storage has "
                        f"{available}")
    flat = np.frombuffer(storage.data, dtype=dtype, count=available)
    view = np.lib.stride_tricks.as_strided(
        flat[offset:], shape=size, strides=[s * dtype.itemsize for s in stride],
        writeable=False)
    array = np.array(view, order="C")
    if self._big_endian:
      array = array.byteswap()  # Each element (each half of a complex) swapped.
    if dtype == np.bool_:
      array = array.view(np.uint8) != 0  # Any non-zero byte is True, as in torch.
    return _Tensor(array)


def _rebuild_parameter(data, requires_grad, backward_hooks):
  """`torch._utils._rebuild_parameter`: a parameter is its tensor."""
  del requires_grad, backward_hooks
  return data


def _rebuild_parameter_with_state(data, requires_grad, backward_hooks, state):
  """`torch._utils._rebuild_parameter_with_state`; the Python attributes are dropped."""
  del requires_grad, backward_hooks, state
  return data


def _device(kind, index=None):
  """`torch.device(...)` as its string, e.g. 'cuda:0'."""
  if not isinstance(kind, str) or not (index is None or _is_int(index)):
    raise pickle.UnpicklingError(f"malformed torch.device{_short((kind, index))}")
  return kind if index is None else f"{kind}:{index}"


def _size(dims=()):
  """`torch.Size(...)` as a tuple."""
  return tuple(dims)


def _printable(text):
  """`text`, or its `ascii()` form if it holds a newline or other unprintable."""
  return text if text.isprintable() else ascii(text)


def _short(x, limit=80):
  """`repr(x)` on one line, cut to `limit` characters."""
  text = " ".join(repr(x).split())
  return text if len(text) <= limit else text[:limit - 3] + "..."


def _read(zf, name, path):
  """One record's bytes; a bad CRC or compression raises PthError."""
  try:
    return zf.read(name)
  except Exception as e:  # pylint: disable=broad-except  (zipfile raises many kinds)
    raise PthError(f"{path}: record {_printable(name)} is unreadable ({type(e).__name__}: "
                   f"{_short(str(e))})") from None


def _plain(x, path, active):
  """`x` with tensors unwrapped and OrderedDicts made dicts; refuses anything else."""
  if isinstance(x, _Tensor):
    return x.array
  if x is None or type(x) in (bool, int, float, str, bytes):
    return x
  if type(x) in (dict, collections.OrderedDict, list, tuple):
    if id(x) in active:
      raise PthError(f"{path}: data.pkl holds a container that contains itself")
    active.add(id(x))
    if isinstance(x, dict):
      try:
        out = {_plain(k, path, active): _plain(v, path, active) for k, v in x.items()}
      except TypeError:  # A tensor, or a tuple holding one, as a key.
        raise PthError(f"{path}: data.pkl has a dict keyed by a tensor") from None
    else:
      out = type(x)(_plain(v, path, active) for v in x)
    active.discard(id(x))
    return out
  if isinstance(x, _StorageType):
    what = f"torch.{x.name}"
  elif isinstance(x, _Storage):
    what = "a storage outside a tensor"
  else:
    what = f"a {type(x).__name__}"
  raise PthError(f"{path}: data.pkl holds {what} (only tensors and plain containers "
                 "are read)")


def _check_not_legacy(head, path):
  """Raises PthError naming why a file that is not a zip archive is not read."""
  if _LEGACY_MAGIC in head[:32] or head[257:262] == b"ustar":
    raise PthError(f"{path}: is in torch's legacy (pre-1.6, not zip) format; re-save "
                   f"it with a current torch: {_RESAVE}")
  if head[:2] == b"PK":
    raise PthError(f"{path}: is a truncated or corrupt zip archive")
  raise PthError(f"{path}: is not a torch.save file (not a zip archive)")


def load(path):
  """Reads a `torch.save` file as plain Python with numpy arrays for tensors.

  Args:
    path: the `.pth`/`.pt` file, as written by `torch.save` (torch >= 1.6) or `save`.

  Returns:
    The saved object: dicts (OrderedDicts become dicts, key order kept), lists, tuples,
    ints, floats, strings, bools, None, bytes, and for every tensor a C-contiguous
    numpy copy of its dtype and shape (bfloat16 and float8 as `ml_dtypes` types).

  Raises:
    PthError: the file is missing, truncated, not a zip, in the legacy format, or
      references anything but tensors and plain containers (named in the message, and
      never imported or called), or a tensor does not fit its storage.
  """
  try:
    f = open(path, "rb")  # pylint: disable=consider-using-with  (closed just below)
  except OSError as e:
    raise PthError(f"{path}: cannot be read ({e.strerror or e})") from None
  with f:
    head = f.read(512)
    f.seek(0)
    if not zipfile.is_zipfile(f):
      _check_not_legacy(head, path)
    f.seek(0)
    try:
      zf = zipfile.ZipFile(f)
    except Exception as e:  # pylint: disable=broad-except  (zipfile raises many kinds)
      raise PthError(f"{path}: is a truncated or corrupt zip archive "
                     f"({type(e).__name__}: {_short(str(e))})") from None
    with zf:
      return _load_zip(zf, path)


def _load_zip(zf, path):
  """`load` of an open archive."""
  names = zf.namelist()
  if not names or "/" not in names[0]:
    raise PthError(f"{path}: is a zip archive but not a torch.save file (its records "
                   "are not in one folder)")
  prefix = names[0][:names[0].index("/") + 1]  # Where torch's reader looks, too.
  if f"{prefix}data.pkl" not in names:
    raise PthError(f"{path}: has no {_printable(prefix)}data.pkl record (not a "
                   "torch.save file)")
  big_endian = False
  if f"{prefix}byteorder" in names:
    order = _read(zf, f"{prefix}byteorder", path)
    if order not in (b"little", b"big"):
      raise PthError(f"{path}: has an unknown byteorder record {_short(order)}")
    big_endian = order == b"big"
  data = _read(zf, f"{prefix}data.pkl", path)
  unpickler = _Unpickler(data, zf, prefix, path, big_endian)
  try:
    obj = unpickler.load()
  except PthError:
    raise
  except Exception as e:  # pylint: disable=broad-except  (a corrupt pickle raises many)
    raise PthError(f"{path}: data.pkl is corrupt ({type(e).__name__}: "
                   f"{_short(str(e))})") from None
  try:
    return _plain(obj, path, set())
  except RecursionError:
    raise PthError(f"{path}: data.pkl is nested too deeply") from None


class _Pickler:
  """Writes protocol-2 pickle opcodes for plain containers and numpy arrays.

  Torch's globals are written by name (opcode GLOBAL), so torch is never imported.
  Each distinct array object becomes one storage (`self.arrays[i]` is `data/<i>`).
  """

  def __init__(self, path):
    self._path = path
    self._out = io.BytesIO()
    self.arrays = []
    self._keys = {}  # id(array object in `obj`, alive while dumping) -> storage key.

  def dumps(self, obj):
    self._out.write(pickle.PROTO + b"\x02")
    self._save(obj, "")
    self._out.write(pickle.STOP)
    return self._out.getvalue()

  def _global(self, module, name):
    self._out.write(pickle.GLOBAL + f"{module}\n{name}\n".encode("ascii"))

  def _save(self, x, where):
    w = self._out.write
    if x is None:
      w(pickle.NONE)
    elif x is True or x is False:
      w(pickle.NEWTRUE if x else pickle.NEWFALSE)
    elif type(x) is int:  # pylint: disable=unidiomatic-typecheck
      if 0 <= x < 256:
        w(pickle.BININT1 + bytes([x]))
      elif 0 <= x < 65536:
        w(pickle.BININT2 + struct.pack("<H", x))
      elif -2**31 <= x < 2**31:
        w(pickle.BININT + struct.pack("<i", x))
      else:
        n = (x.bit_length() + 8) // 8  # Two's complement with room for the sign.
        if n > 255:
          raise PthError(f"{self._path}: cannot save the int at {where or 'top'} "
                         "(over 2000 bits)")
        w(pickle.LONG1 + bytes([n]) + x.to_bytes(n, "little", signed=True))
    elif type(x) is float:  # pylint: disable=unidiomatic-typecheck
      w(pickle.BINFLOAT + struct.pack(">d", x))
    elif type(x) is str:  # pylint: disable=unidiomatic-typecheck
      data = x.encode("utf-8", "surrogatepass")
      w(pickle.BINUNICODE + struct.pack("<I", len(data)) + data)
    elif isinstance(x, dict):
      w(pickle.EMPTY_DICT)
      if x:
        w(pickle.MARK)
        for k, v in x.items():
          if type(k) not in (str, int, float, bool, type(None), tuple):
            raise PthError(f"{self._path}: cannot save the key {_short(k)} at "
                           f"{where or 'top'}")
          self._save(k, where)
          self._save(v, f"{where}[{k!r}]")
        w(pickle.SETITEMS)
    elif isinstance(x, list):
      w(pickle.EMPTY_LIST)
      if x:
        w(pickle.MARK)
        for i, v in enumerate(x):
          self._save(v, f"{where}[{i}]")
        w(pickle.APPENDS)
    elif isinstance(x, tuple):
      if not x:
        w(pickle.EMPTY_TUPLE)
      else:
        w(pickle.MARK)
        for i, v in enumerate(x):
          self._save(v, f"{where}[{i}]")
        w(pickle.TUPLE)
    elif isinstance(x, (np.ndarray, np.generic)) or hasattr(x, "__array__"):
      self._tensor(x, where)
    else:
      raise PthError(f"{self._path}: cannot save the {type(x).__name__} at "
                     f"{where or 'top'} (only dicts, lists, tuples, ints, floats, "
                     "strings, bools, None and arrays)")

  def _tensor(self, x, where):
    """Writes one tensor; its bytes go to `data/<key>` (see `save`).

    The opcodes build `_rebuild_tensor_v2(persistent_id, 0, size, stride, False,
    OrderedDict())` with the persistent id `('storage', torch.XStorage, key, 'cpu',
    numel)`, as torch writes a contiguous tensor.
    """
    array = np.asarray(x)
    try:
      dtype = array.dtype.newbyteorder("=")
    except (TypeError, ValueError):
      dtype = array.dtype
    if dtype not in _SAVE_STORAGES:
      raise PthError(f"{self._path}: cannot save the {array.dtype} array at "
                     f"{where or 'top'} (saved dtypes: "
                     f"{', '.join(sorted(str(d) for d in _SAVE_STORAGES))})")
    if id(x) not in self._keys:
      self._keys[id(x)] = str(len(self.arrays))
      self.arrays.append(np.ascontiguousarray(array, dtype=dtype))
    key = self._keys[id(x)]
    stride, step = [], 1
    for n in reversed(array.shape):  # Contiguous strides as torch computes them.
      stride.insert(0, step)
      step *= max(n, 1)
    w = self._out.write
    self._global("torch._utils", "_rebuild_tensor_v2")
    w(pickle.MARK)
    w(pickle.MARK)
    self._save("storage", where)
    self._global("torch", _SAVE_STORAGES[dtype])
    for v in (key, "cpu", array.size):
      self._save(v, where)
    w(pickle.TUPLE + pickle.BINPERSID)
    for v in (0, tuple(array.shape), tuple(stride), False):
      self._save(v, where)
    self._global("collections", "OrderedDict")
    w(pickle.EMPTY_TUPLE + pickle.REDUCE)
    w(pickle.TUPLE + pickle.REDUCE)


def _write_record(f, zf, name, data):
  """Adds one stored record whose data starts at a multiple of `_ALIGNMENT`.

  The local header's extra field is padded (id 'FB', filler 'Z', as torch does).
  """
  data = memoryview(data).cast("B")
  info = zipfile.ZipInfo(name)
  info.compress_type = zipfile.ZIP_STORED
  info.file_size = len(data)
  zip64 = len(data) * 1.05 > zipfile.ZIP64_LIMIT  # zipfile's own rule.
  header = 30 + len(name.encode("ascii")) + (20 if zip64 else 0)
  pad = -(f.tell() + header) % _ALIGNMENT
  if 0 < pad < 4:  # An extra field is at least its 4-byte id and length.
    pad += _ALIGNMENT
  if pad:
    info.extra = struct.pack("<2sH", b"FB", pad - 4) + b"Z" * (pad - 4)
  with zf.open(info, "w", force_zip64=zip64) as out:
    if f.tell() % _ALIGNMENT:
      raise AssertionError(f"record {name} starts unaligned at {f.tell()}")
    for start in range(0, len(data), 1 << 24):
      out.write(data[start:start + (1 << 24)])


def save(obj, path):
  """Writes `obj` as a `torch.save` file that `torch.load(weights_only=True)` reads.

  The file is written to `path + '.tmp'` and renamed, so a crash leaves no file at
  `path` that looks complete. Each array is one tensor with its own storage (an array
  object that appears twice is stored once); dicts load in torch as dicts, which
  `nn.Module.load_state_dict` accepts.

  Args:
    obj: nested dicts, lists and tuples of ints, floats, strings, bools, None and
      numpy arrays (or anything `np.asarray` turns into one, e.g. a jax array) of
      float64, float32, float16, bfloat16, int64, int32, int16, int8, uint8, bool,
      complex64 or complex128.
    path: the file to write.

  Raises:
    PthError: `obj` holds something else (named with where it is); nothing is written.
  """
  pickler = _Pickler(path)
  data = pickler.dumps(obj)
  tmp = f"{path}.tmp"
  try:
    with open(tmp, "wb") as f:
      with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED) as zf:
        _write_record(f, zf, f"{_PREFIX}/data.pkl", data)
        _write_record(f, zf, f"{_PREFIX}/.format_version", b"1")
        _write_record(f, zf, f"{_PREFIX}/.storage_alignment", str(_ALIGNMENT).encode())
        _write_record(f, zf, f"{_PREFIX}/byteorder", b"little")
        for key, array in enumerate(pickler.arrays):
          if sys.byteorder == "big" and array.dtype.itemsize > 1:
            array = array.byteswap()
          _write_record(f, zf, f"{_PREFIX}/data/{key}",
                        array.reshape(-1).view(np.uint8))
        _write_record(f, zf, f"{_PREFIX}/version", _FORMAT_VERSION)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise
