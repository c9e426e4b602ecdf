"""End-to-end tests of the sinusoid pipeline on the smoke config (seconds each)."""

import dataclasses
import gc
import json
import os
import shutil
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dfl2l_jax import checkpointing
from dfl2l_jax import loops
from dfl2l_jax import pipeline
from dfl2l_jax import zoo as zoo_lib
from dfl2l_jax.errors import (CheckpointError, ConfigError, Dfl2lError, NotApplicable,
                              ZooError)
from tests import helpers

# One xdist worker runs this file (`-n 2 --dist loadfile`): its tests share the module's
# finished run and compiled programs, which a second worker would compute again.

ALL = "dfl2l,dfl2l_online,va,finetune"


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("run"))
  results = pipeline.run(helpers.smoke_config(methods=ALL), workdir, "offline")
  return workdir, results


def _per_task(results):
  return {(r["method"], r["shots"]): r["per_task"] for r in results["rows"]}


def test_results_json_has_the_promised_schema(finished_run):
  workdir, _ = finished_run
  with open(os.path.join(workdir, "results.json")) as f:
    res = json.load(f)
  assert res["benchmark"] == "sinusoid" and res["metric"] == "mse" and res["seed"] == 0
  assert isinstance(res["config"], dict) and res["wall_seconds"] > 0
  assert {"jax", "flax", "optax"} <= set(res["versions"])
  got = {(r["method"], r["shots"]) for r in res["rows"]}
  assert got == {(m, s) for m in ALL.split(",") for s in (5, 10)}
  assert len(res["runs"]) == 1 and res["runs"][0]["launcher"] == "offline"
  assert res["runs"][0]["versions"]["device_count"] == 4
  assert res["runs"][0]["mesh"] == {"models": 4, "tasks": 4}
  events = os.listdir(os.path.join(workdir, "tensorboard"))  # the curves for TensorBoard too
  assert any(name.startswith("events.out.tfevents") for name in events), events
  for r in res["rows"]:
    assert set(r) == {"method", "shots", "mean", "ci95", "n_tasks", "per_task", "metatest",
                      "settings", "run", "launcher", "cost"}
    assert r["settings"]["zoo"]["steps"] == 200
    assert ("fusion" in r["settings"]) == r["method"].startswith("dfl2l")
    # Algorithm 3's cost (fixed-rate SGD here): 20 steps on the K support points, then the
    # 100 query points (and the support points once more).
    assert r["cost"] == {"networks": 1, "forward": 20 * r["shots"] + 100 + r["shots"],
                         "backward": 20 * r["shots"]}
    assert r["metatest"]["steps"] == 20 and r["run"] == 0
    assert r["n_tasks"] == len(r["per_task"]) == 8
    assert r["mean"] == pytest.approx(np.mean(r["per_task"]))
    assert r["ci95"] > 0
  assert os.path.exists(os.path.join(workdir, "results.md"))
  for m in ALL.split(","):
    assert os.path.isdir(os.path.join(workdir, "inits", m))
  assert 0 < res["zoo_quality"]["mean"] < 10


class _Interrupt(Exception):
  pass


def _interrupt_at(phase, step):
  def hook(name, at):
    if name == phase and at == step:
      raise _Interrupt(f"{name}@{at}")
  return hook


@pytest.mark.parametrize("phase,step", [("zoo", 100), ("dfl2l", 10), ("dfl2l_online", 5)])
def test_interrupted_run_resumes_to_identical_results(finished_run, tmp_path, phase, step):
  _, reference = finished_run
  workdir = str(tmp_path / "w")
  config = helpers.smoke_config(methods=ALL)
  with pytest.raises(_Interrupt):
    pipeline.run(config, workdir, "offline", hooks=_interrupt_at(phase, step))
  assert not os.path.exists(os.path.join(workdir, "results.json"))
  resumed = pipeline.run(config, workdir, "offline")
  assert _per_task(resumed) == _per_task(reference)


def test_evaluate_reproduces_the_run(finished_run, tmp_path):
  workdir = str(tmp_path / "w")
  shutil.copytree(finished_run[0], workdir)
  again = pipeline.evaluate(helpers.smoke_config(), workdir)
  assert _per_task(again) == _per_task(finished_run[1])


def test_zoo_of_another_architecture_is_rejected(finished_run, tmp_path):
  workdir = str(tmp_path / "w")
  shutil.copytree(finished_run[0], workdir)
  with pytest.raises(CheckpointError, match=r"zoo.*model\.hidden|hidden"):
    pipeline.run(helpers.smoke_config(model__hidden=(40, 40)), workdir, "offline")
  with pytest.raises(CheckpointError, match="zoo.steps"):
    pipeline.run(helpers.smoke_config(zoo__steps=150), workdir, "offline")


# Sometimes (2 of 4 runs here), after restoring truncated files fails, orbax's pending reads
# call back into its closed asyncio loop and Python reports "Event loop is closed" as unraisable
# exceptions, after our CheckpointError: noise from orbax. They are ignored in this test and
# collected before it ends, so that they are not blamed on the next test.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_truncated_zoo_checkpoint_is_reported(finished_run, tmp_path):
  workdir = str(tmp_path / "w")
  shutil.copytree(finished_run[0], workdir)
  zoo_dir = os.path.join(workdir, "zoo")
  last = max(int(d) for d in os.listdir(zoo_dir) if d.isdigit())
  for root, _, files in os.walk(os.path.join(zoo_dir, str(last))):
    if os.path.basename(root) == "d":
      for f in files:
        with open(os.path.join(root, f), "r+b") as fh:
          fh.truncate(10)
  before = _files(workdir, "results.json", "results.md")
  with pytest.raises(CheckpointError, match="truncated or corrupt"):
    pipeline.run(helpers.smoke_config(), workdir, "offline")
  assert _files(workdir, "results.json", "results.md") == before
  for _ in range(20):  # let the failed reads' callbacks fire while this test is running
    gc.collect()
    time.sleep(0.05)


def test_nan_in_a_zoo_model_is_named():
  zoo = {"Dense_0": {"kernel": jnp.ones((5, 2, 3)), "bias": jnp.zeros((5, 3))}}
  zoo["Dense_0"]["bias"] = zoo["Dense_0"]["bias"].at[3, 1].set(jnp.nan)
  with pytest.raises(ZooError, match=r"zoo model 3 .*bias"):
    zoo_lib.check_finite(zoo)
  zoo_lib.check_finite({"w": jnp.ones((2, 2))})


def test_diverging_zoo_training_is_reported(tmp_path):
  with pytest.raises(Dfl2lError, match="zoo"):
    pipeline.run(helpers.smoke_config(zoo__lr=1e9, zoo__optimizer="sgd"),
                 str(tmp_path / "w"), "offline")
  assert not os.path.exists(str(tmp_path / "w" / "results.json"))


@pytest.mark.parametrize("field,value,match", [
    ("zoo__lr", -1.0, "zoo.lr"),
    ("fusion__outer_lr", 0.0, "fusion.outer_lr"),
    ("fusion__inner_steps", 0, "fusion.inner_steps"),
    ("fusion__epochs", -2, "fusion.epochs"),
    ("metatest__steps", 0, "metatest.steps"),
    ("fusion__sigma", float("nan"), "fusion.sigma"),
    ("zoo__val_fraction", 1.0, "val_fraction"),
    ("shots", (5, 500), "shots"),
    ("shots", (), "shots"),
    ("methods", "dfl2l,nope", "unknown method 'nope'"),
    ("zoo__optimizer", "rmsprop", "zoo.optimizer"),
])
def test_bad_config_values_are_rejected_before_any_work(tmp_path, field, value, match):
  workdir = str(tmp_path / "w")
  with pytest.raises(ConfigError, match=match):
    pipeline.run(helpers.smoke_config(**{field: value}), workdir, "offline")
  assert not os.path.exists(os.path.join(workdir, "zoo"))



def test_launcher_rejects_unknown_keys_and_bad_values(tmp_path):
  workdir = str(tmp_path / "w")
  cfg = "--config=configs/sinusoid.py:smoke"
  out = helpers.launch("launch.offline", cfg, f"--workdir={workdir}", "--config.fusion.gama=0.5")
  assert out.returncode != 0 and "gama" in out.stderr
  out = helpers.launch("launch.offline", cfg, f"--workdir={workdir}", "--config.metatest.lr=-0.1")
  assert out.returncode == 1 and "error: config.metatest.lr" in out.stderr
  assert not os.path.exists(os.path.join(workdir, "results.json"))


@pytest.mark.slow
def test_launcher_runs_end_to_end(tmp_path):
  workdir = str(tmp_path / "w")
  out = helpers.launch("launch.online", "--config=configs/sinusoid.py:smoke", f"--workdir={workdir}",
                "--config.seed=3", "--config.fusion.gamma=0.5")
  assert out.returncode == 0, out.stderr[-3000:]
  with open(os.path.join(workdir, "results.json")) as f:
    res = json.load(f)
  assert res["seed"] == 3 and res["config"]["fusion"]["gamma"] == 0.5
  assert {r["method"] for r in res["rows"]} == {"dfl2l_online", "finetune"}
  assert "ETA" in out.stderr
  assert "dfl2l_online" in out.stdout and "results.md" in out.stdout  # the summary


@pytest.mark.slow  # two launcher processes
def test_pretrain_then_evaluate_without_inits_fails_cleanly(tmp_path):
  workdir = str(tmp_path / "w")
  short = ("--config=configs/sinusoid.py:smoke", "--config.zoo.steps=20",
           "--config.zoo.chunk_steps=10", f"--workdir={workdir}")
  out = helpers.launch("launch.pretrain", *short)
  assert out.returncode == 0, out.stderr[-3000:]
  assert os.path.exists(os.path.join(workdir, "zoo", "20"))
  out = helpers.launch("launch.evaluate", *short)
  assert out.returncode == 1 and "no saved initialisations" in out.stderr


def test_evaluate_refuses_an_unfinished_zoo(tmp_path):
  workdir = str(tmp_path / "w")
  with pytest.raises(_Interrupt):
    pipeline.run(helpers.smoke_config(), workdir, "offline", hooks=_interrupt_at("zoo", 50))
  with pytest.raises(CheckpointError, match="unfinished"):
    pipeline.evaluate(helpers.smoke_config(), workdir)


@pytest.mark.slow
def test_sensitivity_grid_reproduces_the_run_at_its_own_gamma_and_k(finished_run, tmp_path,
                                                                    capsys):
  """scripts/sensitivity.py refits DFL2L on the run's zoo per (gamma, K): at the run's own
  values (gamma 1, K 1) it must give the run's dfl2l numbers, and its VA the run's VA."""
  workdir, results = finished_run
  script = helpers.load_script("sensitivity")
  out = str(tmp_path / "sens")
  script.main(["--gammas", "1,10", "--ks", "1,2", "--out", out, workdir])
  with open(out + ".json") as f:
    cells = json.load(f)["cells"]
  assert set(cells) == {"seed=0 va"} | {f"seed=0 gamma={g} K={k}" for g in (1, 10) for k in (1, 2)}
  run = _per_task(results)
  for key, method in (("seed=0 gamma=1 K=1", "dfl2l"), ("seed=0 va", "va")):
    for row in cells[key]:
      np.testing.assert_allclose(row["per_task"], run[(method, row["shots"])], rtol=1e-5)
  # One DRO step starts at e' = e, where the transport cost has zero gradient: gamma cannot
  # act at K = 1 (results/sensitivity.md). From K = 2 on it does.
  assert cells["seed=0 gamma=10 K=1"] == cells["seed=0 gamma=1 K=1"]
  assert cells["seed=0 gamma=10 K=2"][0]["per_task"] != cells["seed=0 gamma=1 K=2"][0]["per_task"]
  text = open(out + ".md").read()
  assert "| 10 | 2 | 5 |" in text and "va at 5 shots:" in text
  # Rerunning with one more K computes only the new cell.
  before = dict(cells)
  script.main(["--gammas", "1", "--ks", "1,2,3", "--out", out, workdir])
  with open(out + ".json") as f:
    cells = json.load(f)["cells"]
  assert set(cells) - set(before) == {"seed=0 gamma=1 K=3"}
  assert all(cells[k] == before[k] for k in before)
  capsys.readouterr()


def _files(workdir, *names):
  out = {}
  for n in names:
    with open(os.path.join(workdir, n), "rb") as f:
      out[n] = f.read()
  return out


def test_a_refused_run_leaves_the_results_untouched(finished_run, tmp_path):
  workdir = str(tmp_path / "w")
  shutil.copytree(finished_run[0], workdir)
  before = _files(workdir, "results.json", "results.md")
  with pytest.raises(CheckpointError, match="seed"):
    pipeline.run(helpers.smoke_config(seed=3), workdir, "offline")
  with pytest.raises(CheckpointError, match="zoo.steps"):
    pipeline.evaluate(helpers.smoke_config(zoo__steps=150), workdir)
  assert _files(workdir, "results.json", "results.md") == before


def test_runs_with_other_methods_or_settings_add_rows_and_keep_the_others(finished_run,
                                                                          tmp_path):
  workdir = str(tmp_path / "w")
  shutil.copytree(finished_run[0], workdir)
  first = _per_task(finished_run[1])
  pipeline.run(helpers.smoke_config(methods="finetune"), workdir, "offline",
               command="python -m launch.offline --config.methods=finetune")
  out = pipeline.evaluate(helpers.smoke_config(metatest__steps=7), workdir,
                          command="python -m launch.evaluate --config.metatest.steps=7")
  rows = out["rows"]
  # The first run's rows are all still there, finetune's recomputed to the same values.
  steps20 = {(r["method"], r["shots"]): r["per_task"] for r in rows
             if r["metatest"]["steps"] == 20}
  assert steps20 == first
  assert {r["run"] for r in rows if r["method"] == "finetune" and
          r["metatest"]["steps"] == 20} == {1}
  steps7 = {(r["method"], r["shots"]) for r in rows if r["metatest"]["steps"] == 7}
  assert steps7 == set(first)  # every saved init, at the new settings
  assert [r["launcher"] for r in out["runs"]] == ["offline", "offline", "evaluate"]
  with open(os.path.join(workdir, "results.md")) as f:
    md = f.read()
  assert "--config.metatest.steps=7" in md and "steps=7" in md and "steps=20" in md
  assert md.count("| dfl2l | 5 |") == 2


def test_a_diverging_meta_test_fails_the_run_and_marks_its_rows(finished_run, tmp_path):
  workdir = str(tmp_path / "w")
  shutil.copytree(finished_run[0], workdir)
  # Fixed-rate SGD at an absurd rate diverges (the bounded step would not).
  with pytest.raises(pipeline.MetaTestError, match=r"va at 5 shots.*metatest.lr"):
    pipeline.evaluate(helpers.smoke_config(methods="va", metatest__lr=1e6,
                                           metatest__step_bound=0.0), workdir)
  with open(os.path.join(workdir, "results.json")) as f:
    res = json.load(f)
  failed = [r for r in res["rows"] if r.get("failed")]
  assert {(r["method"], r["shots"]) for r in failed} == {("va", 5), ("va", 10)}
  assert all(r["mean"] is None for r in failed)
  assert len(res["rows"]) == len(finished_run[1]["rows"]) + 2  # the good rows kept


def test_a_method_diverging_in_training_costs_no_other_rows(finished_run, tmp_path):
  workdir = str(tmp_path / "w")
  shutil.copytree(finished_run[0], workdir)
  shutil.rmtree(os.path.join(workdir, "fusion", "dfl2l"))  # refit, at absurd rates
  absurd = {f"fusion__{k}": 1e4 for k in ("inner_lr", "outer_lr", "dro_lr", "embed_lr")}
  with pytest.raises(loops.DivergenceError, match=r"dfl2l: .*non-finite.* The other "
                     r"methods' rows were written"):
    pipeline.run(helpers.smoke_config(methods="dfl2l,va", metatest__steps=7,
                                      fusion__rate_halvings=0, **absurd), workdir)
  with open(os.path.join(workdir, "results.json")) as f:
    res = json.load(f)
  rows = {(r["method"], r["shots"], r["metatest"]["steps"]): r for r in res["rows"]}
  for shots in (5, 10):
    assert rows["va", shots, 7]["mean"] > 0  # va ran after dfl2l failed
    assert rows["dfl2l", shots, 7]["failed"].startswith("training diverged: dfl2l:")
    assert rows["dfl2l", shots, 20]["per_task"] == _per_task(finished_run[1])["dfl2l", shots]
  # The saved initialisation is the finished run's; evaluating it later replaces the FAILED
  # rows, and what the method noted when it ran stays with its rows.
  for r in res["rows"]:
    if r["method"] == "dfl2l" and r["metatest"]["steps"] == 20:
      r["notes"] = {"rate_scale": 0.5}
  with open(os.path.join(workdir, "results.json"), "w") as f:
    json.dump(res, f)
  out = pipeline.evaluate(helpers.smoke_config(methods="dfl2l", metatest__steps=7), workdir)
  rows = {(r["method"], r["shots"], r["metatest"]["steps"]): r for r in out["rows"]}
  assert all(rows["dfl2l", s, 7]["mean"] > 0 and not rows["dfl2l", s, 7].get("failed")
             and rows["dfl2l", s, 7]["notes"] == {"rate_scale": 0.5} for s in (5, 10))


def test_evaluate_refuses_a_non_finite_saved_initialisation(finished_run, tmp_path):
  from dfl2l_jax import checkpointing  # pylint: disable=g-import-not-at-top
  workdir = str(tmp_path / "w")
  shutil.copytree(finished_run[0], workdir)
  init_dir = os.path.join(workdir, "inits", "va")
  theta = jax.tree.map(np.array, checkpointing.load_tree(init_dir, None))
  theta["Dense_0"]["bias"][0] = np.nan
  checkpointing.save_tree(init_dir, theta)
  before = _files(workdir, "results.json")
  with pytest.raises(CheckpointError, match="initialisation of va.*not finite"):
    pipeline.evaluate(helpers.smoke_config(methods="va"), workdir)
  assert _files(workdir, "results.json") == before


def test_an_unreadable_results_file_is_refused_before_any_work(finished_run, tmp_path):
  workdir = str(tmp_path / "w")
  shutil.copytree(finished_run[0], workdir)
  with open(os.path.join(workdir, "results.json"), "w") as f:
    f.write('{"rows": [')
  with pytest.raises(CheckpointError, match="results.json is unreadable"):
    pipeline.evaluate(helpers.smoke_config(), workdir)


def test_a_malformed_row_of_the_results_file_is_refused_before_any_work(tmp_path):
  """A row without its method used to be found by results.merge after the whole run
  (KeyError: 'method')."""
  workdir = tmp_path / "w"
  workdir.mkdir()
  row = {"shots": 5, "mean": 1.0, "per_task": [1.0]}
  (workdir / "results.json").write_text(json.dumps({"benchmark": "sinusoid", "seed": 0,
                                                    "rows": [row]}))
  with pytest.raises(CheckpointError, match=r"results\.json is not a results file this "
                     r"version can add to: row 0 has no 'method' name\. Repair that"):
    pipeline.run(helpers.smoke_config(methods="va"), str(workdir), "offline")
  assert not (workdir / "zoo").exists()


def test_evaluate_on_a_missing_workdir_is_refused_and_creates_nothing(tmp_path):
  workdir = tmp_path / "nosuch"
  with pytest.raises(CheckpointError, match=r"--workdir .*nosuch does not exist: "
                     "launch.evaluate meta-tests what launch.offline"):
    pipeline.evaluate(helpers.smoke_config(), str(workdir))
  assert not workdir.exists()


def test_saved_initialisations_load_with_their_model(finished_run):
  from dfl2l_jax import inits  # pylint: disable=g-import-not-at-top
  workdir, results = finished_run
  assert inits.available(workdir) == sorted(ALL.split(","))
  init = inits.load(workdir, "va")
  y = init.apply(init.params, jnp.linspace(-5, 5, 7)[:, None])
  assert y.shape == (7, 1) and np.all(np.isfinite(y))
  assert init.model.hidden == tuple(results["config"]["model"]["hidden"])
  with pytest.raises(CheckpointError, match="no initialisation of 'nope'"):
    inits.load(workdir, "nope")


def test_impossible_model_widths_are_refused(tmp_path):
  with pytest.raises(ConfigError, match="model.hidden"):
    pipeline.run(helpers.smoke_config(model__hidden=(0,)), str(tmp_path / "w"), "offline")


def test_workdir_that_is_a_file_is_refused(tmp_path):
  path = tmp_path / "file"
  path.write_text("x")
  with pytest.raises(ConfigError, match="is a file"):
    pipeline.run(helpers.smoke_config(), str(path), "offline")


def test_a_learner_method_is_meta_tested_beside_the_inits_which_stay_identical(finished_run,
                                                                              tmp_path):
  workdir = str(tmp_path / "w")
  shutil.copytree(finished_run[0], workdir)
  out = pipeline.evaluate(helpers.smoke_config(methods="zoo_features,va"), workdir)
  new = [r for r in out["rows"] if r["run"] == 1]
  assert {(r["method"], r["shots"]) for r in new} == {(m, s) for m in ("zoo_features", "va")
                                                      for s in (5, 10)}
  for r in new:
    if r["method"] == "va":
      assert r["per_task"] == _per_task(finished_run[1])[("va", r["shots"])]
    else:
      assert r["cost"] == {"networks": 10, "forward": 10 * (r["shots"] + 100), "backward": 0}
      assert np.all(np.isfinite(r["per_task"])) and r["n_tasks"] == 8
  assert not os.path.exists(os.path.join(workdir, "inits", "zoo_features"))


def test_a_changed_method_setting_adds_rows_and_a_saved_init_keeps_its_own(finished_run,
                                                                            tmp_path, caplog):
  """Issue 31: rows were keyed by method, shots and meta-test settings only, so rerunning a
  method without a checkpoint under another setting replaced its earlier rows."""
  workdir = str(tmp_path / "w")
  shutil.copytree(finished_run[0], workdir)
  for repeats in (1, 2):
    out = pipeline.evaluate(helpers.smoke_config(
        methods="zoo_features", zoo_features__val_repeats=repeats,
        zoo_features__ridge_grid=(1e-3,)), workdir)
  got = sorted((r["shots"], r["settings"]["zoo_features"]["val_repeats"], r["run"])
               for r in out["rows"] if r["method"] == "zoo_features")
  assert got == [(5, 1, 1), (5, 2, 2), (10, 1, 1), (10, 2, 2)]
  with open(os.path.join(workdir, "results.md")) as f:
    md = f.read()
  assert "| zoo_features [zoo_features.val_repeats=2] | 10 |" in md
  # launch.evaluate meta-tests a saved initialisation as it was made: its rows keep the
  # settings that made it (and replace the earlier rows of those), whatever the config says.
  with caplog.at_level("WARNING", logger="dfl2l_jax"):
    out = pipeline.evaluate(helpers.smoke_config(methods="dfl2l", fusion__gamma=0.5), workdir)
  dfl2l = [r for r in out["rows"] if r["method"] == "dfl2l"]
  assert [(r["run"], r["settings"]["fusion"]["gamma"]) for r in dfl2l] == [(3, 1.0)] * 2
  assert any("fusion.gamma: saved 1.0, now 0.5" in r.getMessage() for r in caplog.records)
  spec = checkpointing.read_spec(os.path.join(workdir, "inits", "dfl2l"))
  assert spec["settings"] == dfl2l[0]["settings"]


def test_every_data_free_method_runs_without_the_zoo_tasks_data(finished_run, tmp_path):
  """The data-free contract: a method not declared to read the zoo tasks' data gets a
  benchmark whose zoo_tasks, batch_fn, zoo_eval_fn and data raise; every such method must
  still produce its initialisation or learner (and the MAML baselines must not)."""
  from dfl2l_jax import methods  # pylint: disable=g-import-not-at-top
  from dfl2l_jax import tasks  # pylint: disable=g-import-not-at-top
  workdir = str(tmp_path / "w")
  shutil.copytree(finished_run[0], workdir)
  # The contract, not the results: shortest loops (the fusion section stays the finished
  # run's, whose dfl2l and dfl2l_online checkpoints are restored).
  config = helpers.smoke_config(maml__meta_steps=4, maml__chunk_steps=4, mfgp__fit_steps=10,
                                zoo_distill__steps=10, zoo_distill__chunk_steps=10,
                                zoo_features__val_repeats=1, zoo_features__ridge_grid=(1e-3,))
  benchmark = tasks.get_benchmark(config)
  run = pipeline.RunContext.start(config, benchmark, workdir)
  zoo = zoo_lib.train_zoo(config, benchmark, workdir, mesh=run.models_mesh)  # restores it
  split = zoo_lib.split(config)
  free = [m for m in methods.METHODS.values() if not methods.base.uses_task_data(m, config)]
  assert {"dfl2l", "va", "ota", "ties", "zoo_features"} <= {m.name for m in free}
  not_here = set()  # image-only methods; inversion_maml's contract: tests/test_inversion.py
  for method in free:
    ctx = pipeline.method_context(run, method, zoo, split)
    assert isinstance(ctx.benchmark, methods.base.DataFreeBenchmark)
    try:
      product = method.make_init(ctx)
    except NotApplicable:
      not_here.add(method.name)
      continue
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(
        product.state if isinstance(product, methods.Learner) else product)), method.name
  assert not_here == {"inversion_maml"}  # zoo_distill inverts only for images
  ctx = pipeline.method_context(dataclasses.replace(run, workdir=None), methods.METHODS["maml"],
                                zoo, split)
  assert ctx.benchmark is benchmark  # declared to read the data: gets it
  guarded = methods.base.DataFreeBenchmark(benchmark, "maml")
  with pytest.raises(methods.base.DataFreeViolation, match="maml is declared data-free"):
    methods.METHODS["maml"].make_init(dataclasses.replace(ctx, benchmark=guarded))
  ties_data = helpers.smoke_config(ties__scale_criterion="zoo_data")
  assert methods.base.uses_task_data(methods.METHODS["ties"], ties_data)
