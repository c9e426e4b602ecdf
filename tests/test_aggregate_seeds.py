"""scripts/aggregate_seeds.py: the tables of results/ are made by it, so its arithmetic is
checked here on hand-made results files."""

import errno
import json
import math
import os

import numpy as np
import pytest

from tests import helpers

T1 = 12.706205  # Student t, 0.975 quantile, 1 degree of freedom


def _write(path, seed, rows, commit=None, wall=10.0):
  run = {"benchmark": "mini_imagenet", "metric": "accuracy", "seed": seed,
         "wall_seconds": wall,
         "zoo_quality": {"mean": 60.0 + seed, "min": 50.0, "max": 70.0},
         "versions": {"backend": "cpu", "machine": "x86_64", "processor": "Test CPU",
                      **({"git": commit} if commit else {})},
         "rows": [{"method": m, "shots": 10, "per_task": v, "mean": float(np.mean(v))}
                  if v is not None else
                  {"method": m, "shots": 10, "per_task": [], "mean": None, "na": "no data"}
                  for m, v in rows]}
  path.write_text(json.dumps(run))
  return str(path)


def _edit(path, change):
  """Rewrites the results file at `path` with `change(run)` applied to its JSON."""
  run = json.loads(path.read_text())
  change(run)
  path.write_text(json.dumps(run))


def _cells(text, method, header_fragment):
  """The cells of `method`'s row in the table whose header contains `header_fragment`."""
  block = text.split(header_fragment, 1)[1]
  for line in block.splitlines():
    cells = [c.strip() for c in line.strip("|").split("|")]
    if cells[0] == method:
      return cells
  raise AssertionError(f"no row {method} after {header_fragment!r}")


def test_means_intervals_and_paired_differences(tmp_path, capsys):
  a = "a" * 40
  paths = [
      _write(tmp_path / "s1.json", 1, [("va", [50.0, 60.0]), ("dfl2l", [52.0, 61.0]),
                                        ("oml", None)], commit=a),
      # Seed 2 split over two files, as scripts/image_tables.sh writes one per method.
      _write(tmp_path / "s2_va.json", 2, [("va", [40.0, 50.0])], commit=a + "+dirty"),
      _write(tmp_path / "s2_dfl2l.json", 2, [("dfl2l", [44.0, 50.0])], wall=5.0),
  ]
  helpers.load_script("aggregate_seeds").main(["--baseline", "va", *paths])
  out = capsys.readouterr().out

  # Per-seed task means: va 55, 45; dfl2l 56.5, 47. Interval over 2 seeds uses t(1).
  va = _cells(out, "va", "mean over 2 seeds")
  assert va[2] == "50.000" and va[5] == "2"
  assert float(va[3]) == pytest.approx(T1 * np.std([55, 45], ddof=1) / math.sqrt(2), abs=1e-3)
  assert va[4] == "50.000"  # median over the four tasks
  assert _cells(out, "dfl2l", "mean over 2 seeds")[2] == "51.750"
  assert _cells(out, "oml *", "mean over 2 seeds")[2] == "n/a: no data"

  # Paired per task: seed 1 [+2, +1], seed 2 [+4, 0] (the tie is left out of the count).
  d = _cells(out, "dfl2l", "Paired against va")
  assert d[2] == "+1.750"
  assert float(d[3]) == pytest.approx(1.96 * np.std([2, 1, 4, 0], ddof=1) / 2, abs=1e-3)
  assert float(d[4]) == pytest.approx(T1 * np.std([1.5, 2.0], ddof=1) / math.sqrt(2), abs=1e-3)
  assert d[5] == "2" and d[6] == "3 of 3"

  assert "Wall seconds per seed (all runs of its files): 10.0, 15.0 (cpu, Test CPU)." in out
  assert ("Code (git commit: rows): aaaaaaaaaaaa: dfl2l, oml, va (seed 1); "
          "aaaaaaaaaaaa+dirty: va (seed 2); unrecorded: dfl2l (seed 2).\n") in out
  assert "results files" not in out


def test_each_row_is_credited_to_the_commit_of_the_run_that_made_it(tmp_path, capsys):
  """A workdir's results.json holds rows of several runs (methods added later, as
  launch.offline and launch.evaluate merge them): each row names its run."""
  a, b = "a" * 40, "b" * 40
  paths = [_write(tmp_path / f"s{k}.json", k, [("va", [50.0, 60.0]), ("dfl2l", [51.0, 60.0])],
                  commit=a) for k in (1, 2)]

  def two_runs(run):
    run["runs"] = [{"versions": {"git": a}, "wall_seconds": 3.0},
                   {"versions": {"git": b}, "wall_seconds": 4.0}]
    run["rows"][0]["run"], run["rows"][1]["run"] = 0, 1
  _edit(tmp_path / "s2.json", two_runs)
  script = helpers.load_script("aggregate_seeds")
  script.main(paths)
  out = capsys.readouterr().out
  assert ("Code (git commit: rows): aaaaaaaaaaaa: va (seeds 1, 2), dfl2l (seed 1); "
          "bbbbbbbbbbbb: dfl2l (seed 2).\n") in out
  # Seed 2's wall time is its two runs', not the last run's (the file's top level).
  assert "Wall seconds per seed (all runs of its files): 10.0, 7.0 (" in out
  # --save-merged keeps each row's commit: the saved files give the same line.
  script.main([*paths, "--save-merged", str(tmp_path / "kept")])
  capsys.readouterr()
  script.main([str(tmp_path / "kept" / f"seed{k}.json") for k in (1, 2)])
  out = capsys.readouterr().out
  assert ("Code (git commit: rows): aaaaaaaaaaaa: va (seeds 1, 2), dfl2l (seed 1); "
          "bbbbbbbbbbbb: dfl2l (seed 2).\n") in out
  assert "Wall seconds per seed (all runs of its files): 10.0, 7.0 (" in out


def test_one_seed_paired_interval_is_marked_not_available(tmp_path, capsys):
  path = _write(tmp_path / "s1.json", 3, [("va", [50.0, 60.0]), ("dfl2l", [52.0, 58.0])])
  helpers.load_script("aggregate_seeds").main([path])
  out = capsys.readouterr().out
  d = _cells(out, "dfl2l", "Paired against va")
  assert d[2] == "+0.000" and d[4] == "n/a (1 seed)" and d[6] == "1 of 2"
  assert _cells(out, "dfl2l", "mean over 1 seeds")[2:4] == ["55.000", "n/a (1 seed)"]


def test_refuses_conflicting_rows_missing_files_and_mixed_benchmarks(tmp_path):
  script = helpers.load_script("aggregate_seeds")
  one = _write(tmp_path / "a.json", 1, [("va", [50.0, 60.0])])
  other = _write(tmp_path / "b.json", 1, [("va", [50.0, 61.0])])
  with pytest.raises(SystemExit, match=r"seed 1 has two different results for \('va', 10\)"):
    script.main([one, other])
  with pytest.raises(SystemExit, match="does not exist"):
    script.main([one, str(tmp_path / "missing")])
  _edit(tmp_path / "b.json", lambda run: run.update(seed=2, benchmark="sinusoid"))
  with pytest.raises(SystemExit, match="runs of several benchmarks"):
    script.main([one, other])


def test_a_seed_given_by_its_means_counts_over_seeds_and_not_per_task(tmp_path, capsys):
  script = helpers.load_script("aggregate_seeds")
  full = _write(tmp_path / "s1.json", 1, [("va", [50.0, 60.0]), ("dfl2l", [52.0, 61.0])],
                commit="b" * 40)
  _write(tmp_path / "s2.json", 2, [("va", [40.0, 50.0]), ("dfl2l", [44.0, 50.0])])

  def means_only(run):
    for r in run["rows"]:
      del r["per_task"]
    run["source_commits"] = {"unrecorded": 3}
  _edit(tmp_path / "s2.json", means_only)
  script.main(["--baseline", "va", full, str(tmp_path / "s2.json")])
  out = capsys.readouterr().out

  # The per-task columns are left out: seed 2 has no per-task values.
  assert "| method | shots | accuracy: mean over 2 seeds | 95% CI (seeds) | seeds |" in out
  va = _cells(out, "va", "mean over 2 seeds")
  assert va[2:] == ["50.000", f"{T1 * np.std([55, 45], ddof=1) / math.sqrt(2):.3f}", "2"]
  assert "Seeds [2] are given by their per-seed means alone" in out
  # Seed differences: 1.5 (from tasks) and 2.0 (from the means).
  d = _cells(out, "dfl2l", "Paired against va")
  assert d[2] == "+1.750" and d[4] == "2" and len(d) == 5
  assert float(d[3]) == pytest.approx(T1 * np.std([1.5, 2.0], ddof=1) / math.sqrt(2), abs=1e-3)
  # Seed 2's file was merged before rows kept their commit: counted by file.
  assert "Code (git commit: rows): bbbbbbbbbbbb: dfl2l, va (seed 1).\n" in out
  assert ("Code of rows merged before rows kept their commit (git commit: results files): "
          "unrecorded: 3.\n") in out
  assert "(cpu, Test CPU)." in out


def test_a_row_missing_per_task_values_in_one_seed_is_marked_in_its_cells(tmp_path, capsys):
  full = _write(tmp_path / "s1.json", 1, [("va", [50.0, 60.0]), ("dfl2l", [52.0, 61.0])])
  _write(tmp_path / "s2.json", 2, [("va", [40.0, 50.0]), ("dfl2l", [44.0, 50.0])])
  _edit(tmp_path / "s2.json", lambda run: run["rows"][1].pop("per_task"))  # dfl2l: mean only
  helpers.load_script("aggregate_seeds").main([full, str(tmp_path / "s2.json")])
  out = capsys.readouterr().out
  assert _cells(out, "va", "mean over 2 seeds")[4] == "50.000"
  assert _cells(out, "dfl2l", "mean over 2 seeds")[4] == "n/a (seeds [2]: means only)"
  d = _cells(out, "dfl2l", "Paired against va")
  assert d[2] == "+1.750" and d[3] == d[6] == "n/a (seeds [2]: means only)"


def test_per_seed_table_lists_each_seed_difference(tmp_path, capsys):
  paths = [_write(tmp_path / "s1.json", 1, [("va", [50.0, 60.0]), ("dfl2l", [52.0, 61.0])]),
           _write(tmp_path / "s2.json", 2, [("va", [40.0, 50.0]), ("dfl2l", [39.0, 50.0])]),
           _write(tmp_path / "s3.json", 3, [("va", [40.0, 50.0])])]
  helpers.load_script("aggregate_seeds").main(["--per-seed", *paths])
  out = capsys.readouterr().out
  assert "| method | shots | seed 1 | seed 2 | seed 3 | seeds where method is higher |" in out
  assert _cells(out, "dfl2l", "Each seed's mean difference") == [
      "dfl2l", "10", "+1.500", "-0.500", "n/a", "1 of 2"]


def test_rows_that_read_the_zoo_tasks_data_are_marked_in_every_table(tmp_path, capsys):
  """As a row records it (`uses_task_data`), or, for rows recorded before they did, as the
  method registry declares it (maml here; ties only with the zoo_data criterion)."""
  def mark(run):
    for row in run["rows"]:
      if row["method"] == "my_oracle":
        row["uses_task_data"] = True
    run["config"] = {"ties": {"scale_criterion": "likelihood"}}
  paths = []
  for k in (1, 2):
    path = tmp_path / f"s{k}.json"
    _write(path, k, [("va", [50.0, 60.0]), ("my_oracle", [51.0, 60.0 + k]),
                     ("maml", [50.0, 61.0]), ("ties", [50.0, 59.0]),
                     ("zoo_features", [55.0, 66.0])])
    _edit(path, mark)
    paths.append(str(path))
  script = helpers.load_script("aggregate_seeds")
  script.main(["--baseline", "va", "--per-seed", *paths])
  out = capsys.readouterr().out
  assert _cells(out, "my_oracle *", "mean over 2 seeds")[2] == "56.250"
  assert _cells(out, "my_oracle *", "Paired against va")[2] == "+1.250"
  assert _cells(out, "my_oracle *", "Each seed's mean difference")[2:4] == ["+1.000", "+1.500"]
  assert _cells(out, "maml *", "Paired against va")[2] == "+0.500"
  assert _cells(out, "zoo_features", "Paired against va")[2] == "+5.500"  # data-free: no mark
  assert _cells(out, "ties", "Paired against va")[2] == "-0.500"
  assert "zoo_features *" not in out and "va *" not in out and "ties *" not in out
  assert out.count("\\* read the zoo tasks' training data (not data-free).") == 3
  # An old recorded config (one merging section) choosing lambda on the zoo data.
  for path in paths:
    _edit(tmp_path / os.path.basename(path),
          lambda run: run.update(config={"merging": {"scale_criterion": "zoo_data"}}))
  script.main(paths)
  assert _cells(capsys.readouterr().out, "ties *", "mean over 2 seeds")[2] == "54.500"


def test_what_the_methods_noted_is_listed_by_seed(tmp_path, capsys):
  paths = [_write(tmp_path / f"s{k}.json", k, [("va", [50.0, 60.0]), ("dfl2l", [51.0, 60.0])])
           for k in (1, 2, 3)]
  for k in (1, 3):
    _edit(tmp_path / f"s{k}.json", lambda run: run["rows"][1].update(notes={"rate_scale": 0.5}))
  helpers.load_script("aggregate_seeds").main(paths)
  assert ("Recorded by the methods: dfl2l: rate_scale=0.5 (seeds 1, 3).\n"
          in capsys.readouterr().out)


def test_names_the_machine_of_each_seed_when_they_differ(tmp_path, capsys):
  paths = [_write(tmp_path / f"s{k}.json", k, [("va", [50.0, 60.0 + k])]) for k in (1, 2, 3)]
  _edit(tmp_path / "s2.json", lambda run: run["versions"].update(processor="Other CPU"))
  helpers.load_script("aggregate_seeds").main(paths)
  assert ("Wall seconds per seed (all runs of its files): 10.0, 10.0, 10.0 (cpu, Test CPU for seeds [1, 3]; "
          "cpu, Other CPU for seeds [2]).") in capsys.readouterr().out


def test_save_merged_round_trips_to_the_same_tables(tmp_path, capsys):
  script = helpers.load_script("aggregate_seeds")
  paths = [_write(tmp_path / "s1.json", 1, [("va", [50.0, 60.0]), ("dfl2l", [52.0, 61.0])],
                  commit="c" * 40),
           _write(tmp_path / "s2_va.json", 2, [("va", [40.0, 50.0])], commit="d" * 40),
           _write(tmp_path / "s2_dfl2l.json", 2, [("dfl2l", [44.0, 50.0])], wall=5.0)]
  script.main([*paths, "--save-merged", str(tmp_path / "kept")])
  before = capsys.readouterr().out
  kept = sorted(str(p) for p in (tmp_path / "kept").iterdir())
  assert [os.path.basename(p) for p in kept] == ["seed1.json", "seed2.json"]
  seed2 = json.loads((tmp_path / "kept" / "seed2.json").read_text())
  assert {r["method"]: r["commit"] for r in seed2["rows"]} == {"va": "d" * 40, "dfl2l": None}
  assert "source_commits" not in seed2
  script.main(kept)
  assert capsys.readouterr().out == before


@pytest.mark.parametrize("mean, per_task, error", [
    (None, [50.0], "no 'mean of va@10'"),
    (float("nan"), [50.0], "va@10 has a non-finite value"),
    (50.0, [50.0, float("inf")], "va@10 has a non-finite value"),
])
def test_refuses_rows_without_a_finite_mean(tmp_path, mean, per_task, error):
  _write(tmp_path / "s.json", 1, [("va", [50.0])])
  _edit(tmp_path / "s.json", lambda run: run["rows"][0].update(mean=mean, per_task=per_task))
  with pytest.raises(SystemExit, match=error):
    helpers.load_script("aggregate_seeds").main([str(tmp_path / "s.json")])


def test_refuses_a_truncated_results_file(tmp_path):
  path = _write(tmp_path / "s.json", 1, [("va", [50.0])])
  (tmp_path / "s.json").write_text((tmp_path / "s.json").read_text()[:40])
  with pytest.raises(SystemExit, match=r"s\.json is not valid JSON"):
    helpers.load_script("aggregate_seeds").main([path])


def test_refuses_failed_rows_and_rows_of_several_meta_test_settings(tmp_path):
  _write(tmp_path / "s.json", 1, [("va", [50.0])])
  _edit(tmp_path / "s.json", lambda run: run["rows"][0].update(
      mean=None, per_task=[None], failed="non-finite on 1 of 1 tasks"))
  with pytest.raises(SystemExit, match=r"va@10 failed \(non-finite on 1 of 1 tasks\); "
                     r"--skip-failed leaves"):
    helpers.load_script("aggregate_seeds").main([str(tmp_path / "s.json")])
  _write(tmp_path / "t.json", 1, [("va", [50.0]), ("va", [40.0])])
  with pytest.raises(SystemExit, match="va@10 under several meta-test settings"):
    helpers.load_script("aggregate_seeds").main([str(tmp_path / "t.json")])


def test_skip_failed_leaves_out_the_failed_rows_and_says_so(tmp_path, capsys):
  paths = [_write(tmp_path / f"s{k}.json", k, [("va", [50.0, 60.0]), ("dfl2l", [51.0, 61.0])])
           for k in (1, 2)]
  _edit(tmp_path / "s2.json", lambda run: run["rows"][1].update(
      mean=None, per_task=[], failed="training diverged: dfl2l: ..."))
  helpers.load_script("aggregate_seeds").main(["--skip-failed", *paths])
  captured = capsys.readouterr()
  assert "left out: " in captured.err and "s2.json: dfl2l@10 failed (training diverged" in (
      captured.err)
  assert _cells(captured.out, "dfl2l", "mean over 2 seeds")[2:] == ["56.000", "n/a (1 seed)",
                                                                    "56.000", "1"]


def test_metatest_filter_and_ratio_table(tmp_path, capsys):
  _write(tmp_path / "a.json", 1, [("va", [4.0, 6.0]), ("zf", [0.5, 0.5]), ("va", [9.0])])
  _edit(tmp_path / "a.json", lambda run: [r.update(metatest={"steps": s}) for r, s in
                                          zip(run["rows"], (10, 10, 20))])
  _write(tmp_path / "b.json", 2, [("va", [2.0]), ("zf", [1.0])])
  _edit(tmp_path / "b.json", lambda run: [r.update(metatest={"steps": 10})
                                          for r in run["rows"]])
  helpers.load_script("aggregate_seeds").main(
      [str(tmp_path / "a.json"), str(tmp_path / "b.json"), "--metatest", "steps=10",
       "--ratios"])
  out = capsys.readouterr().out
  # seed 1: 0.5 / 5 = 0.1; seed 2: 1 / 2 = 0.5; mean 0.3, VA/method 3.33x.
  assert "| zf | 10 | 0.3 |" in out and "3.33x" in out and "0.1, 0.5" in out
  with pytest.raises(SystemExit, match="no row with the --metatest"):
    helpers.load_script("aggregate_seeds").main([str(tmp_path / "b.json"),
                                                 "--metatest", "steps=20"])


def test_saved_files_carry_no_path_of_the_machine(tmp_path, monkeypatch, capsys):
  """--save-merged replaces the data folders (named by --scrub, else generic names) and
  the current directory in every string of the kept files; the tables are unchanged."""
  monkeypatch.chdir(tmp_path)
  data, tfds = "/home/someone/data/mini-imagenet", "/scratch/tfds"
  path = _write(tmp_path / "s1.json", 1, [("va", [50.0, 60.0])])
  _edit(tmp_path / "s1.json", lambda run: run.update(
      config={"data": {"manual_dir": data, "data_dir": tfds}},
      runs=[{"command": f"python -m launch.offline --config.data.manual_dir={data} "
                        f"--config.data.data_dir={tfds} --workdir={tmp_path}/w/seed1"}]))
  script = helpers.load_script("aggregate_seeds")
  script.main([path])
  before = capsys.readouterr().out
  script.main([path, "--save-merged", "kept", "--scrub", f"MINI_IMAGENET={data}/"])
  capsys.readouterr()
  text = (tmp_path / "kept" / "seed1.json").read_text()
  assert data not in text and tfds not in text and str(tmp_path) not in text
  kept = json.loads(text)
  assert kept["config"]["data"] == {"manual_dir": "$MINI_IMAGENET", "data_dir": "$DATA_DIR"}
  assert kept["runs"][0]["command"].endswith(
      "manual_dir=$MINI_IMAGENET --config.data.data_dir=$DATA_DIR --workdir=w/seed1")
  script.main(["kept/seed1.json"])
  assert capsys.readouterr().out == before
  with pytest.raises(SystemExit):
    script.main([path, "--save-merged", "kept", "--scrub", "MINI_IMAGENET"])


def _settings(run, zoo_steps=300, steps=15, head="centroid"):
  """Records in every row of `run` the settings the pipeline records (results.settings_of)."""
  for r in run["rows"]:
    r["metatest"] = {"steps": steps, "num_tasks": len(r["per_task"])}
    r["settings"] = {"zoo": {"steps": zoo_steps}}
    if r["method"] == "zoo_features":
      r["settings"]["zoo_features"] = {"image_head": head}


def test_seeds_run_with_different_settings_are_refused_or_tabulated_apart(tmp_path, capsys):
  """Issue 31: seeds run with another zoo and meta-test were averaged ("mean over 2
  seeds", exit 0)."""
  script = helpers.load_script("aggregate_seeds")
  paths = [_write(tmp_path / f"s{k}.json", k, [("va", [50.0, 60.0]), ("dfl2l", [52.0, 61.0])])
           for k in (1, 2)]
  _edit(tmp_path / "s1.json", _settings)
  _edit(tmp_path / "s2.json", lambda run: _settings(run, zoo_steps=100, steps=5))
  with pytest.raises(SystemExit, match=r"error: rows to be averaged were made under different "
                     r"settings: va@10 differs in metatest.steps, zoo.steps \(seed 1: 15, 300; "
                     r"seed 2: 5, 100\), and 1 more .* --by-setting"):
    script.main(paths)
  script.main([*paths, "--by-setting"])
  out = capsys.readouterr().out
  assert _cells(out, "va [metatest.steps=15, zoo.steps=300]", "mean over")[2:] == [
      "55.000", "n/a (1 seed)", "55.000", "1"]
  assert _cells(out, "dfl2l [metatest.steps=5, zoo.steps=100]", "Paired against va")[2] == (
      "+1.500")
  # The same check for files from before rows recorded their settings: from the run's config.
  def recorded_by_the_run(run, steps):
    for r in run["rows"]:
      del r["settings"]
      r["run"] = 0
    run["runs"] = [{"launcher": "offline", "config": {"zoo": {"steps": steps}},
                    "methods": ["va", "dfl2l"]}]
  for k, steps in ((1, 300), (2, 100)):
    _edit(tmp_path / f"s{k}.json", lambda run, steps=steps: recorded_by_the_run(run, steps))
  with pytest.raises(SystemExit, match=r"differs in metatest.steps, zoo.steps"):
    script.main(paths)


def test_one_method_under_two_settings_in_one_file_is_refused_or_tabulated_apart(tmp_path,
                                                                                 capsys):
  """A workdir keeps a method's rows under each setting it was run with (results.row_key)."""
  script = helpers.load_script("aggregate_seeds")
  _write(tmp_path / "s.json", 1, [("va", [50.0, 60.0]), ("zoo_features", [55.0, 66.0]),
                                  ("zoo_features", [57.0, 66.0])])

  def two_heads(run):
    _settings(run)
    run["rows"][2]["settings"]["zoo_features"]["image_head"] = "select"
  _edit(tmp_path / "s.json", two_heads)
  path = str(tmp_path / "s.json")
  with pytest.raises(SystemExit, match=r"holds zoo_features@10 under several settings "
                     r"\(zoo_features.image_head: centroid, select\)"):
    script.main([path])
  script.main([path, "--by-setting"])
  out = capsys.readouterr().out
  assert _cells(out, "zoo_features [zoo_features.image_head=select]", "Paired against va")[
      2] == "+6.500"
  assert _cells(out, "zoo_features [zoo_features.image_head=centroid]", "mean over")[2] == (
      "60.500")


@pytest.mark.parametrize("change, error", [
    (lambda run: run.update(rows=[]), r"s1\.json has no rows: nothing to aggregate"),
    (lambda run: run["rows"][0].update(shots="10"),
     r"s1\.json is not a results file: row 0 \(va\) has no whole number of 'shots'"),
    (lambda run: run["rows"][0].update(per_task=["50.0", 60.0]),
     r"s1\.json is not a results file: row 0 \(va\) has 'per_task' values that are not"),
    (lambda run: run.pop("seed"), r"s1\.json is not a results file: no 'seed'"),
])
def test_malformed_files_end_in_one_error_line(tmp_path, change, error):
  paths = [_write(tmp_path / f"s{k}.json", k, [("va", [50.0, 60.0])]) for k in (1, 2)]
  _edit(tmp_path / "s1.json", change)
  with pytest.raises(SystemExit, match=r"^error: .*" + error):
    helpers.load_script("aggregate_seeds").main(paths)


def test_a_top_level_list_a_missing_baseline_and_all_rows_failed_are_errors(tmp_path, capsys):
  script = helpers.load_script("aggregate_seeds")
  (tmp_path / "list.json").write_text("[1, 2]")
  with pytest.raises(SystemExit, match=r"list\.json is not a results file: its top level is "
                     "a list, not an object"):
    script.main([str(tmp_path / "list.json")])
  path = _write(tmp_path / "s.json", 1, [("va", [50.0, 60.0]), ("dfl2l", [52.0, 61.0])])
  with pytest.raises(SystemExit, match=r"--baseline nosuch: no file has a row of it; the "
                     "methods are dfl2l, va"):
    script.main([path, "--baseline=nosuch"])
  _write(tmp_path / "t.json", 1, [("dfl2l", [52.0, 61.0])])  # no va: no paired table
  script.main([str(tmp_path / "t.json")])
  assert "Paired against" not in capsys.readouterr().out
  _edit(tmp_path / "s.json", lambda run: [r.update(mean=None, per_task=[], failed="diverged")
                                          for r in run["rows"]])
  with pytest.raises(SystemExit, match=r"s\.json: every row failed, so nothing of it is left"):
    script.main([path, "--skip-failed"])


def test_files_of_two_benchmarks_are_refused_as_such_before_their_rows_are_merged(tmp_path):
  """Both seed 1: the benchmarks were reported as two different results of one row."""
  one = _write(tmp_path / "a.json", 1, [("va", [50.0, 60.0])])
  other = _write(tmp_path / "b.json", 1, [("va", [0.5, 0.6])])
  _edit(tmp_path / "b.json", lambda run: run.update(benchmark="sinusoid", metric="mse"))
  with pytest.raises(SystemExit, match=r"runs of several benchmarks: mini_imagenet \(.*a\.json"
                     r"\); sinusoid \(.*b\.json\)"):
    helpers.load_script("aggregate_seeds").main([one, other])


def test_a_seed_whose_method_and_baseline_saw_other_tasks_has_no_paired_difference(tmp_path):
  """One seed split over two files meta-tested on different task counts: the per-task
  differences were a numpy broadcast error."""
  script = helpers.load_script("aggregate_seeds")
  paths = [_write(tmp_path / "s1_va.json", 1, [("va", [50.0, 60.0, 70.0])]),
           _write(tmp_path / "s1_dfl2l.json", 1, [("dfl2l", [52.0, 61.0])])]
  with pytest.raises(SystemExit, match=r"seed 1: dfl2l@10 has 2 tasks, its baseline va 3"):
    script.main(paths)
  for name in ("s1_va.json", "s1_dfl2l.json"):
    _edit(tmp_path / name, _settings)
  with pytest.raises(SystemExit, match=r"seed 1: dfl2l@10 and its baseline va were not "
                     r"meta-tested alike \(metatest.num_tasks: 3, 2\)"):
    script.main(paths)


def test_seeds_whose_settings_are_not_recorded_are_named(tmp_path, capsys):
  paths = [_write(tmp_path / f"s{k}.json", k, [("va", [50.0, 60.0])]) for k in (1, 2, 3)]
  _edit(tmp_path / "s3.json", _settings)
  helpers.load_script("aggregate_seeds").main(paths)
  assert ("are not recorded for seeds 1, 2 (files from before rows recorded them): not checked "
          "to agree with the other seeds'.") in capsys.readouterr().out


def test_an_out_file_that_cannot_be_written_is_one_error_and_no_temporary(tmp_path,
                                                                          monkeypatch):
  path = _write(tmp_path / "s.json", 1, [("va", [50.0, 60.0])])
  real_open = open

  def full_disk(file, mode="r", *a, **k):
    if str(file).endswith("table.md.tmp") and "w" in mode:
      real_open(file, mode, *a, **k).close()
      raise OSError(errno.ENOSPC, "No space left on device", str(file))
    return real_open(file, mode, *a, **k)
  monkeypatch.setattr("builtins.open", full_disk)
  with pytest.raises(SystemExit, match=r"error: could not write .*table\.md: the disk is full "
                     r"\(No space left on device\)\. .*table\.md is unchanged; free space"):
    helpers.load_script("aggregate_seeds").main([path, "--out", str(tmp_path / "table.md")])
  monkeypatch.undo()
  assert sorted(os.listdir(tmp_path)) == ["s.json"]


def test_first_tasks_pairs_a_long_run_with_short_ones(tmp_path, capsys):
  """A 4-task seed and a 2-task seed differ in metatest.num_tasks; their first 2 tasks are
  the same tasks and average."""
  script = helpers.load_script("aggregate_seeds")
  paths = [_write(tmp_path / "s1.json", 1, [("va", [50.0, 60.0, 0.0, 0.0]),
                                            ("dfl2l", [52.0, 61.0, 100.0, 100.0])]),
           _write(tmp_path / "s2.json", 2, [("va", [40.0, 50.0]), ("dfl2l", [44.0, 50.0])])]
  for k in (1, 2):
    _edit(tmp_path / f"s{k}.json", _settings)
  with pytest.raises(SystemExit, match=r"metatest.num_tasks \(seed 1: 4; seed 2: 2\)"):
    script.main(paths)
  script.main([*paths, "--first-tasks", "2"])
  out = capsys.readouterr().out
  assert _cells(out, "va", "mean over 2 seeds")[2] == "50.000"  # (55 + 45) / 2
  assert _cells(out, "dfl2l", "Paired against va")[2] == "+1.750"  # the first 2 tasks only
  with pytest.raises(SystemExit, match=r"s2.json: va@10 has 2 results, fewer than "
                                       r"--first-tasks=3"):
    script.main([*paths, "--first-tasks", "3"])
