"""results.json and results.md: the record of a workdir's runs.

A workdir holds one zoo (its benchmark and seed are fixed by zoo/spec.json), and any
number of runs on it: launch.offline, launch.online and launch.evaluate, with any set of
methods and any meta-test settings. Each row of results.json is one method at one shot
count, keyed by everything that produced it: its `metatest` settings and its `settings`,
the config sections of the zoo and of the method (`settings_of`). A run replaces only
the rows of the same key and keeps every other row, so a changed setting adds a row and
no run removes results it did not produce. `runs` lists every run that contributed, and
each row names its run: the launcher, the command line (config file and variant,
overrides), the resolved config, the code and the machine.

Rows recorded before rows kept their settings get them from the config of their run on
load (a `launch.evaluate` row: from the last run before it that made the method's saved
initialisation); where that is not known (no such run) a row's settings are `null`,
"unknown": such a row is never replaced, a new row of the same method and shots is added
beside it, and results.md marks it.

Writing is all or nothing: both files are written to temporary names first and renamed
only when both are complete; a failed write (a full disk) leaves the earlier files as
they were. results.md ends with the sha256 of the results.json it shows, so that a reader
can tell a stale table: a process killed between the two renames leaves results.json
newer than results.md (and a results.md.tmp); `stale_markdown` says so, as the next run
and `--dry_run` do, and the next run writes both again.
"""

import hashlib
import json
import logging
import math
import os
import platform
import subprocess
import sys
import time

import numpy as np

import jax

from dfl2l_jax import config_lib
from dfl2l_jax import methods as methods_lib
from dfl2l_jax.errors import CheckpointError, WriteError, write_error

# Meta-test fields that do not change what is measured (how many tasks are vmapped
# together), left out of a row's key.
_NOT_IN_KEY = ("batch_size",)


log = logging.getLogger("dfl2l_jax")


def versions(git=None):
  """Library versions, the machine, and `git` (default: source_commit() now)."""
  import chex, flax, jaxlib, optax, orbax.checkpoint  # pylint: disable=g-import-not-at-top
  import dfl2l_jax
  return {"python": sys.version.split()[0], "jax": jax.__version__,
          "jaxlib": jaxlib.__version__,
          "flax": flax.__version__, "optax": optax.__version__,
          "orbax-checkpoint": orbax.checkpoint.__version__, "chex": chex.__version__,
          "dfl2l_jax": dfl2l_jax.__version__, "backend": jax.default_backend(),
          "device": str(jax.devices()[0].device_kind), "machine": platform.machine(),
          "processor": cpu_model(), "cpu_count": os.cpu_count(),
          "git": git if git is not None else source_commit(),
          "device_count": jax.device_count(), "process_count": jax.process_count()}


def source_commit(src=None):
  """The git commit of the dfl2l_jax source that ran, "+dirty" if it had local changes.

  `src`: the checkout's root (default: the folder above this package). None where that is
  not the root of a git checkout (a wheel install) or git is missing, so that a results.json
  names the code that produced it whenever that is knowable.
  """
  src = src or os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  def git(*args):
    return subprocess.run(["git", "-C", src, *args], capture_output=True, text=True,
                          timeout=10, check=True).stdout.strip()
  try:
    # Only our own checkout: a package installed under some other repository (a venv inside a
    # user's project) must not report that repository's commit.
    if os.path.realpath(git("rev-parse", "--show-toplevel")) != os.path.realpath(src):
      return None
    head = git("rev-parse", "HEAD")
    dirty = git("status", "--porcelain", "--untracked-files=no", "--", "dfl2l_jax", "launch",
                "configs")
  except (OSError, subprocess.SubprocessError):
    return None
  return head + ("+dirty" if dirty else "")


def cpu_model():
  """The CPU's model name (Linux), else what `platform` knows."""
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def mean_ci95(values, student_t=False):
  """(mean, half-width of the 95% interval of the mean) of `values`: the one interval
  helper of the project.

  student_t=False: the normal approximation, 1.96 s / sqrt(n) (0 for one value), for
  means over many test tasks (each row of a run). student_t=True: Student t with n - 1
  degrees of freedom, for means over a few seeds, where 1.96 would understate the
  interval (n = 5: t = 2.78; n = 2: t = 12.7); NaN for fewer than 2 values.
  """
  v = np.asarray(values, np.float64)
  n = v.size
  if student_t:
    if n < 2:
      return float(v.mean()) if n else float("nan"), float("nan")
    from scipy import stats  # pylint: disable=import-outside-toplevel
    return float(v.mean()), float(stats.t.ppf(0.975, n - 1) * v.std(ddof=1) / np.sqrt(n))
  std = v.std(ddof=1) if n > 1 else 0.0
  return float(v.mean()), float(1.96 * std / math.sqrt(max(n, 1)))


# Config fields that say how a result was computed, not what: the chunking of checkpointed
# loops, how the zoo's members are looped over, the convolution and BatchNorm
# implementations (the same functions up to float rounding) and where the data lives.
HOW_NOT_WHAT = ("chunk_steps", "member_loop", "conv_impl", "bn_impl", "manual_dir",
                "data_dir", "source")  # zoo.source: where an imported zoo lies; a workdir
#                                           runs on one zoo only (zoo/source.py checks it)
# The config sections that make the zoo, in the settings of every row.
ZOO_SECTIONS = ("zoo", "model", "data")


def settings_of(config, method):
  """What produced a row of `method` besides its meta-test, as stored in the row and used
  in its key: {section: {field: value}} of the zoo's sections and of every section (or
  `section.field`) the method reads (methods.base.config_sections), less HOW_NOT_WHAT.

  `config`: a ConfigDict, or a recorded config (a dict in results.json; fields that moved
  or were added since are read as config_lib.recorded_values says). A method that is not
  registered (a row renamed by hand) gets the zoo's sections alone.
  """
  values = config_lib.recorded_values(config if isinstance(config, dict) else config.to_dict())
  m = methods_lib.METHODS.get(method)
  out = {}
  for name in ZOO_SECTIONS + (methods_lib.base.config_sections(m) if m else ()):
    section, _, field = name.partition(".")
    v = values.get(section)
    if not isinstance(v, dict):
      continue
    fields = [field] if field else sorted(v)
    out.setdefault(section, {}).update(
        {k: v[k] for k in fields if k in v and k not in HOW_NOT_WHAT})
  return json.loads(json.dumps(out, sort_keys=True))  # tuples -> lists, as stored.


def flat_settings(row):
  """A row's settings as {"section.field": value} (None: unknown), for labels and checks."""
  settings = row.get("settings")
  if settings is None:
    return None
  return {f"{section}.{k}": v for section, fields in sorted(settings.items())
          for k, v in sorted(fields.items())}


def metatest_settings(config):
  """The meta-test settings that define what a row measures (config.metatest less the
  batching), as stored in each row and used in its key."""
  return {k: v for k, v in sorted(config.metatest.to_dict().items()) if k not in _NOT_IN_KEY}


def row(method, shots, mean, ci95, per_task):
  return {"method": method, "shots": int(shots), "mean": float(mean), "ci95": float(ci95),
          "n_tasks": len(per_task), "per_task": [float(v) for v in per_task]}


def na_row(method, shots, reason):
  """The row of a method that cannot run in this setting: no numbers, a reason."""
  return {"method": method, "shots": int(shots), "mean": None, "ci95": None, "n_tasks": 0,
          "per_task": [], "na": reason}


def failed_row(method, shots, reason, metatest):
  """The row of a method whose training failed: no numbers, marked FAILED with `reason`."""
  return {"method": method, "shots": int(shots), "mean": None, "ci95": None, "n_tasks": 0,
          "per_task": [], "failed": reason, "metatest": metatest}


def row_key(r):
  """What identifies a row: method, shots, meta-test settings and settings (module doc)."""
  return (r["method"], int(r["shots"]), json.dumps(r.get("metatest"), sort_keys=True),
          json.dumps(r.get("settings"), sort_keys=True))


def failed_rows(results):
  """Rows whose meta-test produced a non-finite metric on some task."""
  return [r for r in results["rows"] if r.get("failed")]


def load(workdir):
  """The results.json of `workdir` in the current layout, or None if there is none.

  Files written before rows carried their meta-test settings and run are upgraded
  (every row gets the settings and launcher of the file's one run). An unreadable file,
  or one with a row this version cannot read (`record_problem`: a row without a method,
  shots that are not a number, ...), raises CheckpointError naming the file and the row:
  it is the user's record, a new run must not replace it unseen, and the pipeline loads
  it before any work, so that a bad row is not found after hours of training.
  """
  path = os.path.join(workdir, "results.json")
  if not os.path.exists(path):
    return None
  fix = f"Move it away (mv {path} {path}.old) or use a new --workdir"
  try:
    with open(path) as f:
      old = json.load(f)
    old["rows"]  # pylint: disable=pointless-statement
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise CheckpointError(
        f"{path} is unreadable ({type(e).__name__}: {e}); a new run would replace it. "
        f"{fix}") from e
  problem = record_problem(old)
  if problem:
    raise CheckpointError(f"{path} is not a results file this version can add to: {problem}. "
                          f"Repair that, or {fix[0].lower()}{fix[1:]}")
  if "runs" not in old:
    run = {k: old.get(k) for k in ("setting", "config", "wall_seconds", "versions")}
    run.update(launcher=old.get("setting"), command=None, finished=None)
    old["runs"] = [run]
    settings = {k: v for k, v in sorted(((old.get("config") or {}).get("metatest") or {})
                                        .items()) if k not in _NOT_IN_KEY}
    for r in old["rows"]:
      r.setdefault("metatest", settings)
      r.setdefault("run", 0)
  for r in old["rows"]:
    if "settings" not in r:
      r["settings"] = recorded_settings(old["runs"], r)
  stale = stale_markdown(workdir)
  if stale:
    log.warning("%s", stale)
  return old


def saved_init_settings(results, method):
  """The settings of `method`'s saved initialisation as `results` (a workdir's record)
  knows them: those of its latest row made by a launcher other than launch.evaluate (the
  run that saved it), or None (unknown)."""
  for r in reversed((results or {}).get("rows", [])):
    i = r.get("run")
    runs = results.get("runs") or []
    if (r["method"] == method and isinstance(i, int) and 0 <= i < len(runs)
        and runs[i].get("launcher") != "evaluate" and not r.get("na")):
      return r.get("settings")
  return None


def _is_number(v):
  return isinstance(v, (int, float)) and not isinstance(v, bool)


def record_problem(record):
  """What makes `record` (a loaded results.json) one that `merge`, `to_markdown` and the
  aggregation cannot read, or None: checked when a run starts, before any work."""
  if not isinstance(record, dict) or not isinstance(record.get("rows"), list):
    return "its top level is not an object with a list of rows"
  runs = record.get("runs")
  if runs is not None and not (isinstance(runs, list)
                               and all(isinstance(r, dict) for r in runs)):
    return "'runs' is not a list of objects"
  for i, r in enumerate(record["rows"]):
    where = f"row {i}"
    if not isinstance(r, dict):
      return f"{where} is not an object"
    if not isinstance(r.get("method"), str):
      return f"{where} has no 'method' name"
    where = f"row {i} ({r['method']})"
    if not _is_number(r.get("shots")) or int(r["shots"]) != r["shots"]:
      return f"{where} has no whole number of 'shots' ({r.get('shots')!r})"
    if r.get("mean") is not None and not _is_number(r["mean"]):
      return f"{where} has a 'mean' that is not a number ({r['mean']!r})"
    if r.get("ci95") is not None and not _is_number(r["ci95"]):
      return f"{where} has a 'ci95' that is not a number ({r['ci95']!r})"
    per_task = r.get("per_task", [])
    if not isinstance(per_task, list) or not all(v is None or _is_number(v) for v in per_task):
      return f"{where} has 'per_task' values that are not numbers"
    for field in ("metatest", "settings", "notes", "cost"):
      if r.get(field) is not None and not isinstance(r[field], dict):
        return f"{where} has a '{field}' that is not an object"
    if "run" in r and not (isinstance(r["run"], int) and not isinstance(r["run"], bool)
                           and 0 <= r["run"] < max(len(runs or []), 1)):
      return f"{where} names run {r['run']!r}, which the file does not list"
  return None


def recorded_settings(runs, row):
  """The settings of a `row` recorded before rows kept them, from the config of the run
  that made it, or None (unknown). A launch.evaluate row of a saved initialisation: the
  config of the last earlier run of another launcher that ran its method (the run that
  saved it); of a learner (rebuilt from the zoo by evaluate): its own run's."""
  i = row.get("run")
  if not isinstance(i, int) or not 0 <= i < len(runs):
    return None
  method = methods_lib.METHODS.get(row["method"])
  if runs[i].get("launcher") == "evaluate" and not (method is not None and method.learner):
    made = [j for j in range(i) if runs[j].get("launcher") != "evaluate"
            and row["method"] in (runs[j].get("methods") or ())]
    if not made:
      return None
    i = made[-1]
  config = runs[i].get("config")
  return settings_of(config, row["method"]) if isinstance(config, dict) else None


def merge(old, new):
  """`new` (one run's record) with the rows of `old` that it did not replace.

  Rows are matched by their key (`row_key`: method, shots, meta-test settings and
  settings); `old` rows keep their place, replaced ones take the new values, new ones
  follow; a FAILED row does not replace a row with numbers (a failed rerun leaves the
  earlier result), and a row of unknown settings (None) is never replaced. Runs that no
  longer own a row stay listed (what ran in this workdir), and rows keep pointing at theirs.
  """
  if old is None:
    return new
  for field in ("benchmark", "seed"):
    if old.get(field) != new.get(field):
      raise CheckpointError(
          f"results.json in this workdir holds {field} {old.get(field)!r}, this run "
          f"{new.get(field)!r}; use a new --workdir")
  runs = list(old["runs"]) + list(new["runs"])
  offset = len(old["runs"])
  fresh = {row_key(r): dict(r, run=r["run"] + offset) for r in new["rows"]}
  rows = []
  for r in old["rows"]:
    replacement = fresh.pop(row_key(r), r) if r.get("settings") is not None else r
    keep_old = replacement.get("failed") and r.get("mean") is not None
    rows.append(r if keep_old else replacement)
  rows += list(fresh.values())
  return dict(new, rows=rows, runs=runs)


def run_record(launcher, command, config, wall_seconds, methods, git=None):
  """What results.json keeps of one run; `git`: source_commit() taken when the run started."""
  return {"launcher": launcher, "command": command, "config": config.to_dict(),
          "methods": list(methods), "wall_seconds": float(wall_seconds),
          "versions": versions(git),
          "finished": time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime())}


def cost_label(cost):
  """'1 net, 5,105 fwd + 5,000 bwd': networks held, example passes through one network."""
  if not cost:
    return ""
  return (f"{cost['networks']} net{'s' if cost['networks'] != 1 else ''}, "
          f"{cost['forward']:,} fwd + {cost['backward']:,} bwd")


def notes_label(r):
  """' (rate_scale=0.5)': what the method recorded about how it ran (MethodContext.notes)."""
  notes = r.get("notes")
  short = lambda v: v["summary"] if isinstance(v, dict) and "summary" in v else v
  return (f" ({', '.join(f'{k}={short(v)}' for k, v in sorted(notes.items()))})"
          if notes else "")


def _settings_label(settings):
  return ", ".join(f"{k}={v}" for k, v in settings.items())


def variant_labels(rows):
  """For each of `rows`, what tells it from the other rows of its method and shots under
  other settings: ' [zoo_features.image_head=select]', ' [settings unknown]', or ''."""
  groups = {}
  for i, r in enumerate(rows):
    groups.setdefault((r["method"], r["shots"]), []).append(i)
  labels = [""] * len(rows)
  for members in groups.values():
    flats = [flat_settings(rows[i]) for i in members]
    if len({json.dumps(f, sort_keys=True) for f in flats}) < 2:
      continue
    known = [f for f in flats if f is not None]
    fields = sorted({k for f in known for k in f
                     if len({json.dumps(g.get(k, "?")) for g in known}) > 1})
    for i, f in zip(members, flats):
      labels[i] = (" [settings unknown]" if f is None else
                   " [" + ", ".join(f"{k}={f.get(k, '?')}" for k in fields) + "]")
  return labels


def to_markdown(results, json_sha256=None):
  """results.md: the rows, the zoo's quality and each run; `json_sha256`: that of the
  results.json written beside it, named on its last line."""
  unit = " (%)" if results["metric"] == "accuracy" else ""
  lines = [f"# {results['benchmark']}: {results['metric']}{unit}, seed {results['seed']}", ""]
  smoke = [str(i + 1) for i, run in enumerate(results["runs"])
           if ":smoke" in (run.get("command") or "")]
  if smoke:
    lines += [f"**Run(s) {', '.join(smoke)} used a `:smoke` config variant: a seconds-long "
              "check of the code, not a result.**", ""]
  lines += ["| method | shots | mean | 95% CI | tasks | test-time cost per task | run |",
            "|---|---|---|---|---|---|---|"]
  for r, variant in zip(results["rows"], variant_labels(results["rows"])):
    run = f"{r.get('run', 0) + 1}"
    if r.get("na"):
      lines.append(f"| {r['method']} | {r['shots']} | n/a | n/a | {r['na']} | | {run} |")
      continue
    mean = "FAILED" if r.get("failed") else f"{r['mean']:.4f}"
    ci = r["failed"] if r.get("failed") else f"{r['ci95']:.4f}"
    name = (r["method"] + variant + (" *" if r.get("uses_task_data") else "")
            + notes_label(r))
    lines.append(f"| {name} | {r['shots']} | {mean} | {ci} | {r['n_tasks']} | "
                 f"{cost_label(r.get('cost'))} | {run} |")
  q = results.get("zoo_quality")
  src = results.get("zoo_source")
  if src:
    producer = (src.get("producer") or {}).get("name", "unknown producer")
    arch = src["architecture"]
    if src.get("groups"):  # a zoo of several architectures
      models = (f"{src['num_models']} models: "
                + ", ".join(f"{g} x{n}" for g, n in src["groups"].items())
                + f"; the run's network: {src['group']}")
    else:
      models = f"{src['num_models']} {arch['name']} models of width {arch['filters']}"
    lines += ["", f"Zoo: imported ({models}, BatchNorm {src['batch_norm']}, from {producer}; "
              f"manifest digest {src['digest'][:12]})."]
  if q:
    where = ("on the benchmark's images of its classes, which may include its training "
             "images" if src else "on its own task")
    of = f" of {q['models']}" if q.get("models") else ""  # a mixed zoo: the run's group
    lines += ["", f"Zoo quality ({q['metric']} of each model{of} {where}): "
              f"mean {q['mean']:.4f}, min {q['min']:.4f}, max {q['max']:.4f}."]
    if q.get("other_groups"):  # a mixed zoo's other architectures, the same measure
      lines += ["", "Its other groups, the same measure: " + "; ".join(
          f"{name} ({len(g['per_model'])} models) mean {g['mean']:.4f}, min {g['min']:.4f}, "
          f"max {g['max']:.4f}" for name, g in q["other_groups"].items()) + "."]
  if q and q.get("contamination"):
    c = q["contamination"]
    lines += ["", f"Zoo contaminated for an experiment (config.zoo.contamination={c['spec']}): "
              + "; ".join(f"{kind} models {idx}" for kind, idx in c["models"].items()) + "."]
  screens = {}
  for r in results["rows"]:
    s = (r.get("notes") or {}).get("screen")
    if isinstance(s, dict) and "scores" in s:
      screens.setdefault(r["method"], s)
  for method, s in screens.items():
    scores = ", ".join(f"{i}: {'n/a' if v is None else f'{v:.1f}'}"
                       for i, v in enumerate(s["scores"]))
    lines += ["", f"{method} screen ({s['summary']}; a model is kept if its meta-validation "
              f"accuracy beats {s['bar']:.1f}, the best untrained network's): dropped "
              f"{s['dropped']}; scores {scores}"
              + ("; untrained networks " + ", ".join(f"{v:.1f}" for v in s["untrained_scores"])
                 if s.get("untrained_scores") else "") + "."]
  if any(r.get("uses_task_data") for r in results["rows"]):
    lines += ["", "\\* read the zoo tasks' training data (not data-free)."]
  lines += ["", "Test-time cost: networks a learner holds, and forward and backward passes "
            "per task, each one example through one network.",
            "", "Runs (each row names the run that produced it):", ""]
  settings_of = {}
  for r in results["rows"]:
    settings_of.setdefault(r.get("run", 0), []).append(r.get("metatest"))
  for i, run in enumerate(results["runs"]):
    v = run.get("versions") or {}
    command = run.get("command") or "(called from Python)"
    settings = [s for s in settings_of.get(i, []) if s is not None]
    label = _settings_label(settings[0]) if settings else "n/a"
    wall = run.get("wall_seconds")
    lines.append(
        f"{i + 1}. `{run.get('launcher')}`: `{command}`; meta-test {label}; "
        + (f"{wall:.1f} s " if wall is not None else "")
        + f"on {v.get('backend', '?')} ({v.get('device', '?')}, "
        f"{v.get('device_count', '?')} device(s)); finished {run.get('finished') or '?'}; "
        f"git {v.get('git')}.")
  if json_sha256:
    lines += ["", f"{_MADE_FROM}{json_sha256} (if results.json has another, this table is "
              "older than it: a run stopped between writing the two, and the next run "
              "writes both again)."]
  return "\n".join(lines) + "\n"


_MADE_FROM = "Made from the results.json of sha256 "


def stale_markdown(workdir):
  """A one-line warning if results.md of `workdir` does not show its results.json (a run
  was stopped between writing the two), else None. A results.md without the sha256 line
  (written by an earlier version) cannot be checked and passes."""
  json_path, md_path = (os.path.join(workdir, n) for n in ("results.json", "results.md"))
  try:
    with open(md_path) as f:
      made_from = [ln for ln in f.read().splitlines() if ln.startswith(_MADE_FROM)]
    with open(json_path, "rb") as f:
      digest = hashlib.sha256(f.read()).hexdigest()
  except OSError:
    return None
  if not made_from or made_from[-1][len(_MADE_FROM):].startswith(digest):
    return None
  return (f"{md_path} is older than {json_path} (a run was stopped between writing the "
          "two): its table is stale until the next run of this workdir writes both again")


def summary(results, workdir):
  """What the launchers print at the end: the last run's rows and where the files are."""
  last = len(results["runs"]) - 1
  unit = "%" if results["metric"] == "accuracy" else results["metric"]
  lines = ["", f"{results['benchmark']}, seed {results['seed']} ({unit}; "
           f"{'lower' if results['metric'] == 'mse' else 'higher'} is better):",
           f"  {'method':18s} {'shots':>5s} {'mean':>10s} {'95% CI':>9s}"]
  for r, variant in zip(results["rows"], variant_labels(results["rows"])):
    if r.get("run") != last:
      continue
    name = r["method"] + variant
    if r.get("na") or r.get("failed"):
      value = "n/a: " + r["na"] if r.get("na") else "FAILED: " + r["failed"]
      lines.append(f"  {name:18s} {r['shots']:5d} {value}")
    else:
      lines.append(f"  {name:18s} {r['shots']:5d} {r['mean']:10.4f} {r['ci95']:9.4f}")
  lines.append(f"Every run's rows: {os.path.join(workdir, 'results.md')} "
               f"(and results.json)")
  return "\n".join(lines)


def write(workdir, results):
  """Writes results.json and results.md, both or neither (process 0 only).

  Both go to temporary files first; only when both are complete are they renamed into
  place (json first, then md). A failed write (a full disk, a read-only folder) removes
  the temporary files, leaves the earlier results as they were and raises ResultsError.
  """
  if jax.process_index() != 0:
    return
  paths = [os.path.join(workdir, "results.json"), os.path.join(workdir, "results.md")]
  text = json.dumps(results, indent=1, sort_keys=True) + "\n"
  texts = [text, to_markdown(results, hashlib.sha256(text.encode()).hexdigest())]
  tmps = [p + ".tmp" for p in paths]
  try:
    for tmp, text in zip(tmps, texts):
      with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    for tmp, path in zip(tmps, paths):
      os.replace(tmp, path)
  except OSError as e:
    for tmp in tmps:
      if os.path.exists(tmp):
        os.remove(tmp)
    kept = "The earlier results there are unchanged"
    error = write_error(e, f"the results to {workdir}", kept, cls=ResultsError)
    raise error or ResultsError(f"could not write the results to {workdir}: {e}. {kept}; "
                                "fix this and rerun the same command, which resumes from "
                                "the last checkpoint") from None


class ResultsError(WriteError):
  """The results could not be written."""
