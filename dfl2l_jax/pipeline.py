"""The end-to-end pipelines behind the launchers.

`run(config, workdir, setting)`: train (or load) the zoo, produce each method's
initialisation, meta-test it at every shot count, write results. Every phase
checkpoints under `workdir`, so the same call after a kill resumes and ends
with the same results. `evaluate` meta-tests saved initialisations again.

Layout of a workdir:
  zoo/            orbax checkpoints of the ensemble trainer, spec.json
  fusion/<name>/  fusion state checkpoints of meta-trained methods, spec.json
  inits/<name>/   each method's theta_init
  metrics.jsonl   one JSON line per chunk of every phase
  tensorboard/    the same scalars as TensorBoard event files
  results.json, results.md   every run's rows (results.py), written last, both or neither
  .lock           held by the running process (workdir_lock.py)

Every check (config, zoo and fusion specs of the workdir, a readable results.json)
happens before anything in the workdir is replaced, and a run replaces only the
results rows and initialisations it produced, at its end: a refused, failed or killed
run leaves the earlier results as they were.
"""

import dataclasses
import os
import tempfile
import time
import zlib
from typing import Any, Callable, Mapping, Optional

import jax
import numpy as np

from dfl2l_jax import adaptation
from dfl2l_jax import checkpointing
from dfl2l_jax import config_lib
from dfl2l_jax import loops
from dfl2l_jax import methods as methods_lib
from dfl2l_jax import metrics
from dfl2l_jax import results as results_lib
from dfl2l_jax import sharding
from dfl2l_jax import tasks
from dfl2l_jax import workdir_lock
from dfl2l_jax import zoo as zoo_lib
from dfl2l_jax.zoo import contamination
from dfl2l_jax.zoo import mixed
from dfl2l_jax.zoo import source as zoo_source
from dfl2l_jax.errors import CheckpointError, ConfigError, Dfl2lError, NotApplicable, ZooError

log = metrics.log
MIXED_NEEDS_PRETRAIN = ("config.zoo.architectures: a zoo of several architectures is trained "
                        "by launch.pretrain (into WORKDIR/zoo_models), then run with "
                        "--config.zoo.source=WORKDIR/zoo_models")


def prepare(config, workdir=None, chosen=()):
  """Validates the config (and the sections of the `chosen` methods) and builds the benchmark."""
  sharding.initialize_distributed(config)  # before anything touches the devices.
  added = methods_lib.add_default_sections(config)
  if added:
    metrics.log.info("config has no %s section%s: the defaults are used", ", ".join(added),
                     "s" if len(added) > 1 else "")
  imported = zoo_source.load_source(config)  # sets the zoo's sizes in the config
  config_lib.validate(config)
  for method in chosen:
    if method.validate is not None:
      method.validate(config)
  benchmark = tasks.get_benchmark(config, imported)
  config_lib.validate_shots(config, benchmark)
  if workdir is not None:
    make_workdir(workdir)
  return benchmark


class MetaTestError(Dfl2lError, FloatingPointError):
  """A meta-test produced a non-finite metric."""


def make_workdir(workdir):
  """Creates `workdir` if needed; a clear error if it is a file or cannot be written."""
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise ConfigError(f"--workdir {workdir} is a file, not a folder")
  try:
    os.makedirs(workdir, exist_ok=True)
    with tempfile.TemporaryFile(dir=workdir):
      pass
  except OSError as e:
    raise ConfigError(f"--workdir {workdir} cannot be written ({e.strerror or e})") from e


def pretrain(config, workdir, hooks=None):
  """Trains the zoo into workdir/zoo; returns (zoo, quality). A zoo of several
  architectures (config.zoo.architectures) is trained group by group and written as the
  zoo folder workdir/zoo_models; then returns (that folder, quality)."""
  if zoo_source.source_of(config):
    raise ConfigError("launch.pretrain trains a zoo, and config.zoo.source names one to "
                      "import: nothing to train. Run launch.offline, launch.online or "
                      "launch.evaluate with it")
  benchmark = prepare(config, workdir)
  with workdir_lock.hold(workdir):
    writer = metrics.workdir_writer(workdir)
    try:
      mesh = RunContext.start(config, benchmark, workdir, launcher="pretrain").models_mesh
      if mixed.spec_of(config):
        from dfl2l_jax.tasks import fewshot  # pylint: disable=g-import-not-at-top
        return mixed.train_mixed_zoo(
            config, lambda c, net, first: fewshot.make_benchmark(
                c, network=net, first_model=first), workdir, writer, hooks, mesh=mesh)
      zoo = zoo_lib.train_zoo(config, benchmark, workdir, writer, hooks, mesh=mesh)
    finally:
      writer.close()
  quality = zoo_lib.zoo_quality(zoo, benchmark)
  log.info("zoo quality (%s on own task): mean %.4f min %.4f max %.4f",
               quality["metric"], quality["mean"], quality["min"], quality["max"])
  return zoo, quality


@dataclasses.dataclass(frozen=True)
class RunContext:
  """What a run hands down, built once (`RunContext.start`) after `prepare`.

  Attributes:
    config: the validated run config; nothing below the pipeline validates it again.
    benchmark: the benchmark (prepare).
    meshes: {"models": zoo training and fusion, "tasks": the meta-test}, the run's two
      1-D meshes (sharding.make_mesh, config.mesh); nothing below builds another.
    workdir: run directory (None: nothing saved).
    launcher: "offline", "online", "evaluate" or "pretrain", recorded with the rows.
    writer: metrics writer of the workdir; hooks: `hooks(phase, step)` after each chunk.
    command: the command line, commit: the code's commit as the run started, t0: its start
      (time.perf_counter), all three recorded with the rows.
  """
  config: Any
  benchmark: Any
  meshes: Mapping[str, Any]
  workdir: Optional[str] = None
  launcher: str = "offline"
  writer: Any = None
  hooks: Optional[Callable] = None
  command: Optional[str] = None
  commit: Any = None
  t0: float = 0.0

  @classmethod
  def start(cls, config, benchmark, workdir=None, **fields):
    """The context of a run starting now: its meshes built from config.mesh."""
    meshes = {axis: sharding.make_mesh(config, axis) for axis in (sharding.MODELS,
                                                                    sharding.TASKS)}
    fields.setdefault("t0", time.perf_counter())
    return cls(config=config, benchmark=benchmark, meshes=meshes, workdir=workdir, **fields)

  @property
  def models_mesh(self):
    return self.meshes[sharding.MODELS]

  @property
  def tasks_mesh(self):
    return self.meshes[sharding.TASKS]

  def key(self, name):
    """The PRNG key of the method (or phase) `name`: from config.seed and the name."""
    return method_key(self.config, name)


def obtain_zoo(run: RunContext):
  """(zoo, quality, running_stats): the zoo's parameters (leading model axis) read from
  config.zoo.source, or trained (resumed, restored) into workdir/zoo and then written
  as a zoo folder (workdir/zoo_models); with config.zoo.contamination applied
  (zoo/contamination.py; quality["contamination"] says which models); its quality; and
  its BatchNorm statistics where its models normalise with stored ones (an imported zoo
  with batch_norm "running"), else None. Refuses a workdir that ran on another zoo."""
  config, benchmark, workdir = run.config, run.benchmark, run.workdir
  imported = benchmark.imported_zoo
  zoo_source.check_workdir(workdir, imported, config)
  if imported is not None:
    if imported.mixed and contamination.spec_of(config):
      raise ConfigError("config.zoo.contamination applies to a zoo of one architecture, "
                        f"and {imported.directory} holds several")
    group = zoo_source.main_group(imported, config.zoo.group)  # the whole zoo, unless mixed
    zoo = jax.tree.map(jax.numpy.asarray, group.params)
    running = (jax.tree.map(jax.numpy.asarray, group.bn_stats)
               if imported.manifest["batch_norm"] == "running" else None)
  else:
    zoo = zoo_lib.train_zoo(config, benchmark, workdir, run.writer, run.hooks,
                            mesh=run.models_mesh)
    running = None
    quality = zoo_lib.zoo_quality(zoo, benchmark)
    if jax.process_index() == 0:
      zoo_lib.write_zoo_folder(os.path.join(workdir, zoo_source.TRAINED_ZOO), config,
                               benchmark, zoo, quality)
  zoo, running, record = contamination.apply(config, benchmark, zoo, running)
  if imported is not None or record is not None:
    quality = zoo_lib.zoo_quality(zoo, benchmark, running)
  if imported is not None:
    models = zoo_source.group_note(imported, config)  # a mixed zoo: the run's group only
    if models:
      quality["models"] = models
    log.info("imported zoo quality (%s on the benchmark's images of each model's classes, "
             "which may include its training images%s): mean %.4f min %.4f max %.4f",
             quality["metric"], f"; the models of {models}" if models else "",
             quality["mean"], quality["min"], quality["max"])
    if imported.mixed:  # the other groups, by the same measure: what the zoo holds
      quality["other_groups"] = other_groups_quality(run)
  if record is not None:
    quality["contamination"] = record
    log.info("zoo contaminated (%s): %s", record["spec"], "; ".join(
        f"{kind} models {idx}" for kind, idx in record["models"].items()))
  return zoo, quality, running


def zoo_bn_stats(run: RunContext, zoo, running, chosen):
  """The zoo's BatchNorm population statistics for the methods that need them: the
  imported zoo's own, or computed once from the zoo tasks' data (zoo.bn_stats; saved in
  the workdir for a clean zoo, recomputed for a contaminated one)."""
  if not any(m.needs_bn_stats for m in chosen):
    return None
  if running is not None:
    return running
  return zoo_lib.bn_stats(run.config, run.benchmark, zoo,
                          None if contamination.spec_of(run.config) else run.workdir)


def other_groups_quality(run: RunContext):
  """{group name: {"indices", "mean", "min", "max", "per_model"}}: zoo_quality's measure
  of each group of a mixed imported zoo other than the run's (each model by its own
  network, on the benchmark's images of its classes), logged."""
  out = {}
  for g in zoo_source.other_groups(run.benchmark.imported_zoo, run.config):
    values = run.benchmark.group_quality_fn(g)
    out[g.name] = {"indices": [int(i) for i in g.indices], "mean": float(np.mean(values)),
                   "min": float(np.min(values)), "max": float(np.max(values)),
                   "per_model": values}
    log.info("imported zoo quality of its group %s (%d models, the same measure): mean %.4f "
             "min %.4f max %.4f", g.name, len(values), out[g.name]["mean"],
             out[g.name]["min"], out[g.name]["max"])
  return out


def group_bn_stats(run: RunContext, chosen):
  """{group name: BatchNorm population statistics} of the other groups of a mixed
  imported zoo whose models normalise with a batch's statistics (batch_norm "batch", as
  our trainer's), computed from images of each model's classes for the methods that
  need them (the groups of a zoo with running statistics carry their own); None else."""
  imported = run.benchmark.imported_zoo
  if (not any(m.needs_bn_stats for m in chosen) or imported is None
      or not imported.mixed or imported.manifest["batch_norm"] != "batch"):
    return None
  out = {}
  for g in zoo_source.other_groups(imported, run.config):
    out[g.name] = run.benchmark.group_bn_stats_fn(g)
    log.info("BatchNorm population statistics of the zoo's group %s (%d models), from "
             "images of each model's classes", g.name, len(g.indices))
  return out


def method_key(config, name):
  return jax.random.fold_in(jax.random.key(config.seed), zlib.crc32(name.encode()) & 0x7FFFFFFF)


def episode_sizes(benchmark, episodes):
  """(support, query) examples of one test task, read from its first episode."""
  keys = adaptation.device_keys(episodes)
  support, query = benchmark.gather_episode({k: episodes[k][0] for k in keys}, benchmark.data)
  return int(np.shape(support["x"])[0]), int(np.shape(query["x"])[0])


def meta_test_rows(run: RunContext, name, theta_init, episodes):
  """Meta-tests one method's product at every shot count, on the run's tasks mesh: an
  initialisation by Algorithm 3, a `methods.Learner` by its own score; one row per shot
  count."""
  config, benchmark, mesh = run.config, run.benchmark, run.tasks_mesh
  rows = []
  mt = config.metatest
  for shots, eps in episodes.items():
    n_support, n_query = episode_sizes(benchmark, eps)
    if isinstance(theta_init, methods_lib.Learner):
      per_task = adaptation.score_learner(
          theta_init, eps, batch_size=mt.batch_size, gather_fn=benchmark.gather_episode,
          data=benchmark.data, mesh=mesh)
      cost = theta_init.cost(n_support, n_query)
    else:
      per_task = adaptation.meta_test(
          theta_init, eps, loss_fn=benchmark.loss_fn, metric_fn=benchmark.metric_fn,
          steps=mt.steps, lr=mt.lr, batch_size=mt.batch_size,
          gather_fn=benchmark.gather_episode, data=benchmark.data, mesh=mesh,
          step_bound=mt.get("step_bound", 0.0))
      cost = adaptation.adaptation_cost(mt.steps, n_support, n_query,
                                        mt.get("step_bound", 0.0))
    bad = int((~np.isfinite(per_task)).sum())
    if bad:
      log.error("%s at %d shots: %d of %d tasks have a non-finite %s (the adaptation "
                "diverged: lower config.metatest.lr)", name, shots, bad, per_task.size,
                benchmark.metric)
      r = results_lib.row(name, shots, float("nan"), float("nan"), per_task)
      r.update(mean=None, ci95=None, failed=f"non-finite on {bad} of {per_task.size} tasks",
               per_task=[v if np.isfinite(v) else None for v in r["per_task"]])
    else:
      mean, ci = results_lib.mean_ci95(per_task)
      log.info("%s %d-shot: %s %.4f +- %.4f", name, shots, benchmark.metric, mean, ci)
      r = results_lib.row(name, shots, mean, ci, per_task)
    r["metatest"] = results_lib.metatest_settings(config)
    r["cost"] = cost
    rows.append(r)
  return rows


def with_notes(rows, notes):
  """`rows` with the method's MethodContext.notes recorded in each (if it has any)."""
  return [dict(r, notes=dict(notes)) if notes else r for r in rows]


def _finish(run: RunContext, rows, quality, split, previous, inits=None, diverged=()):
  """Saves the run's initialisations, merges its rows into the workdir's `previous`
  results and writes them; then fails if a method diverged in training (`diverged`) or
  any row's meta-test was non-finite. `split`: (S indices, Q indices)."""
  config, workdir, benchmark, launcher = run.config, run.workdir, run.benchmark, run.launcher
  s_idx, q_idx = split
  for name, theta_init in (inits or {}).items():
    checkpointing.save_tree(os.path.join(workdir, "inits", name), theta_init,
                            spec={"settings": results_lib.settings_of(config, name)})
  wall = time.perf_counter() - run.t0
  for r in rows:
    r["run"], r["launcher"] = 0, launcher
    r.setdefault("settings", results_lib.settings_of(config, r["method"]))
    method = methods_lib.METHODS.get(r["method"])
    if method is not None and methods_lib.base.uses_task_data(method, config):
      r["uses_task_data"] = True
  record = results_lib.run_record(launcher, run.command, config, wall,
                                  sorted({r["method"] for r in rows}), git=run.commit)
  record["mesh"] = {axis: sharding.num_shards(mesh) for axis, mesh in run.meshes.items()}
  new = {"benchmark": benchmark.name, "metric": benchmark.metric, "seed": config.seed,
         "setting": launcher, "config": config.to_dict(), "rows": rows,
         "zoo_quality": quality, "split": {"n_s": len(s_idx), "n_q": len(q_idx)},
         "wall_seconds": wall, "versions": record["versions"], "runs": [record]}
  imported = benchmark.imported_zoo
  if imported is not None:
    m = imported.manifest
    group = zoo_source.main_group(imported, config.zoo.group)
    new["zoo_source"] = {"digest": imported.digest, "num_models": imported.num_models,
                         "batch_norm": m["batch_norm"], "architecture": group.architecture,
                         "files": imported.file_hashes(), "producer": m.get("producer")}
    if imported.mixed:
      new["zoo_source"]["groups"] = {g.name: len(g.indices) for g in imported.groups}
      new["zoo_source"]["group"] = group.name
  out = results_lib.merge(previous, new)
  results_lib.write(workdir, out)
  log.info("wrote %s and results.md", os.path.join(workdir, "results.json"))
  if diverged:
    raise loops.DivergenceError(
        f"{'; '.join(diverged)}. The other methods' rows were written to "
        f"{os.path.join(workdir, 'results.md')}; the diverged method's rows are marked FAILED "
        f"there, or keep an earlier result of theirs")
  failed = [f"{r['method']} at {r['shots']} shots ({r['failed']})" for r in rows
            if r.get("failed")]
  if failed:
    raise MetaTestError(
        f"the meta-test diverged for {'; '.join(failed)}; the rows are marked FAILED in "
        f"{os.path.join(workdir, 'results.md')}. Lower config.metatest.lr "
        f"(now {config.metatest.lr}) or check the initialisation")
  return out


def run(config, workdir, setting="offline", hooks=None, command=None):
  """The whole pipeline for the launchers `offline` and `online`.

  Args:
    config: a run config (see configs/).
    workdir: run directory; created if needed, resumed if it holds a run.
    setting: "offline" or "online": picks the default methods when
      `config.methods` is empty.
    hooks: optional `hooks(phase, step)` called after every checkpointed chunk.
    command: the command line that started the run, recorded with its rows.

  Returns:
    The results dict also written to workdir/results.json (every run's rows).
  """
  if mixed.spec_of(config):
    raise ConfigError(MIXED_NEEDS_PRETRAIN)
  t0 = time.perf_counter()
  commit = results_lib.source_commit()  # the code as it starts (edits during a run don't count)
  chosen = methods_lib.resolve(config.methods, setting)
  benchmark = prepare(config, workdir, chosen)  # starts jax.distributed, validates.
  with workdir_lock.hold(workdir):
    writer = metrics.workdir_writer(workdir)
    try:
      return _run_methods(RunContext.start(config, benchmark, workdir, launcher=setting,
                                           writer=writer, hooks=hooks, command=command,
                                           commit=commit, t0=t0), chosen)
    finally:
      writer.close()


def _run_methods(run: RunContext, chosen):
  config, benchmark = run.config, run.benchmark
  previous = results_lib.load(run.workdir)
  zoo, quality, running = obtain_zoo(run)
  split = zoo_lib.split(config)
  episodes = {s: benchmark.make_episodes(s) for s in config.shots}
  bn_stats = zoo_bn_stats(run, zoo, running, chosen)
  groups_stats = group_bn_stats(run, chosen)
  rows, inits, diverged = [], {}, []
  for method in chosen:
    ctx = method_context(run, method, zoo, split, bn_stats, running_stats=running,
                         group_stats=groups_stats)
    try:
      theta_init = method.make_init(ctx)
    except NotApplicable as e:
      log.warning("%s is not applicable here: %s", method.name, e)
      rows += [results_lib.na_row(method.name, shots, str(e)) for shots in config.shots]
      continue
    except loops.DivergenceError as e:
      # One method's divergence does not cost the others' results: they still run and
      # are written; the run fails at the end (_finish), naming this one.
      log.error("%s diverged in training (%s); the other methods go on", method.name, e)
      diverged.append(f"{method.name}: {e}")
      rows += [results_lib.failed_row(method.name, shots, f"training diverged: {e}",
                                      results_lib.metatest_settings(config))
               for shots in config.shots]
      continue
    if not isinstance(theta_init, methods_lib.Learner):  # a Learner is rebuilt from the zoo
      try:
        zoo_lib.check_finite(jax.tree.map(lambda x: x[None], theta_init))
      except ZooError as e:
        raise ZooError(f"method {method.name} produced a non-finite initialisation: {e}")
      inits[method.name] = theta_init
    rows += with_notes(meta_test_rows(run, method.name, theta_init, episodes), ctx.notes)
  return _finish(run, rows, quality, split, previous, inits, diverged)


def method_context(run: RunContext, method, zoo, split, bn_stats=None, running_stats=None,
                   group_stats=None):
  """What `method` may use of the run, the zoo and its `split` (S indices, Q indices); a
  data-free method gets the benchmark without the zoo tasks' data
  (methods.base.DataFreeBenchmark), so reading it raises. `running_stats`: the BatchNorm
  statistics the zoo's models normalise with, if they carry them; `group_stats`: the
  population statistics of a mixed zoo's other groups (group_bn_stats)."""
  config, benchmark = run.config, run.benchmark
  note = zoo_source.group_note(benchmark.imported_zoo, config)
  if not methods_lib.base.uses_task_data(method, config):
    benchmark = methods_lib.base.DataFreeBenchmark(benchmark, method.name)
  s_idx, q_idx = split
  return methods_lib.MethodContext(
      config=config, benchmark=benchmark, zoo=zoo, s_idx=s_idx, q_idx=q_idx,
      key=run.key(method.name), workdir=run.workdir, writer=run.writer, hooks=run.hooks,
      zoo_bn_stats=bn_stats if method.needs_bn_stats else None, mesh=run.models_mesh,
      zoo_running_stats=running_stats,
      group_bn_stats=group_stats if method.needs_bn_stats else None,
      # A zoo of several architectures: each row names the models it used (a method that
      # reads every group, zoo_features, says so instead).
      notes={"zoo_models": note} if note else {})


def evaluate(config, workdir, command=None):
  """Meta-tests every initialisation saved in workdir/inits again.

  The zoo must match the config (it is checked, not retrained); the meta-test
  settings (shots, steps, lr, tasks) may differ from the original run.
  """
  if mixed.spec_of(config):
    raise ConfigError(MIXED_NEEDS_PRETRAIN)
  t0 = time.perf_counter()
  commit = results_lib.source_commit()  # the code as it starts (edits during a run don't count)
  benchmark = prepare(config)
  if not os.path.isdir(workdir):  # (and create nothing there: no folder, no .lock)
    raise CheckpointError(f"--workdir {workdir} does not exist: launch.evaluate meta-tests "
                          "what launch.offline or launch.online saved there; run one first")
  make_workdir(workdir)  # a clear error if it cannot be written
  with workdir_lock.hold(workdir):
    return _evaluate_locked(RunContext.start(config, benchmark, workdir, launcher="evaluate",
                                             command=command, commit=commit, t0=t0))


def _evaluate_locked(run: RunContext):
  config, workdir, benchmark = run.config, run.workdir, run.benchmark
  previous = results_lib.load(workdir)
  inits_dir = os.path.join(workdir, "inits")
  zoo_dir = os.path.join(workdir, "zoo")
  if benchmark.imported_zoo is None:
    if not os.path.isdir(zoo_dir):
      raise CheckpointError(f"{workdir} holds no zoo: run launch.offline or launch.online "
                            "first")
    checkpointing.check_spec(zoo_dir, zoo_lib.zoo_spec(config, benchmark), "zoo")
    with checkpointing.Checkpointer(zoo_dir) as ckpt:
      if ckpt.latest_step() != config.zoo.steps:
        raise CheckpointError(
            f"the zoo in {zoo_dir} is unfinished (step {ckpt.latest_step()} of "
            f"{config.zoo.steps}): finish it with launch.pretrain or launch.offline first")
  elif not os.path.exists(os.path.join(workdir, zoo_source.RECORD)):
    raise CheckpointError(f"{workdir} has not run on an imported zoo: run launch.offline "
                          "or launch.online with config.zoo.source first")
  names = sorted(n for n in (os.listdir(inits_dir) if os.path.isdir(inits_dir) else [])
                 if not n.startswith("."))  # .<name>.saving: a save_tree under way
  learners = []  # learner methods are rebuilt from the zoo, not loaded
  if config.methods.strip():
    wanted = methods_lib.resolve(config.methods, "offline")
    learners = [m for m in wanted if m.learner]
    for m in learners:
      if m.validate is not None:
        m.validate(config)
    wanted = [m.name for m in wanted if not m.learner]
    missing = [n for n in wanted if n not in names]
    if missing:
      raise CheckpointError(f"{inits_dir} has no initialisation for {', '.join(missing)}")
    names = wanted
  if not names and not learners:
    raise CheckpointError(f"{inits_dir} holds no saved initialisations")
  zoo, quality, running = obtain_zoo(run)  # restores a trained zoo
  split = zoo_lib.split(config)
  template = benchmark.init_params(jax.random.key(0))
  episodes = {s: benchmark.make_episodes(s) for s in config.shots}
  inits, notes, settings = {}, {}, {}
  for r in (previous or {}).get("rows", []):  # what each saved init's method recorded
    if r.get("notes"):
      notes[r["method"]] = r["notes"]
  for name in names:
    settings[name] = saved_settings(config, inits_dir, name, previous)
    theta_init = checkpointing.load_tree(os.path.join(inits_dir, name), template)
    try:
      zoo_lib.check_finite(jax.tree.map(lambda x: x[None], theta_init))
    except ZooError as e:
      raise CheckpointError(f"the saved initialisation of {name} in {inits_dir} is not "
                            f"finite ({e}); rerun launch.offline to recompute it") from e
    inits[name] = jax.device_put(theta_init)
  for method in learners:
    ctx = method_context(run, method, zoo, split, zoo_bn_stats(run, zoo, running, [method]),
                         running_stats=running, group_stats=group_bn_stats(run, [method]))
    try:
      inits[method.name] = method.make_init(ctx)
    except NotApplicable as e:
      raise ConfigError(f"{method.name} is not applicable here: {e}") from e
    notes.pop(method.name, None)
    if ctx.notes:
      notes[method.name] = dict(ctx.notes)
  rows = []
  for name, theta_init in inits.items():
    rows += [dict(r, settings=settings[name]) if name in settings else r
             for r in with_notes(meta_test_rows(run, name, theta_init, episodes),
                                 notes.get(name))]
  return _finish(run, rows, quality, split, previous)


def saved_settings(config, inits_dir, name, previous):
  """The settings that made the saved initialisation `name` (recorded beside it; for one
  saved before they were: results.saved_init_settings), which its rows record; a warning
  where this config's differ (launch.evaluate does not remake it)."""
  spec = checkpointing.read_spec(os.path.join(inits_dir, name))
  saved = spec["settings"] if spec else results_lib.saved_init_settings(previous, name)
  now = results_lib.settings_of(config, name)
  if saved is not None and saved != now:
    log.warning("%s: the saved initialisation was made with other settings than this "
                "config's (%s); it is meta-tested as saved, and its rows say so", name,
                "; ".join(config_lib.dict_diff(saved, now)[:4]))
  return saved


def describe(config, workdir=None, setting="offline"):
  """What `--dry_run` prints: the checked config, the methods and the workdir's state.

  Validates everything a run validates before training (config, method sections, the
  benchmark and its data) and checks the workdir's zoo against the config, but creates
  and changes nothing.
  """
  import json  # pylint: disable=g-import-not-at-top
  setting = setting or "offline"
  chosen = methods_lib.resolve(config.methods, setting)
  benchmark = prepare(config, None, chosen)
  lines = ["Config (checked):", json.dumps(config.to_dict(), indent=1, default=str), "",
           f"Benchmark: {benchmark.name}, metric {benchmark.metric}, shots "
           f"{tuple(config.shots)}; {config.zoo.num_models} zoo models "
           f"({config_lib.num_validation(config)} for meta-validation).",
           f"Methods ({setting} launcher):"]
  for m in chosen:
    lines.append(f"  {m.name:16s} {m.description}"
                 + ("  [reads the zoo tasks' data]"
                    if methods_lib.base.uses_task_data(m, config) else ""))
  if workdir is None:
    return "\n".join(lines + ["", "No --workdir given: nothing checked there."])
  lines += ["", f"Workdir {workdir}:"]
  if not os.path.isdir(workdir):
    return "\n".join(lines + ["  does not exist yet; a run would create it."])
  zoo_dir = os.path.join(workdir, "zoo")
  steps = sorted(int(d) for d in (os.listdir(zoo_dir) if os.path.isdir(zoo_dir) else [])
                 if d.isdigit())
  imported = benchmark.imported_zoo
  try:
    if imported is not None:
      previous = zoo_source.read_record(workdir)
      if os.path.isdir(zoo_dir):
        lines.append("  zoo: a run would be refused: the workdir holds a trained zoo")
      elif previous is not None and previous["digest"] != imported.digest:
        lines.append("  zoo: a run would be refused: the workdir ran on another imported zoo")
      else:
        lines.append(f"  zoo: imported from {imported.directory} ({imported.num_models} "
                     f"models, digest {imported.digest[:12]})")
    else:
      checkpointing.check_spec(zoo_dir, zoo_lib.zoo_spec(config, benchmark), "zoo")
      lines.append(f"  zoo: checkpoint at step {steps[-1]} of {config.zoo.steps} (a run "
                   "resumes from it)" if steps else "  zoo: none yet (a run trains it)")
  except Dfl2lError as e:
    lines.append(f"  zoo: a run would be refused: {e}")
  try:
    previous = results_lib.load(workdir)
    lines.append(f"  results.json: {len(previous['rows'])} rows from "
                 f"{len(previous['runs'])} run(s), kept by a new run except the rows "
                 "it recomputes" if previous else "  results.json: none yet")
  except Dfl2lError as e:
    lines.append(f"  results.json: a run would be refused: {e}")
  return "\n".join(lines)
