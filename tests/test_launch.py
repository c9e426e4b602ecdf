"""The launchers as a user meets them: help, method list, dry run, one-line errors."""

import errno
import os

import pytest

from dfl2l_jax import methods
from launch import common
from tests import helpers

SMOKE = "--config=configs/sinusoid.py:smoke"


def test_help_shows_the_main_flags_and_the_method_list_names_every_method():
  out = helpers.launch("launch.offline", "--help")
  for flag in ("--config:", "--workdir:", "dry_run:", "list_methods:"):
    assert flag in out.stdout, out.stdout
  out = helpers.launch("launch.offline", "--list_methods")
  assert out.returncode == 0
  for name in methods.METHODS:
    assert f"  {name} " in out.stdout
  assert "maml" in [ln.split()[0] for ln in out.stdout.splitlines()
                    if "reads the zoo tasks' data" in ln]


@pytest.mark.parametrize("args,message", [
    (("--config.fusion.gama=0.5",), "did you mean --config.fusion.gamma?"),
    (("--config.model.hidden=(0,)",), "config.model.hidden must be"),
    (("--config.seed=abc",), "--config.seed=abc: invalid literal"),
])
def test_bad_flags_end_in_one_error_line_and_exit_1(tmp_path, args, message):
  out = helpers.launch("launch.offline", SMOKE, f"--workdir={tmp_path / 'w'}", *args)
  assert out.returncode == 1
  assert out.stderr.strip().splitlines() == [out.stderr.strip()], out.stderr
  assert out.stderr.startswith("error: ") and message in out.stderr, out.stderr
  assert not os.path.exists(tmp_path / "w")


def test_bad_config_paths_variants_and_workdirs_end_in_one_error_line(tmp_path):
  afile = tmp_path / "a_file"
  afile.write_text("x")
  for args, message in [
      (("--config=configs/nope.py", f"--workdir={tmp_path}"), "configs/nope.py"),
      (("--config=configs/sinusoid.py:bad", f"--workdir={tmp_path}"), "unknown variant 'bad'"),
      ((SMOKE, f"--workdir={afile}"), "is a file, not a folder"),
      ((SMOKE,), "--workdir is required")]:
    out = helpers.launch("launch.offline", *args)
    assert out.returncode == 1, out.stderr
    assert out.stderr.startswith("error: ") and message in out.stderr, out.stderr
    assert "Traceback" not in out.stderr


def test_dry_run_checks_and_describes_without_creating_anything(tmp_path):
  workdir = tmp_path / "w"
  out = helpers.launch("launch.online", SMOKE, f"--workdir={workdir}", "--dry_run")
  assert out.returncode == 0, out.stderr
  assert "dfl2l_online" in out.stdout and "does not exist yet" in out.stdout
  assert not workdir.exists()
  out = helpers.launch("launch.online", SMOKE, "--dry_run", "--config.methods=all")
  assert out.returncode == 0 and all(f"  {m} " in out.stdout for m in methods.METHODS)


def test_a_full_disk_deep_inside_a_library_error_is_found():
  try:
    try:
      raise OSError(errno.ENOSPC, "No space left on device", "/w/zoo/3/d")
    except OSError as inner:
      raise RuntimeError("orbax failed to write") from inner
  except RuntimeError as outer:
    found = common._os_error(outer)  # pylint: disable=protected-access
  assert found == (errno.ENOSPC, "No space left on device", "/w/zoo/3/d")
  assert common._os_error(RuntimeError("a bug")) is None  # pylint: disable=protected-access
  # tensorstore's write errors, as orbax raises them, carry the OS error as text.
  orbax = ValueError('RESOURCE_EXHAUSTED: Error writing "w/0" in OCDBT database at local file '
                     '"/w/zoo/50.orbax-checkpoint-tmp/": Failed to write 444731 bytes to file '
                     "14: No space left on device [os_error_code='28']")
  found = common._os_error(orbax)  # pylint: disable=protected-access
  assert found == (errno.ENOSPC, os.strerror(errno.ENOSPC), None)
