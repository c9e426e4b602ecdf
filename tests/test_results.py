"""The run record: intervals over seeds and what produced a run (dfl2l_jax/results.py)."""

import errno
import json
import math
import os
import subprocess

import numpy as np
import pytest

from dfl2l_jax import results
from dfl2l_jax.errors import CheckpointError
from tests import helpers


def test_t_interval_uses_student_t_with_n_minus_1_degrees_of_freedom():
  # mean 2, sample std 1, n = 3: t(0.975, 2) = 4.3027 -> 4.3027 / sqrt(3).
  assert math.isclose(results.mean_ci95([1.0, 2.0, 3.0], student_t=True)[1],
                      4.302653 / math.sqrt(3), rel_tol=1e-5)
  # Wider than the normal approximation for few seeds, close to it for many.
  five = np.array([8.1, 9.4, 7.2, 10.3, 6.9])
  assert (results.mean_ci95(five, student_t=True)[1]
          > 1.4 * 1.96 * five.std(ddof=1) / math.sqrt(5))
  many = np.random.default_rng(0).normal(size=1000)
  assert math.isclose(results.mean_ci95(many, student_t=True)[1],
                      1.96 * many.std(ddof=1) / math.sqrt(1000), rel_tol=0.01)
  assert math.isnan(results.mean_ci95([1.0], student_t=True)[1])


def test_normal_interval_over_tasks():
  mean, ci = results.mean_ci95([1.0, 2.0, 3.0, 4.0])
  assert mean == pytest.approx(2.5)
  assert ci == pytest.approx(1.96 * np.std([1, 2, 3, 4], ddof=1) / 2)
  assert results.mean_ci95([5.0]) == (5.0, 0.0)


def test_source_commit_names_the_checkout_and_its_local_changes(tmp_path):
  git = lambda *a, cwd=tmp_path: subprocess.run(["git", "-C", str(cwd), *a], check=True,
                                                capture_output=True, text=True).stdout.strip()
  assert results.source_commit(str(tmp_path)) is None  # not a checkout
  git("init", "-q")
  (tmp_path / "dfl2l_jax").mkdir()
  (tmp_path / "dfl2l_jax" / "m.py").write_text("x = 1\n")
  (tmp_path / "notes.md").write_text("a\n")
  git("add", ".")
  git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "c")
  head = git("rev-parse", "HEAD")
  assert results.source_commit(str(tmp_path)) == head
  (tmp_path / "notes.md").write_text("b\n")  # outside the code: still clean
  assert results.source_commit(str(tmp_path)) == head
  (tmp_path / "dfl2l_jax" / "m.py").write_text("x = 2\n")
  assert results.source_commit(str(tmp_path)) == head + "+dirty"
  # A folder inside some other repository is not our checkout.
  assert results.source_commit(str(tmp_path / "dfl2l_jax")) is None
  assert results.versions()["git"] == results.source_commit()
  # A run records the commit it started with (taken before training), not the tree's state
  # when it ends.
  assert results.versions(git="abc123+dirty")["git"] == "abc123+dirty"


def _record(rows, seed=0):
  return {"benchmark": "sinusoid", "metric": "mse", "seed": seed, "rows": rows,
          "runs": [{"launcher": "offline", "command": "c", "versions": {}}],
          "wall_seconds": 1.0, "versions": {}, "zoo_quality": None}


def _row(method, shots, mean, steps=20, run=0):
  r = results.row(method, shots, mean, 0.1, [mean])
  r.update(metatest={"steps": steps}, settings={}, run=run, launcher="offline")
  return r


def test_merge_replaces_only_rows_with_the_same_method_shots_and_settings():
  old = _record([_row("va", 5, 1.0), _row("dfl2l", 5, 2.0), _row("va", 5, 3.0, steps=7)])
  new = _record([_row("va", 5, 9.0), _row("maml", 5, 4.0)])
  merged = results.merge(old, new)
  got = [(r["method"], r["metatest"]["steps"], r["mean"], r["run"]) for r in merged["rows"]]
  assert got == [("va", 20, 9.0, 1), ("dfl2l", 20, 2.0, 0), ("va", 7, 3.0, 0),
                 ("maml", 20, 4.0, 1)]
  assert len(merged["runs"]) == 2
  assert results.merge(None, new) is new
  with pytest.raises(CheckpointError, match="seed"):
    results.merge(old, _record([], seed=1))


def test_a_failed_row_does_not_replace_an_earlier_result_but_fills_a_new_place():
  old = _record([_row("dfl2l", 5, 2.0), _row("va", 5, 1.0)])
  failed = [dict(results.failed_row(m, 5, "training diverged: x", {"steps": s}), run=0,
                 settings={})
            for m, s in (("dfl2l", 20), ("dfl2l", 7))]
  merged = results.merge(old, _record(failed + [_row("va", 5, 9.0)]))
  got = [(r["method"], r["metatest"]["steps"], r["mean"], r.get("failed")) for r in merged["rows"]]
  assert got == [("dfl2l", 20, 2.0, None), ("va", 20, 9.0, None),
                 ("dfl2l", 7, None, "training diverged: x")]
  md = results.to_markdown(merged)
  assert "| dfl2l | 5 | FAILED | training diverged: x |" in md
  # A later good row replaces a FAILED one.
  again = results.merge(merged, _record([_row("dfl2l", 5, 3.0, steps=7)]))
  assert [r["mean"] for r in again["rows"]] == [2.0, 9.0, 3.0]


def test_what_a_method_noted_is_shown_beside_its_rows():
  r = dict(_row("dfl2l", 5, 2.0), notes={"rate_scale": 0.25})
  assert "| dfl2l (rate_scale=0.25) | 5 | 2.0000 |" in results.to_markdown(_record([r]))
  # A screen shows its summary in the row, each model's score and fate below the table,
  # and a contaminated zoo says which models were replaced.
  screen = {"summary": "kept 2 of 3", "kept": [0, 2], "dropped": [1], "bar": 30.25,
            "scores": [40.0, 29.5, None]}
  rec = _record([dict(_row("zoo_features", 5, 2.0), notes={"screen": screen})])
  rec["zoo_quality"] = {"metric": "accuracy", "mean": 1.0, "min": 0.0, "max": 2.0,
                        "contamination": {"spec": "fake=0.3", "models": {"fake": [1]}}}
  md = results.to_markdown(rec)
  assert "| zoo_features (screen=kept 2 of 3) | 5 | 2.0000 |" in md
  assert ("zoo_features screen (kept 2 of 3; a model is kept if its meta-validation accuracy "
          "beats 30.2, the best untrained network's): dropped [1]; scores 0: 40.0, 1: 29.5, "
          "2: n/a.") in md
  assert "(config.zoo.contamination=fake=0.3): fake models [1]." in md
  screen["untrained_scores"] = [30.25, 21.0]  # recorded since; earlier records lack them
  md = results.to_markdown(rec)
  assert "2: n/a; untrained networks 30.2, 21.0." in md


def test_files_of_the_earlier_layout_are_upgraded_on_load(tmp_path):
  legacy = {"benchmark": "sinusoid", "metric": "mse", "seed": 0, "setting": "offline",
            "config": {"metatest": {"steps": 1000, "lr": 0.005, "batch_size": 100}},
            "rows": [results.row("va", 5, 1.0, 0.1, [1.0])], "wall_seconds": 2.0,
            "versions": {}}
  (tmp_path / "results.json").write_text(json.dumps(legacy))
  loaded = results.load(str(tmp_path))
  assert loaded["rows"][0]["metatest"] == {"lr": 0.005, "steps": 1000}
  assert loaded["runs"][0]["launcher"] == "offline"
  assert results.load(str(tmp_path / "nothing")) is None


def test_a_failed_write_leaves_the_earlier_files_and_no_temporaries(tmp_path, monkeypatch):
  workdir = str(tmp_path)
  results.write(workdir, _record([_row("va", 5, 1.0)]))
  before = {n: (tmp_path / n).read_bytes() for n in ("results.json", "results.md")}
  real_open = open

  def full_disk(path, mode="r", *a, **k):
    if str(path).endswith("results.md.tmp") and "w" in mode:
      raise OSError(errno.ENOSPC, "No space left on device", str(path))
    return real_open(path, mode, *a, **k)

  monkeypatch.setattr("builtins.open", full_disk)
  with pytest.raises(results.ResultsError, match="disk is full.*unchanged"):
    results.write(workdir, _record([_row("va", 5, 2.0)]))
  monkeypatch.undo()
  assert {n: (tmp_path / n).read_bytes() for n in before} == before
  assert sorted(os.listdir(workdir)) == ["results.json", "results.md"]


def test_markdown_names_each_rows_run_and_flags_failures():
  rec = _record([_row("va", 5, 1.0)])
  rec["rows"].append(dict(_row("dfl2l", 5, 0.0), mean=None, ci95=None,
                          failed="non-finite on 3 of 8 tasks"))
  rec["runs"][0]["command"] = "python -m launch.offline --config=configs/sinusoid.py:smoke"
  md = results.to_markdown(rec)
  assert "| va | 5 | 1.0000 | 0.1000 | 1 |  | 1 |" in md
  rec["rows"][0]["cost"] = {"networks": 1, "forward": 5105, "backward": 5000}
  assert "| va | 5 | 1.0000 | 0.1000 | 1 | 1 net, 5,105 fwd + 5,000 bwd | 1 |" in (
      results.to_markdown(rec))
  assert "| dfl2l | 5 | FAILED | non-finite on 3 of 8 tasks |" in md
  assert "configs/sinusoid.py:smoke" in md and "steps=20" in md
  assert "smoke" in md.split("Runs")[0]  # the table itself warns about a smoke run
  rec["rows"].append(dict(_row("maml", 5, 2.0), uses_task_data=True))
  md = results.to_markdown(rec)
  assert "| maml * | 5 | 2.0000 |" in md and "read the zoo tasks' training data" in md


def _zf_row(head, mean, run=0):
  """A zoo_features row made with image_head=`head`, settings as the pipeline records."""
  config = helpers.smoke_config(zoo_features__image_head=head)
  return dict(_row("zoo_features", 5, mean, run=run),
              settings=results.settings_of(config, "zoo_features"))


def test_a_row_is_keyed_by_the_settings_of_its_zoo_and_method():
  config = helpers.smoke_config()
  va, dfl2l, ties = (results.settings_of(config, m) for m in ("va", "dfl2l", "ties"))
  assert sorted(va) == ["model", "zoo"]  # sinusoid has no data section; va reads nothing
  assert va["zoo"]["steps"] == 200 and "chunk_steps" not in va["zoo"]
  assert dfl2l["fusion"]["gamma"] == 1.0 and "chunk_steps" not in dfl2l["fusion"]
  assert ties["fusion"] == {"sigma": 1.0} and ties["ties"]["density"] == config.ties.density
  # A recorded config (a dict) gives the same; the fields it lacks take their old values.
  assert results.settings_of(config.to_dict(), "dfl2l") == dfl2l
  recorded = config.to_dict()
  del recorded["fusion"]["rate_halvings"]
  assert results.settings_of(recorded, "dfl2l")["fusion"]["rate_halvings"] == 0
  assert sorted(results.settings_of(config, "zoo_features_logistic")) == ["model", "zoo"]


def test_a_changed_setting_of_a_method_adds_a_row_and_replaces_none():
  """Issue 31: zoo_features' image_head centroid -> select replaced the centroid rows,
  which were keyed by method, shots and meta-test settings only."""
  old = _record([_zf_row("centroid", 1.0), _row("va", 5, 3.0)])
  merged = results.merge(old, _record([_zf_row("select", 2.0)]))
  got = [(r["method"], (r.get("settings") or {}).get("zoo_features", {}).get("image_head"),
          r["mean"]) for r in merged["rows"]]
  assert got == [("zoo_features", "centroid", 1.0), ("va", None, 3.0),
                 ("zoo_features", "select", 2.0)]
  md = results.to_markdown(merged)
  assert "| zoo_features [zoo_features.image_head=centroid] | 5 | 1.0000 |" in md
  assert "| zoo_features [zoo_features.image_head=select] | 5 | 2.0000 |" in md
  assert "| va | 5 | 3.0000 |" in md
  assert "zoo_features [zoo_features.image_head=select]" in results.summary(merged, "w")
  # The same settings again replace their own row only.
  again = results.merge(merged, _record([_zf_row("select", 4.0)]))
  assert [r["mean"] for r in again["rows"]] == [1.0, 3.0, 4.0]


def test_rows_recorded_before_settings_get_those_of_their_run_or_stay_unknown(tmp_path):
  offline = helpers.smoke_config(zoo_features__image_head="centroid", ties__density=0.3)
  evaluate = helpers.smoke_config(zoo_features__image_head="select", ties__density=0.5)
  old = _record([_row("ties", 5, 1.0), _row("ties", 5, 2.0, steps=7, run=1),
                 _row("zoo_features", 5, 3.0, run=1), _row("va", 5, 4.0, steps=7, run=1)])
  old["runs"] = [{"launcher": "offline", "config": offline.to_dict(), "methods": ["ties"]},
                 {"launcher": "evaluate", "config": evaluate.to_dict(),
                  "methods": ["ties", "va", "zoo_features"]}]
  for r in old["rows"]:
    del r["settings"]  # recorded before rows kept them
  (tmp_path / "results.json").write_text(json.dumps(old))
  rows = results.load(str(tmp_path))["rows"]
  # ties' saved initialisation was made by the offline run, zoo_features (a learner) was
  # rebuilt by evaluate itself; va's initialisation came from no run recorded here.
  assert [r["settings"]["ties"]["density"] for r in rows[:2]] == [0.3, 0.3]
  assert rows[2]["settings"]["zoo_features"]["image_head"] == "select"
  assert rows[3]["settings"] is None
  assert results.saved_init_settings({"rows": rows, "runs": old["runs"]}, "ties") == (
      rows[0]["settings"])
  # A row of unknown settings is never replaced: the new one is added beside it.
  va = dict(_row("va", 5, 5.0, steps=7), settings=results.settings_of(offline, "va"))
  merged = results.merge({**old, "rows": rows}, _record([va]))
  assert [r["mean"] for r in merged["rows"] if r["method"] == "va"] == [4.0, 5.0]
  assert "| va [settings unknown] | 5 | 4.0000 |" in results.to_markdown(merged)


@pytest.mark.parametrize("change, problem", [
    (lambda rec: rec["rows"][0].pop("method"), "row 0 has no 'method' name"),
    (lambda rec: rec["rows"][0].update(shots="5"), r"row 0 \(va\) has no whole number of "
                                                   r"'shots' \('5'\)"),
    (lambda rec: rec["rows"][0].update(per_task=["1.0"]),
     r"row 0 \(va\) has 'per_task' values that are not"),
    (lambda rec: rec["rows"][0].update(run=3),
     r"row 0 \(va\) names run 3, which the file does not list"),
    (lambda rec: rec.update(rows={"va": 1}), "its top level is not an object with a list of rows"),
])
def test_a_results_file_with_a_malformed_row_is_refused_naming_it(tmp_path, change, problem):
  record = _record([_row("va", 5, 1.0)])
  change(record)
  (tmp_path / "results.json").write_text(json.dumps(record))
  with pytest.raises(CheckpointError, match=f"results.json is not a results file this "
                     f"version can add to: {problem}"):
    results.load(str(tmp_path))


def test_a_kill_between_the_two_renames_leaves_a_table_that_says_it_is_stale(tmp_path,
                                                                            monkeypatch, caplog):
  """results.json was renamed into place, then the process died before results.md was:
  a reader had no way to tell that results.md (and results.md.tmp) did not show it."""
  workdir = str(tmp_path)
  results.write(workdir, _record([_row("va", 5, 1.0)]))
  assert results.stale_markdown(workdir) is None
  real_replace = os.replace

  def killed_after_the_first(src, dst):
    if src.endswith("results.md.tmp"):
      raise KeyboardInterrupt  # the process ends here
    real_replace(src, dst)
  monkeypatch.setattr(os, "replace", killed_after_the_first)
  with pytest.raises(KeyboardInterrupt):
    results.write(workdir, _record([_row("va", 5, 2.0)]))
  monkeypatch.undo()
  assert results.load(workdir)["rows"][0]["mean"] == 2.0
  with open(os.path.join(workdir, "results.md")) as f:
    assert "| va | 5 | 1.0000 |" in f.read()
  warning = results.stale_markdown(workdir)
  assert "results.md is older than" in warning and "next run" in warning
  with caplog.at_level("WARNING", logger="dfl2l_jax"):
    results.load(workdir)
  assert any("results.md is older than" in r.getMessage() for r in caplog.records)
  results.write(workdir, results.load(workdir))  # the next run writes both again
  assert results.stale_markdown(workdir) is None
  assert sorted(os.listdir(workdir)) == ["results.json", "results.md"]
