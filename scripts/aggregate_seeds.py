r"""Aggregates results.json of several seeds into one markdown table.

  python scripts/aggregate_seeds.py --out results/sinusoid_table.md \
      workdirs/sinusoid/seed1 workdirs/sinusoid/seed2 ...

For each (method, shots): the mean over seeds of the per-seed task means, with
a 95% interval over seeds (Student t with n_seeds - 1 degrees of freedom), and
the pooled median over all tasks of all seeds. Paired differences to a baseline
are given two ways: over all tasks pooled (per-task differences; tasks of one
seed share a zoo, so this interval ignores seed-to-seed variation) and over
seeds (each seed's mean difference, t interval). Also prints the zoo quality
and wall times, and the git commit of the run that made each row (results.json records
each run's commit since 1d3e55c; rows of files merged by --save-merged before it kept each
row's commit are counted by file).

Only rows made alike are averaged: each row records (or its run's config says, for files
from before rows recorded it) what produced it besides the seed, the config sections of the
zoo and of its method and its meta-test settings (dfl2l_jax/results.py). Rows of one method
and shots made under settings that differ, in one seed or across seeds, are refused with
the fields that differ; `--by-setting` tabulates each setting as a row of its own, labelled
with them ('zoo_features [zoo_features.image_head=select]'), and each row is paired with the
baseline row of its seed meta-tested on the same tasks of the same zoo. A setting a file
does not record is unknown there, not a difference: the table names the seeds whose
settings were not recorded, so not checked. A file that cannot be read (no rows, a row
without a method or with shots that are not a number, every row failed), files of several
benchmarks and a `--baseline` that no file has end in one line `error: ...`.

A seed may be given by its per-seed means alone (rows with a `mean` and no
`per_task`, e.g. a seed whose per-task files are gone): it counts in every
over-seeds column, and the columns that need per-task values are left out (or
say n/a in the rows of a seed that lacks them for some methods only).
`--save-merged DIR` writes each seed, its files merged, to DIR/seedN.json: one
small file per seed to keep beside the tables (results/raw/). The paths of the machine
that ran it are replaced in every string of those files: each `--scrub NAME=PATH` by
`$NAME`, then whatever data folders remain (config.data.manual_dir, data_dir) by
`$MANUAL_DIR` / `$DATA_DIR`, and the current directory by nothing (relative paths).
"""

import argparse
import collections
import json
import math
import os
import sys

import numpy as np

from dfl2l_jax import config_lib
from dfl2l_jax import errors
from dfl2l_jax import methods as methods_lib
from dfl2l_jax import results as results_lib


def fail(message):
  """Ends the script with one line `error: ...` on stderr and exit status 1."""
  raise SystemExit(f"error: {message}")


def read(path):
  """One results file, checked: the fields the tables read, and every row readable."""
  if not os.path.exists(path):
    fail(f"{path} does not exist (run not finished?)")
  try:
    with open(path) as f:
      run = json.load(f)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    fail(f"{path} is not valid JSON ({e})")
  except OSError as e:
    fail(f"{path} cannot be read ({e.strerror or e})")
  if not isinstance(run, dict):
    fail(f"{path} is not a results file: its top level is a {type(run).__name__}, not an "
         "object (a workdir's results.json or a file written by --save-merged)")
  for field, kind in (("seed", int), ("benchmark", str), ("metric", str), ("rows", list)):
    if not isinstance(run.get(field), kind) or isinstance(run.get(field), bool):
      fail(f"{path} is not a results file: no {field!r} ({kind.__name__})")
  problem = results_lib.record_problem(run)
  if problem:
    fail(f"{path} is not a results file: {problem}")
  if not run["rows"]:
    fail(f"{path} has no rows: nothing to aggregate")
  return run


def first_tasks(path, row, n):
  """`row` cut to its first `n` test tasks (mean and interval of those), refused if it has
  fewer. Task t of a seed is the same episode at any metatest.num_tasks (its images come
  from default_rng([seed, 1, t])), so a 600-task run's first 100 pair with a 100-task run's.
  """
  per_task = row.get("per_task")
  if not per_task or len(per_task) < n:
    fail(f"{path}: {row['method']}@{row['shots']} has "
         f"{len(per_task) if per_task else 'no per-task'} results, fewer than "
         f"--first-tasks={n}")
  mean, ci95 = results_lib.mean_ci95(per_task[:n])
  row.update(per_task=per_task[:n], mean=mean, ci95=ci95, n_tasks=n)
  if isinstance(row.get("metatest"), dict):
    row["metatest"] = dict(row["metatest"], num_tasks=n)
  settings = row.get("settings")
  if isinstance(settings, dict) and isinstance(settings.get("metatest"), dict):
    row["settings"] = dict(settings, metatest=dict(settings["metatest"], num_tasks=n))


def load(paths, keep=None, skip_failed=False, by_setting=False, tasks=None):
  """results.json of each workdir (or a results JSON file given directly).

  Runs of the same seed (e.g. methods added to a seed in a second workdir) are
  merged into one run; a (method, shots) row present in both under the same settings
  must be identical. A FAILED row (a diverged training or meta-test) is an error, or
  with `skip_failed` left out and reported on stderr. Rows of one method and shots made
  under different settings (its config sections, the zoo's, the meta-test's: `settings`)
  are refused, in one seed or across seeds, unless `by_setting`: then each setting is
  a row of its own, labelled with what differs (`label_variants`).
  """
  files = [(w, read(w if w.endswith(".json") else os.path.join(w, "results.json")))
           for w in paths]
  benchmarks = collections.defaultdict(list)
  for w, run in files:
    benchmarks[run["benchmark"]].append(w)
  if len(benchmarks) != 1:
    fail("runs of several benchmarks: " + "; ".join(
        f"{b} ({', '.join(ws[:3])}{', ...' if len(ws) > 3 else ''})"
        for b, ws in sorted(benchmarks.items())))
  by_seed = {}
  for w, run in files:
    path = w if w.endswith(".json") else os.path.join(w, "results.json")
    if keep is not None:
      run["rows"] = [r for r in run["rows"] if keep(r)]
      if not run["rows"]:
        fail(f"{path} has no row with the --metatest settings")
    seed = run["seed"]
    for r in run["rows"]:
      r["settings"] = row_settings(run, r)
      if tasks and not r.get("na") and not r.get("failed"):
        first_tasks(path, r, tasks)
    twice = [(key, fields) for key, fields in variants_in(run["rows"])
             if not fields or not by_setting]
    if twice:
      (method, shots), fields = twice[0]
      what = ("several meta-test settings" if all(f.startswith("metatest.") for f in fields)
              else "several settings")
      fail(f"{path} holds {method}@{shots} under {what}"
           + (f" ({'; '.join(fields[:3])})" if fields else "")
           + " (runs with other settings, e.g. of launch.evaluate); aggregate one setting "
           "(--metatest keeps the rows of one meta-test setting) or tabulate each apart "
           "with --by-setting")
    failed = [r for r in run["rows"] if r.get("failed")]
    for r in failed:
      if not skip_failed:
        fail(f"{path}: {r['method']}@{r['shots']} failed ({r['failed']}); --skip-failed "
             "leaves such rows out")
      print(f"left out: {path}: {r['method']}@{r['shots']} failed ({r['failed']})",
            file=sys.stderr)
    run["rows"] = [r for r in run["rows"] if not r.get("failed")]
    if not run["rows"]:
      fail(f"{path}: every row failed, so nothing of it is left to aggregate; leave the file "
           "out (or rerun what failed)")
    for r in run["rows"]:
      if r.get("na"):
        continue
      if not isinstance(r.get("mean"), (int, float)):
        fail(f"{path} is not a results file: no 'mean of {r['method']}@{r['shots']}'")
      if not np.all(np.isfinite([r["mean"], *r.get("per_task", [])])):
        fail(f"{path}: {r['method']}@{r['shots']} has a non-finite value")
    for field in ("zoo_quality", "versions"):
      if not isinstance(run.get(field), dict):
        fail(f"{path} is not a results file: no {field!r}")
    commits = source_commits(run)
    if run.get("runs") and not merged_file(run):
      # A workdir's results.json: its top-level wall time is its last run's.
      run["wall_seconds"] = sum(r.get("wall_seconds", 0.0) for r in run["runs"])
    if not isinstance(run.get("wall_seconds"), (int, float)):
      fail(f"{path} is not a results file: no 'wall_seconds'")
    for r in run["rows"]:
      r["commit"] = row_commit(run, r)
    if any(r["commit"] is UNKNOWN for r in run["rows"]):
      run["commits"] = commits  # file-level counts, for those rows only
    else:
      run["commits"] = collections.Counter()
    run["files"] = run.get("merged_files", 1)
    if seed not in by_seed:
      by_seed[seed] = run
      continue
    merged = by_seed[seed]
    merged["commits"] += run["commits"]
    for r in run["rows"]:
      same = [h for h in merged["rows"] if (h["method"], h["shots"]) == (r["method"], r["shots"])
              and not _differing([h, r])]
      if not same:  # a new row, or one made under other settings (label_variants)
        merged["rows"].append(r)
      elif (same[0].get("per_task"), same[0].get("mean")) != (r.get("per_task"), r.get("mean")):
        fail(f"seed {seed} has two different results for {(r['method'], r['shots'])} (one "
             f"in {path})")
    merged["wall_seconds"] += run["wall_seconds"]
    merged["files"] += run["files"]
  runs = list(by_seed.values())
  label_variants(runs, by_setting)
  return runs


def row_settings(run, row):
  """What produced `row` (results.settings_of), as its file records it or its run's config
  says (files written before rows recorded it; results.recorded_settings), or None
  (unknown: files merged from several by --save-merged before rows kept it, or with no
  config)."""
  if "settings" in row:
    return row["settings"]
  if "runs" not in run:  # a file from before `runs`: one run, the file's config.
    config = run.get("config")
    return (results_lib.settings_of(config, row["method"]) if isinstance(config, dict)
            else None)
  if merged_file(run) and files_merged(run) != 1:
    return None
  return results_lib.recorded_settings(run["runs"], row)


def files_merged(run):
  """How many results files a file written by --save-merged merged (None: not known)."""
  if "merged_files" in run:
    return run["merged_files"]
  if "source_commits" in run:
    return sum(run["source_commits"].values())
  return None


def flat(row):
  """{"section.field": value} of what produced `row`: its meta-test settings and its
  settings; a part not recorded is left out (unknown)."""
  out = {f"metatest.{k}": v for k, v in sorted((row.get("metatest") or {}).items())}
  out.update(results_lib.flat_settings(row) or {})
  return out


def _differing(rows):
  """'field: a, b' for each field whose recorded values differ among `rows` (a field a row
  does not record is unknown there: not a difference)."""
  values = collections.defaultdict(dict)
  for r in rows:
    for k, v in flat(r).items():
      values[k][json.dumps(v, sort_keys=True)] = v
  return [f"{k}: {', '.join(map(str, vs.values()))}"
          for k, vs in sorted(values.items()) if len(vs) > 1]


def variants_in(rows):
  """[((method, shots), differing fields)] of the methods and shots that `rows` (one file)
  hold more than once."""
  groups = collections.defaultdict(list)
  for r in rows:
    groups[(r["method"], r["shots"])].append(r)
  return [(key, _differing(g)) for key, g in groups.items() if len(g) > 1]


def label_variants(runs, by_setting):
  """Names each row (`name`): its method, and where rows of that method and shots were
  made under different settings (in any seeds), what differs: 'zoo_features
  [zoo_features.image_head=select]'. Such rows are refused unless `by_setting`, since a
  mean over them would mix settings."""
  groups = collections.defaultdict(list)
  for r in runs:
    for row in r["rows"]:
      groups[(row["method"], row["shots"])].append((r["seed"], row))
  mixed = []
  for (method, shots), members in groups.items():
    known = [flat(row) for _, row in members]
    fields = sorted({k for f in known for k in f
                     if len({json.dumps(g[k], sort_keys=True) for g in known if k in g}) > 1})
    for _, row in members:
      f = flat(row)
      row["name"] = method + (" [" + ", ".join(f"{k}={f.get(k, '?')}" for k in fields) + "]"
                              if fields else "")
    if fields:
      seeds_of = collections.defaultdict(set)
      for seed, row in members:
        seeds_of[tuple(flat(row).get(k, "?") for k in fields[:2])].add(seed)
      mixed.append(f"{method}@{shots} differs in {', '.join(fields[:2])} (" + "; ".join(
          f"{seed_list(s)}: {', '.join(map(str, v))}" for v, s in sorted(
              seeds_of.items(), key=lambda vs: sorted(vs[1]))) + ")")
  if mixed and not by_setting:
    fail(f"rows to be averaged were made under different settings: {mixed[0]}"
         + (f", and {len(mixed) - 1} more method(s) and shots" if len(mixed) > 1 else "")
         + ". A mean over them would mix settings: aggregate runs made alike, keep one "
         "setting (--metatest), or tabulate each setting apart with --by-setting")


def merged_file(run):
  """Whether `run` was written by --save-merged (its `runs` are its first file's only)."""
  return "source_commits" in run or "merged_files" in run


UNKNOWN = object()  # a row merged by --save-merged before rows kept their commit


def row_commit(run, row):
  """The git commit of the run that made `row` (None: not recorded, UNKNOWN: see above):
  as --save-merged kept it, or that of the entry of the file's `runs` the row names, or the
  file's own for files from before `runs`."""
  if "commit" in row:
    return row["commit"]
  if merged_file(run):
    return UNKNOWN
  runs = run.get("runs") or []
  i = row.get("run")
  if isinstance(i, int) and 0 <= i < len(runs):
    return (runs[i].get("versions") or {}).get("git")
  return run.get("versions", {}).get("git")


def source_commits(run):
  """Commit -> number of results files behind `run`: a file saved by --save-merged lists
  those of the files it merged; any other file is one, of its `versions.git`."""
  if "source_commits" in run:
    return collections.Counter({(None if c == "unrecorded" else c): k
                                for c, k in run["source_commits"].items()})
  return collections.Counter([run.get("versions", {}).get("git")])


def used_data(runs):
  """Methods that read the zoo tasks' training data (not data-free) in some run: as its
  rows record it, or, for runs recorded before rows did, as the method registry declares
  it for the run's recorded config."""
  out = set()
  for r in runs:
    config = config_lib.with_moved_fields(r.get("config") or {})
    for row in r["rows"]:
      method = methods_lib.METHODS.get(row["method"])
      if row.get("uses_task_data") or (
          method is not None and methods_lib.base.uses_task_data(method, config)):
        out.add(row["name"])
  return out


def label(method, data_users):
  return method + (" *" if method in data_users else "")


DATA_NOTE = "\\* read the zoo tasks' training data (not data-free)."


def notes_line(runs):
  """'Recorded by the methods: dfl2l: rate_scale=0.5 (seeds 2, 4).': what methods noted
  about how they ran (a row's `notes`, e.g. DFL2L's halved rates), by method and seed."""
  seen = collections.defaultdict(set)
  for r in runs:
    for row in r["rows"]:
      for k, v in sorted((row.get("notes") or {}).items()):
        seen[row["name"], f"{k}={v}"].add(r["seed"])
  if not seen:
    return []
  parts = [f"{m}: {note} ({seed_list(s)})" for (m, note), s in sorted(seen.items())]
  return ["", "Recorded by the methods: " + "; ".join(parts) + "."]


def seed_list(seeds):
  """'seed 3' or 'seeds 1, 2'."""
  seeds = sorted(seeds)
  return f"seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))}"


def has_tasks(row):
  return bool(row.get("per_task"))


def means_only(runs):
  """Seeds none of whose rows has per-task values: the per-task columns are left out."""
  return [r["seed"] for r in runs if not any(has_tasks(row) for row in r["rows"])]


def scrub_paths(tree, pairs):
  """`tree` (JSON-like) with each (path, replacement) of `pairs` replaced in every string,
  longest path first."""
  pairs = sorted(((p, r) for p, r in pairs if p), key=lambda pr: -len(pr[0]))
  if isinstance(tree, dict):
    return {k: scrub_paths(v, pairs) for k, v in tree.items()}
  if isinstance(tree, list):
    return [scrub_paths(v, pairs) for v in tree]
  if isinstance(tree, str):
    for path, replacement in pairs:
      tree = tree.replace(path, replacement)
  return tree


def _machine_paths(run, scrub):
  """(path, replacement) pairs for a run: the --scrub ones, its data folders, the cwd."""
  pairs = [(os.path.normpath(p), f"${name}") for name, p in scrub]
  data = (run.get("config") or {}).get("data") or {}
  for field, name in (("manual_dir", "$MANUAL_DIR"), ("data_dir", "$DATA_DIR")):
    p = data.get(field)
    if p and not p.startswith("$") and all(os.path.normpath(p) != q for q, _ in pairs):
      pairs.append((os.path.normpath(p), name))
  pairs.append((os.getcwd() + os.sep, ""))
  return pairs


def save_merged(runs, out_dir, scrub=()):
  """Each seed's merged run as out_dir/seed{N}.json (written atomically), machine paths
  replaced (`scrub`: (NAME, PATH) pairs; module docstring)."""
  os.makedirs(out_dir, exist_ok=True)
  for r in runs:
    run = {k: v for k, v in r.items() if k not in ("commits", "files")}
    run["merged_files"] = r["files"]
    run["rows"] = [{k: v for k, v in row.items()
                    if k != "name" and (k != "commit" or v is not UNKNOWN)}
                   for row in r["rows"]]
    if r["commits"]:  # rows whose commit an older merge did not keep
      run["source_commits"] = {(c or "unrecorded"): k for c, k in sorted(
          r["commits"].items(), key=lambda ck: ck[0] or "")}
    run = scrub_paths(run, _machine_paths(run, scrub))
    path = os.path.join(out_dir, f"seed{r['seed']}.json")
    write_text(path, json.dumps(run, indent=1, sort_keys=True) + "\n")
    print(f"wrote {path}", file=sys.stderr)


def write_text(path, text):
  """Writes `path` through a temporary file and a rename; a full disk or a folder that
  cannot be written ends in one error line, the earlier file unchanged."""
  tmp = path + ".tmp"
  try:
    with open(tmp, "w") as f:
      f.write(text)
    os.replace(tmp, path)
  except OSError as e:
    if os.path.exists(tmp):
      os.remove(tmp)
    error = errors.write_error(e, path, f"{path} is unchanged", then="run this again")
    fail(error or f"could not write {path} ({e})")


def paired(runs, baseline, per_seed_table=False):
  """Differences (method - baseline) on the same tasks: pooled over tasks and over seeds;
  with `per_seed_table`, also each seed's mean difference, a column per seed."""
  diffs = collections.defaultdict(list)
  users = used_data(runs)
  by_seed = collections.defaultdict(dict)  # (method, shots) -> {seed: mean difference}
  no_tasks = collections.defaultdict(list)  # seeds given by their means alone
  for r in runs:
    rows = {(row["name"], row["shots"]): row for row in r["rows"] if not row.get("na")}
    for (method, shots), row in rows.items():
      base = baseline_row(r, row, baseline)
      if row["method"] == baseline or base is None:
        continue
      if has_tasks(row) and has_tasks(base):
        d = np.asarray(row["per_task"]) - np.asarray(base["per_task"])
        diffs[(method, shots)].extend(d)
        by_seed[(method, shots)][r["seed"]] = d.mean()
      else:  # the mean of the per-task differences is the difference of the means
        no_tasks[(method, shots)].append(r["seed"])
        by_seed[(method, shots)][r["seed"]] = row["mean"] - base["mean"]
  better = "higher" if runs[0]["metric"] == "accuracy" else "lower"
  over_seeds_only = bool(means_only(runs))
  if over_seeds_only:  # the mean of the seeds' mean differences
    lines = [f"| method | shots | mean of per-seed ({runs[0]['metric']} - {baseline}) | "
             "95% CI (seeds, t) | seeds |", "|---|---|---|---|---|"]
  else:
    lines = [f"| method | shots | mean of per-task ({runs[0]['metric']} - {baseline}) | "
             f"95% CI (tasks pooled) | 95% CI (seeds, t) | seeds | "
             f"tasks where method is {better} (ties excluded) |",
             "|---|---|---|---|---|---|---|"]
  for (method, shots), of_seed in sorted(by_seed.items(), key=lambda kv: (kv[0][1], kv[0][0])):
    per_seed = list(of_seed.values())
    seed_ci = results_lib.mean_ci95(per_seed, student_t=True)[1]
    seed_ci = "n/a (1 seed)" if len(per_seed) < 2 else f"{seed_ci:.3f}"
    if over_seeds_only:
      lines.append(f"| {label(method, users)} | {shots} | {np.mean(per_seed):+.3f} | {seed_ci} | "
                   f"{len(per_seed)} |")
      continue
    missing = no_tasks[(method, shots)]
    if missing:
      lost = f"n/a (seeds {missing}: means only)"
      lines.append(f"| {label(method, users)} | {shots} | {np.mean(per_seed):+.3f} | {lost} | {seed_ci} | "
                   f"{len(per_seed)} | {lost} |")
      continue
    d = np.asarray(diffs[(method, shots)])
    ci = 1.96 * d.std(ddof=1) / math.sqrt(d.size)
    wins = (d > 0) if better == "higher" else (d < 0)
    lines.append(f"| {label(method, users)} | {shots} | {d.mean():+.3f} | {ci:.3f} | {seed_ci} | "
                 f"{len(per_seed)} | {wins.sum()} of {(d != 0).sum()} |")
  if users:
    lines += ["", DATA_NOTE]
  if per_seed_table:
    seeds = [r["seed"] for r in runs]
    lines += ["", f"Each seed's mean difference (method - {baseline}):", "",
              "| method | shots | " + " | ".join(f"seed {k}" for k in seeds) +
              f" | seeds where method is {better} |", "|---|---|" + "---|" * (len(seeds) + 1)]
    for (method, shots), d in sorted(by_seed.items(), key=lambda kv: (kv[0][1], kv[0][0])):
      cells = [f"{d[k]:+.3f}" if k in d else "n/a" for k in seeds]
      n_better = sum((v > 0) if better == "higher" else (v < 0) for v in d.values())
      lines.append(f"| {label(method, users)} | {shots} | " + " | ".join(cells) +
                   f" | {n_better} of {len(d)} |")
    if users:
      lines += ["", DATA_NOTE]
  return "\n".join(lines) + "\n"


def baseline_row(run, row, baseline):
  """The row of `baseline` in `run` (one seed) that `row` is paired with: at the same
  shots, meta-tested on the same tasks of the same zoo (the settings of the zoo and the
  meta-test that both record are equal; so are the task counts). None if the seed has no
  such row; one made otherwise is refused, as is a choice between several."""
  def shared(r):
    return {k: v for k, v in flat(r).items() if k.split(".")[0] in SHARED}
  bases = [b for b in run["rows"] if b["method"] == baseline and b["shots"] == row["shots"]
           and not b.get("na")]
  if not bases:
    return None
  fits = [b for b in bases if not _differing([_only(shared(b)), _only(shared(row))])]
  where = f"seed {run['seed']}: {row['name']}@{row['shots']}"
  if not fits:
    fail(f"{where} and its baseline {baseline} were not meta-tested alike ("
         f"{'; '.join(_differing([_only(shared(bases[0])), _only(shared(row))])[:3])}), so "
         "they have no paired difference; aggregate runs made alike")
  if len(fits) > 1:
    fail(f"{where} could be paired with several rows of {baseline} ("
         f"{', '.join(b['name'] for b in fits)}); keep one (--metatest)")
  base = fits[0]
  if has_tasks(row) and has_tasks(base) and len(row["per_task"]) != len(base["per_task"]):
    fail(f"{where} has {len(row['per_task'])} tasks, its baseline {baseline} "
         f"{len(base['per_task'])}: they were not meta-tested on the same tasks")
  return base


# The parts of a row's settings that say which tasks and zoo it was measured on.
SHARED = ("metatest",) + results_lib.ZOO_SECTIONS


def _only(flat_settings):
  """A stand-in row whose recorded settings are `flat_settings` (for _differing)."""
  return {"metatest": {k[len("metatest."):]: v for k, v in flat_settings.items()
                       if k.startswith("metatest.")},
          "settings": _nest({k: v for k, v in flat_settings.items()
                             if not k.startswith("metatest.")})}


def _nest(flat_settings):
  out = collections.defaultdict(dict)
  for k, v in flat_settings.items():
    section, _, field = k.partition(".")
    out[section][field] = v
  return dict(out)


def table(runs):
  by_key = collections.defaultdict(list)
  pooled = collections.defaultdict(list)
  no_tasks = collections.defaultdict(list)
  na = {}
  order = []
  for r in runs:
    for row in r["rows"]:
      key = (row["name"], row["shots"])
      if key not in by_key and key not in na:
        order.append(key)
      if row.get("na"):
        na[key] = row["na"]
        continue
      by_key[key].append(row["mean"])
      if has_tasks(row):
        pooled[key].extend(row["per_task"])
      else:
        no_tasks[key].append(r["seed"])
  n = len(runs)
  metric = runs[0]["metric"]
  lost = means_only(runs)
  median_col = "" if lost else " median over all tasks |"
  lines = [f"| method | shots | {metric}: mean over {n} seeds | 95% CI (seeds) |{median_col} "
           "seeds |", "|---|---|---|---|" + ("" if lost else "---|") + "---|"]
  users = used_data(runs)
  for key in sorted(order, key=lambda k: (k[1], order.index(k))):
    name = label(key[0], users)
    if key not in by_key:
      lines.append(f"| {name} | {key[1]} | n/a: {na[key]} | n/a |{'' if lost else ' n/a |'} 0 |")
      continue
    v = np.asarray(by_key[key])
    ci = results_lib.mean_ci95(v, student_t=True)[1]
    ci = "n/a (1 seed)" if len(v) < 2 else f"{ci:.3f}"
    median = "" if lost else (f" n/a (seeds {no_tasks[key]}: means only) |" if no_tasks[key]
                              else f" {np.median(pooled[key]):.3f} |")
    lines.append(f"| {name} | {key[1]} | {v.mean():.3f} | {ci} |{median} {len(v)} |")
  if users:
    lines += ["", DATA_NOTE]
  lines += notes_line(runs)
  q = [r["zoo_quality"]["mean"] for r in runs]
  q_range = [(r["zoo_quality"]["min"], r["zoo_quality"]["max"]) for r in runs]
  walls = [r["wall_seconds"] for r in runs]
  seeds = [r["seed"] for r in runs]
  where = machines(runs)
  lines += ["", f"Seeds {seeds}. Zoo quality ({metric} of each zoo model on its own task, "
            f"mean over models): {', '.join(f'{x:.4f}' for x in q)}; "
            f"min..max: {', '.join(f'{a:.4f}..{b:.4f}' for a, b in q_range)}.",
            "Wall seconds per seed (all runs of its files): "
            f"{', '.join(f'{x:.1f}' for x in walls)} ({where}).",
            *commits(runs)]
  if lost:
    lines.append(f"Seeds {lost} are given by their per-seed means alone: the columns that "
                 "need per-task values (medians, tasks pooled, task counts) are left out.")
  lines += unchecked_line(runs)
  return "\n".join(lines) + "\n"


def unchecked_line(runs):
  """Where the settings of rows (the config sections of the zoo, the method and the
  meta-test) are not recorded, so not checked to agree (load refuses rows of one method
  made under recorded settings that differ): which seeds, if any."""
  blind = [r["seed"] for r in runs if any(not flat(row) for row in r["rows"])]
  if not blind:
    return []
  if len(blind) == len(runs):
    return ["Settings (the config sections of the zoo, each method and the meta-test) are "
            "recorded for no seed (files from before rows recorded them): not checked to "
            "agree."]
  return [f"Settings (the config sections of the zoo, each method and the meta-test) are not "
          f"recorded for {seed_list(blind)} (files from before rows recorded them): not "
          "checked to agree with the other seeds'."]


def machines(runs):
  """`backend, processor` of the runs; seeds named where they ran on different machines."""
  by = collections.defaultdict(list)
  for r in runs:
    v = r["versions"]
    by[f"{v['backend']}, {v.get('processor') or v.get('machine')}"].append(r["seed"])
  if len(by) == 1:
    return next(iter(by))
  return "; ".join(f"{w} for seeds {seeds}" for w, seeds in by.items())


def short(commit):
  return (commit[:12] + commit[40:]) if commit else "unrecorded"


def commits(runs):
  """'Code (git commit: rows): C: va, ota (seeds 1, 2); D: dfl2l (seed 1).': the commit of
  the run that made each row, by method and seed; `unrecorded` for runs from before
  results.json recorded it (or outside a git checkout). Rows of files merged before rows
  kept their commit are counted by results file on a line of their own."""
  seeds = collections.defaultdict(lambda: collections.defaultdict(set))
  for r in runs:
    for row in r["rows"]:
      if row["commit"] is not UNKNOWN:
        seeds[row["commit"]][row["name"]].add(r["seed"])
  lines = []
  if seeds:
    parts = []
    for c in sorted(seeds, key=lambda c: (c is None, -len(seeds[c]), c or "")):
      groups = collections.defaultdict(list)  # seed set -> methods made with it
      for m, s in seeds[c].items():
        groups[tuple(sorted(s))].append(m)
      parts.append(f"{short(c)}: " + ", ".join(
          f"{', '.join(sorted(ms))} ({seed_list(s)})"
          for s, ms in sorted(groups.items(), key=lambda sm: (-len(sm[0]), sm[0]))))
    lines.append("Code (git commit: rows): " + "; ".join(parts) + ".")
  total = collections.Counter()
  for r in runs:
    total.update(r["commits"])
  if total:
    order = sorted(total.items(), key=lambda ck: (-ck[1], ck[0] is None, ck[0] or ""))
    lines.append("Code of rows merged before rows kept their commit (git commit: results "
                 "files): " + ", ".join(f"{short(c)}: {k}" for c, k in order) + ".")
  return lines


def select_metatest(spec):
  """'k=v,...' -> a predicate on a row's recorded meta-test settings (None: every row)."""
  if not spec.strip():
    return None
  want = {}
  for item in spec.split(","):
    key, sep, value = item.partition("=")
    if not sep:
      raise SystemExit(f"error: --metatest takes k=v pairs, got {item!r}")
    want[key.strip()] = value.strip()
  def keep(row):
    got = row.get("metatest") or {}
    return all(k in got and str(got[k]) == v for k, v in want.items())
  return keep


def ratios(runs, baseline):
  """Per seed, each method's mean over the baseline's mean; mean and t interval over seeds."""
  per = collections.defaultdict(list)
  for r in runs:
    rows = {(row["name"], row["shots"]): row for row in r["rows"] if not row.get("na")}
    for (method, shots), row in rows.items():
      base = baseline_row(r, row, baseline)
      if base is not None and row["method"] != baseline:
        per[(method, shots)].append(row["mean"] / base["mean"])
  lines = [f"Ratio of means (method / {baseline}), per seed, then over seeds:", "",
           f"| method | shots | mean ratio | 95% CI (seeds, t) | {baseline} / method | "
           "per seed |", "|---|---|---|---|---|---|"]
  for (method, shots), v in sorted(per.items(), key=lambda kv: (kv[0][1], kv[0][0])):
    ci = results_lib.mean_ci95(v, student_t=True)[1]
    lines.append(f"| {method} | {shots} | {np.mean(v):.4g} | "
                 f"{'n/a' if len(v) < 2 else f'{ci:.2g}'} | {1 / np.mean(v):.3g}x | "
                 f"{', '.join(f'{x:.3g}' for x in v)} |")
  return "\n".join(lines) + "\n"


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("workdirs", nargs="+",
                      help="run directories or results JSON files; one seed may be split "
                      "over several (their rows are merged)")
  parser.add_argument("--out", default=None, help="write the table here too")
  parser.add_argument("--baseline", default=None,
                      help="also tabulate paired per-task differences against this method "
                      "(default: va, where the files have it; '' for none)")
  parser.add_argument("--per-seed", action="store_true",
                      help="also tabulate each seed's mean difference to the baseline")
  parser.add_argument("--metatest", default="", metavar="K=V,...",
                      help="only rows meta-tested with these settings (e.g. "
                      "steps=1000,step_rule=sgd), for workdirs that hold several")
  parser.add_argument("--ratios", action="store_true",
                      help="also tabulate each method's mean over seeds of (its mean / the "
                      "baseline's mean), for metrics such as MSE")
  parser.add_argument("--save-merged", default=None, metavar="DIR",
                      help="write each seed, its files merged, to DIR/seedN.json")
  parser.add_argument("--scrub", action="append", default=[], metavar="NAME=PATH",
                      help="with --save-merged: write PATH as $NAME in the saved files "
                      "(repeatable), e.g. MINI_IMAGENET=/data/mini-imagenet")
  parser.add_argument("--by-setting", action="store_true",
                      help="rows of one method made under different settings (its config "
                      "sections, the zoo's, the meta-test's) become rows of their own, "
                      "labelled with what differs, instead of an error")
  parser.add_argument("--skip-failed", action="store_true",
                      help="leave out FAILED rows (a diverged training or meta-test; listed on "
                      "stderr) instead of stopping with an error")
  parser.add_argument("--first-tasks", type=int, default=None, metavar="N",
                      help="each row's first N test tasks only (task t of a seed is the same "
                      "at any num_tasks), to pair a 600-task run with 100-task ones")
  args = parser.parse_args(argv)
  if args.first_tasks is not None and args.first_tasks < 1:
    parser.error(f"--first-tasks takes a positive number of tasks, got {args.first_tasks}")
  scrub = []
  for item in args.scrub:
    name, sep, path = item.partition("=")
    if not sep or not name or not path:
      parser.error(f"--scrub takes NAME=PATH, got {item!r}")
    scrub.append((name, path))
  runs = load(args.workdirs, select_metatest(args.metatest), args.skip_failed,
              args.by_setting, args.first_tasks)
  methods = sorted({row["method"] for r in runs for row in r["rows"]})
  baseline = args.baseline
  if baseline is None:
    baseline = "va" if "va" in methods else ""
  elif baseline and baseline not in methods:
    fail(f"--baseline {baseline}: no file has a row of it; the methods are "
         f"{', '.join(methods)}")
  args.baseline = baseline
  if args.save_merged:
    save_merged(runs, args.save_merged, scrub)
  text = table(runs)
  if args.baseline:
    text += "\nPaired against " + args.baseline + " (same tasks, same seeds):\n\n"
    text += paired(runs, args.baseline, args.per_seed)
    if args.ratios:
      text += "\n" + ratios(runs, args.baseline)
  print(text)
  if args.out:
    write_text(args.out, text)


if __name__ == "__main__":
  main()
