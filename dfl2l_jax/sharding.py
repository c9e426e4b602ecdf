"""Devices and hosts: one 1-D mesh, NamedSharding of the model and task axes, padding.

Every large array has one leading "member" axis (the N zoo models, or the M test
tasks of the meta-test), split across the devices of a 1-D mesh with
`NamedSharding(mesh, P(axis))` under `jit`; shared data is replicated (`P()`).
The axis is "models" (zoo training, fusion) or "tasks" (meta-test); both meshes
hold the same devices (`config.mesh.num_devices`, 0 = all), axis `AxisType.Auto`.

A sharded axis must be a multiple of the device count: `pad_rows` pads it with
copies of real rows and `unpad_rows` cuts them off before anything else sees them.

Several hosts: `initialize_distributed` (config.mesh.distributed, or
DFL2L_DISTRIBUTED=1); `put_sharded` builds only the shards of the process's own
devices; `to_host` gathers to numpy on every process; only process 0 writes logs,
metrics and results (`is_main_process`). Why: docs/implementation.md, "sharding.py".
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from dfl2l_jax import checks
from dfl2l_jax.errors import ConfigError

MODELS = "models"
TASKS = "tasks"
ENV_DISTRIBUTED = "DFL2L_DISTRIBUTED"


# ----------------------------------------------------------------- hosts


def distributed_requested(config=None):
  """True when config.mesh.distributed is set or DFL2L_DISTRIBUTED=1."""
  env = os.environ.get(ENV_DISTRIBUTED, "").strip().lower() in ("1", "true", "yes")
  return env or bool(_mesh_section(config).get("distributed", False))


def _mesh_section(config):
  """config.mesh, or an empty dict (every default) when there is none."""
  if config is None or "mesh" not in config:
    return {}
  return config.mesh


def initialize_distributed(config=None):
  """Calls `jax.distributed.initialize()` once, if requested; returns whether it did.

  Must run before anything touches the JAX backend. On a TPU pod slice, SLURM or
  Open MPI every argument is detected; elsewhere set config.mesh.coordinator_address,
  num_processes and process_id (or the JAX_COORDINATOR_ADDRESS,
  JAX_NUM_PROCESSES, JAX_PROCESS_ID environment variables).
  """
  if not distributed_requested(config) or jax.distributed.is_initialized():
    return False
  m = _mesh_section(config)
  kwargs = {}
  if m.get("coordinator_address"):
    kwargs["coordinator_address"] = m["coordinator_address"]
  if m.get("num_processes", 0) > 0:
    kwargs["num_processes"] = m["num_processes"]
  if m.get("process_id", -1) >= 0:
    kwargs["process_id"] = m["process_id"]
  try:
    jax.distributed.initialize(**kwargs)
  except Exception as e:  # pylint: disable=broad-except
    raise ConfigError(
        f"jax.distributed.initialize({kwargs or ''}) failed ({type(e).__name__}: "
        f"{str(e)[:300]}). On one host leave config.mesh.distributed False and "
        f"{ENV_DISTRIBUTED} unset; on several hosts give config.mesh.coordinator_address, "
        "num_processes and process_id where they are not detected.") from e
  return True


def is_main_process():
  """Process 0 writes logs, metrics and results; the others only compute and save."""
  return jax.process_index() == 0


def sync(name):
  """A barrier across processes (a no-op on one host)."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


# ----------------------------------------------------------------- the mesh


# Every field optional: a config without it (or without a mesh section) takes the default.
MESH_FIELDS = {
    "mesh.num_devices": checks.explained(checks.NON_NEGATIVE_INT, "0: every device"),
    "mesh.distributed": checks.BOOL,
    "mesh.num_processes": checks.NON_NEGATIVE_INT,
    "mesh.process_id": checks.int_at_least(-1),
    "mesh.coordinator_address": checks.STRING,
}


def check_mesh_config(config):
  """Raises ConfigError naming a bad value of config.mesh."""
  checks.check(config, MESH_FIELDS, optional=True)
  n = _mesh_section(config).get("num_devices", 0)
  available = jax.device_count()
  if n > available:
    raise ConfigError(f"config.mesh.num_devices={n}, but only {available} "
                      f"{jax.default_backend()} devices are available")
  if jax.process_count() > 1 and n not in (0, available):
    raise ConfigError(
        f"config.mesh.num_devices={n}: with {jax.process_count()} processes the mesh must "
        f"hold every device (0 or {available}), so that each process owns a share")


def make_mesh(config=None, axis=MODELS, num_devices=None):
  """The 1-D mesh named `axis` over the first `config.mesh.num_devices` devices.

  Args:
    config: a run config (its `mesh` section); None: every device.
    axis: the axis name, MODELS (zoo training, fusion) or TASKS (meta-test).
    num_devices: overrides config.mesh.num_devices (0: every device).
  """
  if num_devices is None:
    num_devices = _mesh_section(config).get("num_devices", 0)
  if config is not None:
    check_mesh_config(config)
  devices = jax.devices()
  if not checks.is_int(num_devices) or num_devices < 0 or num_devices > len(devices):
    raise ConfigError(f"num_devices must be in [0, {len(devices)}], got {num_devices!r}")
  devices = devices[:num_devices or len(devices)]
  return Mesh(np.asarray(devices), (axis,), axis_types=(AxisType.Auto,))


def axis_of(mesh):
  (name,) = mesh.axis_names
  return name


def num_shards(mesh):
  return 1 if mesh is None else mesh.devices.size


def leading(mesh):
  """NamedSharding that splits an array's leading axis across the mesh."""
  return NamedSharding(mesh, P(axis_of(mesh)))


def replicated(mesh):
  """NamedSharding of an array every device holds whole."""
  return NamedSharding(mesh, P())


# ----------------------------------------------------------------- padding


def padded_size(n, multiple):
  """The smallest multiple of `multiple` that is >= n."""
  return -(-n // multiple) * multiple


def pad_rows(tree, size):
  """Pads every leaf's leading axis to `size` rows by repeating real rows cyclically.

  Row i of the result is row i mod n, so a padding row is a copy of a real one
  (a padding zoo member trains on a real member's task; a padding test task is a
  real task). Works on numpy arrays, jax arrays and inside jit (static shapes).
  """
  def pad(x):
    n = x.shape[0]
    if n == size:
      return x
    if n > size:
      raise ValueError(f"cannot pad {n} rows to {size}")
    idx = np.arange(size) % n
    return x[idx]
  return jax.tree.map(pad, tree)


def unpad_rows(tree, n):
  """The first n rows of every leaf: drops the padding added by `pad_rows`."""
  return jax.tree.map(lambda x: x if x.shape[0] == n else x[:n], tree)


def row_mask(n, size):
  """(size,) bool: True for the n real rows, False for padding."""
  return np.arange(size) < n


# ----------------------------------------------------------------- placement


def _put(x, sharding):
  """One leaf onto `sharding`, each process building only its addressable shards."""
  if isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
    data = _put(jax.random.key_data(x), sharding)
    return jax.random.wrap_key_data(data, impl=jax.random.key_impl(x))
  if isinstance(x, jax.Array) and (x.sharding == sharding or not x.is_fully_addressable):
    return jax.device_put(x, sharding)  # a global array is resharded by XLA.
  host = np.asarray(jax.device_get(x))
  return jax.make_array_from_callback(np.shape(host), sharding,
                                      lambda index: np.asarray(host[index]))


def put_sharded(tree, mesh):
  """Places each leaf with its leading axis split across the mesh (P(axis)).

  The leading axis must be a multiple of the device count (see `pad_rows`).
  Each process copies only the rows its own devices hold.
  """
  d = num_shards(mesh)
  for x in jax.tree.leaves(tree):
    if np.shape(x)[0] % d:
      raise ValueError(f"leading axis {np.shape(x)[0]} is not a multiple of the "
                       f"{d} devices of the mesh: pad it first (sharding.pad_rows)")
  sharding = leading(mesh)
  return jax.tree.map(lambda x: _put(x, sharding), tree)


def put_replicated(tree, mesh):
  """Places each leaf whole on every device of the mesh (P()); without a mesh, on the
  default device."""
  if mesh is None:
    return jax.device_put(tree)
  sharding = replicated(mesh)
  return jax.tree.map(lambda x: _put(x, sharding), tree)


def pad_and_shard(tree, mesh):
  """`pad_rows` to a multiple of the device count, then `put_sharded`."""
  n = jax.tree.leaves(tree)[0].shape[0]
  return put_sharded(pad_rows(tree, padded_size(n, num_shards(mesh))), mesh)


def constrain(tree, mesh, spec):
  """`with_sharding_constraint` inside jit; a no-op without a mesh."""
  if mesh is None:
    return tree
  sharding = NamedSharding(mesh, spec)
  return jax.tree.map(lambda x: jax.lax.with_sharding_constraint(x, sharding), tree)


def shard_rows(tree, mesh):
  """Inside jit: pads the leading axis to a multiple of the devices and splits it."""
  if mesh is None:
    return tree
  n = jax.tree.leaves(tree)[0].shape[0]
  return constrain(pad_rows(tree, padded_size(n, num_shards(mesh))), mesh, P(axis_of(mesh)))


def sharded_map(fn, xs, mesh):
  """`lax.map(fn, xs)` with each device mapping over its own rows.

  xs' leading axis (a multiple of the device count) is reshaped to
  (devices, rows per device); the device axis is vmapped and split across the
  mesh, the rows of one device run one after another (`lax.map`). Without a
  mesh, or on one device, this is plain `lax.map`.
  """
  d = num_shards(mesh)
  if d == 1:
    return jax.lax.map(fn, xs)
  split = jax.tree.map(lambda x: x.reshape((d, x.shape[0] // d) + x.shape[1:]), xs)
  split = constrain(split, mesh, P(axis_of(mesh)))
  out = jax.vmap(lambda part: jax.lax.map(fn, part))(split)
  return jax.tree.map(lambda x: x.reshape((-1,) + x.shape[2:]), out)


# ----------------------------------------------------------------- back to the host


def to_host(tree):
  """numpy copies of every leaf on every process (gathered across hosts if needed)."""
  def get(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(jax.device_get(x))
  return jax.tree.map(get, tree)


def device_set(x):
  """The set of devices an array lives on (for tests and logs)."""
  return set(x.sharding.device_set)
