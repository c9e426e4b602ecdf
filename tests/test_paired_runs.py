"""scripts/paired_runs.py: per-seed paired differences between two sets of runs."""

import json

import pytest

from tests import helpers

paired = helpers.load_script("paired_runs")


def _write(path, seed, rows):
  path.write_text(json.dumps({"seed": seed, "rows": [
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
