"""The run record: intervals over seeds and what produced a run (dfl2l_jax/results.py)."""

import math
import subprocess

import numpy as np

from dfl2l_jax import results


def test_t_interval_uses_student_t_with_n_minus_1_degrees_of_freedom():
  # mean 2, sample std 1, n = 3: t(0.975, 2) = 4.3027 -> 4.3027 / sqrt(3).
  assert math.isclose(results.t_interval95([1.0, 2.0, 3.0]), 4.302653 / math.sqrt(3),
                      rel_tol=1e-5)
  # Wider than the normal approximation for few seeds, close to it for many.
  five = np.array([8.1, 9.4, 7.2, 10.3, 6.9])
  assert results.t_interval95(five) > 1.4 * 1.96 * five.std(ddof=1) / math.sqrt(5)
  many = np.random.default_rng(0).normal(size=1000)
  assert math.isclose(results.t_interval95(many), 1.96 * many.std(ddof=1) / math.sqrt(1000),
                      rel_tol=0.01)
  assert math.isnan(results.t_interval95([1.0]))


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
