"""scripts/paired_runs.py: per-seed paired differences between two sets of runs."""

import json

import pytest

from tests import helpers

paired = helpers.load_script("paired_runs")


def _write(path, seed, rows):
  path.write_text(json.dumps({"seed": seed, "benchmark": "b", "metric": "accuracy", "rows": [
      {"method": m, "shots": k, "per_task": v} for (m, k), v in rows.items()]}))
  return str(path)


def test_differences_are_paired_by_seed_and_task(tmp_path):
  before = [_write(tmp_path / "b1.json", 1, {("zf", 5): [50.0, 40.0, 30.0]}),
            _write(tmp_path / "b2.json", 2, {("zf", 5): [20.0, 20.0, 20.0, 99.0]})]
  after = [_write(tmp_path / "a2.json", 2, {("zf", 5): [21.0, 22.0, 23.0]}),
           _write(tmp_path / "a1.json", 1, {("zf", 5): [49.0, 39.0, 29.0], ("va", 5): [1.0]})]
  with pytest.raises(SystemExit, match="4 tasks before and 3 after; pass --first-tasks"):
    paired.table(paired.by_seed(before, "before"), paired.by_seed(after, "after"))
  text = paired.table(paired.by_seed(before, "before"), paired.by_seed(after, "after"),
                      first_tasks=3, label="fake")
  # seed 1: -1, seed 2: +2 -> mean +0.5, t(1) 12.706 * sd 2.121 / sqrt 2 = 19.1
  assert "| zf | 5 | 30.0 | 30.5 | +0.5 ± 19.1 | 1: -1.0, 2: +2.0 |" in text
  assert "va" not in text  # only on one side
  with pytest.raises(SystemExit, match="seed 1 twice"):
    paired.by_seed(before + before[:1], "before")
  with pytest.raises(SystemExit, match="no seed on both sides"):
    paired.table(paired.by_seed(before[:1], "before"), paired.by_seed(after[:1], "after"))


def test_the_screen_report_counts_bad_and_good_models_dropped_and_kept(tmp_path):
  screen = helpers.load_script("screen_report")
  path = tmp_path / "r.json"
  path.write_text(json.dumps({
      "seed": 2, "benchmark": "b", "metric": "accuracy",
      "zoo_quality": {"contamination": {"spec": "fake=0.4", "models": {"fake": [1, 3]}}},
      "rows": [{"method": "zoo_features", "shots": s, "notes": {"screen": {
          "kept": [0, 3, 4], "dropped": [1, 2], "bar": 35.06}}} for s in (1, 5)]}))
  assert screen.report(str(path)) == [
      f"| {path} | 2 | fake=0.4 | zoo_features | 3 of 5 | 1 of 2 | 1 | 1 of 3 | 35.1 |"]
  path.write_text(json.dumps({"seed": 1, "benchmark": "b", "metric": "accuracy",
                              "rows": [{"method": "va", "shots": 1}]}))
  with pytest.raises(SystemExit, match="no row carries a screen's record"):
    screen.report(str(path))
