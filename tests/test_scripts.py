"""scripts/image_tables.sh (its flags must name real config fields; no data needed) and
scripts/compare_inits.py."""

import importlib
import os
import shlex
import subprocess
import sys

import numpy as np
import pytest

from dfl2l_jax import checkpointing
from tests import helpers

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "scripts", "image_tables.sh")


def _run(*args, **env):
  return subprocess.run(["bash", SCRIPT, *args], cwd=REPO, capture_output=True, text=True,
                        env={**os.environ, "PYTHON": sys.executable, **env})


def _dry_run(*args):
  return _run(*args, DRY_RUN="1")


@pytest.mark.parametrize("setting", [  # each a new process: the 10-shot ones with the slow
    "cf5", pytest.param("cf10", marks=pytest.mark.slow), "mi5",
    pytest.param("mi10", marks=pytest.mark.slow)])
def test_image_tables_overrides_name_config_fields(setting):
  out = _dry_run(setting, "3", "va", "maml")
  assert out.returncode == 0, out.stderr
  commands = out.stdout.strip().splitlines()
  assert len(commands) == 2
  argv = shlex.split(commands[1])
  assert argv[:3] == ["python", "-m", "launch.offline"]
  flags = dict(a[2:].split("=", 1) for a in argv[3:])
  module, _, variant = flags.pop("config").partition(":")
  config = importlib.import_module(module[:-3].replace("/", ".")).get_config(variant)
  for name, value in flags.items():
    if not name.startswith("config."):
      continue
    node = config
    *parents, leaf = name.split(".")[1:]
    for p in parents:
      node = node[p]
    assert leaf in node, f"{setting}: --{name} is not a config field"
    old = node[leaf]
    if isinstance(old, (int, float)) and not isinstance(old, bool):
      type(old)(value)  # raises on a value of the wrong type
  assert flags["config.seed"] == "3" and flags["config.methods"] == "maml"
  assert flags["workdir"].endswith(f"{setting}_seed3")
  # The reduced scale of the results pages is the config's `reduced` variant.
  assert variant == ("proxy,reduced" if setting.startswith("cf") else "reduced")


@pytest.mark.parametrize("args,message", [
    (("cf7", "1"), "unknown SETTING"),
    (("cf5", "one"), "SEED must be"),
    (("mi5", "1", "vaa"), "unknown method"),
])
def test_image_tables_rejects_bad_arguments(args, message):
  out = _dry_run(*args)
  assert out.returncode == 2 and message in out.stderr


def test_image_tables_runs_every_registered_method_by_default():
  from dfl2l_jax import methods  # pylint: disable=g-import-not-at-top
  out = _dry_run("cf5", "1")
  assert out.returncode == 0, out.stderr
  named = [a.split("=", 1)[1] for a in shlex.split(out.stdout) if a.startswith("--config.methods=")]
  assert named == list(methods.METHODS)


def test_image_tables_needs_data_named_by_the_environment(tmp_path):
  out = _run("cf5", "1", "va", DATA="", WORKROOT=str(tmp_path / "w"))
  assert out.returncode == 2 and "DATA is not set" in out.stderr
  assert not (tmp_path / "w").exists()
  dry = _run("mi5", "1", "va", DRY_RUN="1", DATA="")
  assert dry.returncode == 0, dry.stderr
  assert "--config.data.manual_dir=$DATA " in dry.stdout


def test_image_tables_refuses_a_missing_data_folder(tmp_path):
  out = _run("cf5", "1", "va", DATA=str(tmp_path / "nope"), WORKROOT=str(tmp_path / "w"))
  assert out.returncode == 2 and "is not a folder" in out.stderr
  assert not (tmp_path / "w").exists()


def test_compare_inits_reports_the_difference(tmp_path, capsys):
  tree = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.ones(3, np.float32)}
  moved = {"w": tree["w"].copy(), "b": tree["b"].copy()}
  moved["w"][1, 2] += 0.5  # 5.0 -> 5.5: one entry, relative 0.5 / 5
  checkpointing.save_tree(str(tmp_path / "inits" / "va"), tree)
  checkpointing.save_tree(str(tmp_path / "inits" / "ota"), moved)
  helpers.load_script("compare_inits").main([str(tmp_path)])
  row = capsys.readouterr().out.strip().splitlines()[-1]
  assert row == f"| {tmp_path} | 0.5 | 0.1 | 1 of 9 |"


def test_compare_inits_names_a_missing_method_or_a_shape_mismatch(tmp_path):
  script = helpers.load_script("compare_inits")
  checkpointing.save_tree(str(tmp_path / "inits" / "va"), {"w": np.zeros((2, 3), np.float32)})
  with pytest.raises(SystemExit, match="no saved initialisation at .*inits/ota"):
    script.main([str(tmp_path)])
  checkpointing.save_tree(str(tmp_path / "inits" / "ota"), {"w": np.zeros((3, 2), np.float32)})
  with pytest.raises(SystemExit, match=r"\['w'\] has shapes \(2, 3\) and \(3, 2\)"):
    script.main([str(tmp_path)])
  with pytest.raises(SystemExit, match="exactly two names"):
    script.main(["--methods", "va", str(tmp_path)])


def test_zoo_agreement_cka_is_the_feature_space_formula_and_ignores_rotation():
  cka = helpers.load_script("zoo_agreement").linear_cka
  rng = np.random.default_rng(0)
  a, b = rng.normal(size=(2, 12, 6))
  rotation, _ = np.linalg.qr(rng.normal(size=(6, 6)))
  f = np.stack([a, 3.0 * a @ rotation, b]).astype(np.float32)
  got = np.asarray(cka(f))
  centred = f - f.mean(1, keepdims=True)
  # Kornblith et al. (2019), eq. 5 in feature space: |Y^T X|^2 / (|X^T X| |Y^T Y|).
  ref = np.array([[np.linalg.norm(y.T @ x) ** 2 / (np.linalg.norm(x.T @ x) *
                                                   np.linalg.norm(y.T @ y))
                   for y in centred] for x in centred])
  np.testing.assert_allclose(got, ref, rtol=1e-4)
  np.testing.assert_allclose(got[0, 1], 1.0, rtol=1e-5)
  assert got[0, 2] < 0.9
