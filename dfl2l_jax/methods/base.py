"""The method interface: a zoo and a config in, an initialisation (or a learner) out.

A method is a `Method(name, tags, make_init)`. `make_init(ctx)` receives a
`MethodContext` and returns theta_init, the parameter pytree of one target
network, which the harness then meta-tests with Algorithm 3 exactly like every
other method's. A method may instead return a `Learner`: support set in, query
metric out (for example the zoo used as a feature ensemble with a head fitted on
the support set); the harness runs it over the same test tasks, and reports each
row's test-time cost per task either way. Methods that meta-train (dfl2l) keep their state under
`ctx.workdir` through `ctx.checkpointer(...)`, so they resume after a kill.

Adding a method is one module that builds a `Method` and registers it in
`methods/__init__.py`. A method that cannot run in a setting raises
`errors.NotApplicable(reason)` from `make_init`; its rows become "n/a" with the
reason.
"""

import dataclasses
import os
from typing import Any, Callable, Mapping, Optional, Tuple

import jax
import numpy as np

from dfl2l_jax import checkpointing
from dfl2l_jax import loops
from dfl2l_jax.errors import Dfl2lError
from dfl2l_jax.tasks import base as tasks_base


@dataclasses.dataclass
class MethodContext:
  """What a method may use.

  Attributes:
    config: the full run config (a method reads its own sub-config).
    benchmark: the benchmark (network, losses, zoo task descriptions).
    zoo: pretrained parameter pytree with a leading model axis (all N models).
    s_idx: indices into the zoo of the meta-training models S, in the order
      they arrive in the online setting.
    q_idx: indices of the meta-validation models Q.
    key: a PRNG key for this method.
    workdir: run directory (None: no checkpoints, e.g. in tests).
    writer: metrics writer with `write_scalars(step, dict)`.
    hooks: called as `hooks(phase, step)` after each checkpointed chunk.
    zoo_bn_stats: the zoo's BatchNorm population statistics ({"BatchNorm_i":
      {"mean", "var"}}, leading model axis), part of the zoo as a pretrained CNN
      checkpoint carries them; given to methods with `needs_bn_stats`, else None.
    zoo_running_stats: the BatchNorm statistics the zoo's models normalise with when they
      carry them (an imported zoo with batch_norm "running", as PyTorch's eval mode), the
      same pytree as zoo_bn_stats; None for zoos whose models normalise with the
      statistics of the batch they are given (our trainer's). Methods that use the zoo's
      models as functions (features, logits) must use them where given.
    group_bn_stats: {group name: BatchNorm population statistics} of the other groups of
      a mixed zoo whose models normalise with a batch's statistics (computed by the
      pipeline, as zoo_bn_stats for the run's group); given to methods with
      `needs_bn_stats`, else None. `group_stats` reads a group's.
    mesh: the run's "models" mesh (built once by the pipeline), which splits the model
      axis (zoo rows, fusion working sets); None: one device, nothing split.
    notes: what the method decided while running that a reader of its rows needs
      (JSON-able values, e.g. {"rate_scale": 0.5}); the pipeline records them with
      the method's rows as `notes`.
  """
  config: Any
  benchmark: tasks_base.Benchmark
  zoo: Any
  s_idx: np.ndarray
  q_idx: np.ndarray
  key: jax.Array
  workdir: Optional[str] = None
  writer: Any = None
  hooks: Optional[Callable] = None
  zoo_bn_stats: Any = None
  zoo_running_stats: Any = None
  group_bn_stats: Any = None
  mesh: Any = None
  notes: dict = dataclasses.field(default_factory=dict)

  @property
  def zoo_s(self):
    return jax.tree.map(lambda x: x[self.s_idx], self.zoo)

  @property
  def zoo_q(self):
    return jax.tree.map(lambda x: x[self.q_idx], self.zoo)

  @property
  def template(self):
    return jax.tree.map(lambda x: x[0], self.zoo)

  def group_stats(self, group):
    """The BatchNorm population statistics of `group`, another group of a mixed zoo:
    those it carries (batch_norm "running"), or those the pipeline computed for it; None
    where neither exists."""
    if group.bn_stats is not None:
      return group.bn_stats
    return (self.group_bn_stats or {}).get(group.name)

  def checkpointer(self, name, spec):
    """A Checkpointer in workdir/fusion/<name>, after checking its spec.

    Returns None when the context has no workdir.
    """
    if self.workdir is None:
      return None
    directory = os.path.join(self.workdir, "fusion", name)
    checkpointing.check_spec(directory, spec, f"{name} fusion state")
    checkpointing.write_spec(directory, spec)
    return checkpointing.Checkpointer(directory)

  def run_loop(self, name, spec, state, *, total_steps, chunk_steps, run_chunk):
    """A method's training loop, checkpointed under workdir/fusion/<name> and resumable.

    `run_chunk(state, start, length) -> (state, stacked metrics)` runs steps
    [start, start + length) in one compiled call; `spec` (a JSON-able dict of every
    setting the state depends on) guards the checkpoints against another
    configuration. Metrics go to `self.writer`, progress with an ETA to the log, and a
    NaN or Inf metric stops the run naming the loop and the step (loops.run_chunked).
    Returns the final state.
    """
    ckpt = self.checkpointer(name, spec)
    try:
      return loops.run_chunked(
          name=name, state=state, total_steps=int(total_steps), chunk_steps=int(chunk_steps),
          checkpointer=ckpt, writer=self.writer, hooks=self.hooks, run_chunk=run_chunk)
    finally:
      if ckpt is not None:
        ckpt.close()


# What a benchmark knows about the zoo tasks' own training data.
TASK_DATA_FIELDS = ("zoo_tasks", "batch_fn", "zoo_eval_fn", "data")


class DataFreeViolation(Dfl2lError, PermissionError):
  """A method declared data-free read the zoo tasks' data."""


class DataFreeBenchmark:
  """A benchmark with the zoo tasks' data removed: what a data-free method receives.

  Everything else (the network, `apply`, `init_params`, the losses, `spec`) reads through;
  `zoo_tasks`, `batch_fn`, `zoo_eval_fn` and `data` raise DataFreeViolation naming the
  method, so a method that claims to use only the zoo's parameters provably does.
  """

  def __init__(self, benchmark, method):
    object.__setattr__(self, "_benchmark", benchmark)
    object.__setattr__(self, "_method", method)

  def __getattr__(self, name):
    if name in TASK_DATA_FIELDS:
      raise DataFreeViolation(
          f"method {self._method} is declared data-free (Method.uses_task_data) but read "
          f"benchmark.{name}, the zoo tasks' data")
    return getattr(self._benchmark, name)

  def __setattr__(self, name, value):
    raise AttributeError("a benchmark is read-only")


def uses_task_data(method, config):
  """Whether `method` reads the zoo tasks' data under `config`."""
  flag = method.uses_task_data
  return bool(flag(config) if callable(flag) else flag)


@dataclasses.dataclass(frozen=True)
class Learner:
  """What a method returns when its product is not one initialisation.

  Attributes:
    state: a pytree of arrays the learner carries (for example the zoo's parameters).
    score: `(state, support, query) -> scalar`, the benchmark's metric on `query`
      after learning from `support` ({"x", "y"} of one test task). Pure and traceable:
      the harness vmaps it over tasks as it does Algorithm 3. Must be a stable object
      (a module-level function), since it is a static argument of a compiled call.
    cost: `(n_support, n_query) -> dict` of per-task test-time cost: "networks" held,
      "forward" and "backward" passes, each counted per example through one network.
  """
  state: Any
  score: Callable
  cost: Callable


@dataclasses.dataclass(frozen=True)
class Method:
  """A named way of producing an initialisation from a zoo.

  Attributes:
    name: the name used in config.methods and results.json.
    tags: labels that group methods, each usable in config.methods in place of the
      methods it labels: "offline" / "online" (a launcher's defaults, run when
      config.methods is ''), "baseline" (the paper's baselines and the merging methods
      it did not run), "ablation" (DFL2L without one of its parts), "function_space"
      (the zoo used as functions, not fused parameters).
    make_init: `(MethodContext) -> theta_init`, or a `Learner`.
    description: one line for the results table and docs.
    validate: optional `(config) -> None` that raises ConfigError naming a bad
      value of the method's own config section; called before any training.
    uses_task_data: True for the methods that read the zoo tasks' training data
      (the MAML baselines), or `(config) -> bool` where a setting decides; the
      others are data-free: the harness hands them a `DataFreeBenchmark`, which
      raises if they read the zoo tasks' data.
    learner: True when `make_init` returns a `Learner` (rebuilt from the zoo by
      launch.evaluate, not saved under inits/).
    needs_bn_stats: True when the method reads `ctx.zoo_bn_stats` (model
      inversion); the pipeline then computes them once with the zoo.
    sections: the config sections the method reads, each with a function making
      its defaults (`{"ties": ties_defaults}`); a config without such a section
      gets the defaults (`methods.add_default_sections`), and the benchmark configs
      include them all so that flags can override single fields. Sections whose
      values depend on the benchmark (`fusion`, `maml`) are made by the configs and
      are not listed here.
    reads: the sections made by the configs that the method reads too (`fusion`,
      `maml`), or single fields of them (`fusion.sigma`). `sections` and `reads`
      together are what a result of the method depends on besides the zoo and the
      meta-test (`config_sections`): each row of results.json records their values and
      is keyed by them (results.settings_of).
  """
  name: str
  tags: Tuple[str, ...]
  make_init: Callable
  description: str = ""
  validate: Optional[Callable] = None
  uses_task_data: Any = False
  learner: bool = False
  needs_bn_stats: bool = False
  sections: Mapping[str, Callable] = dataclasses.field(default_factory=dict, compare=False,
                                                       hash=False)
  reads: Tuple[str, ...] = ()


def config_sections(method):
  """Every config section (or `section.field`) `method` reads: its own (`sections`), then
  `reads`."""
  return tuple(method.sections) + tuple(s for s in method.reads if s not in method.sections)
