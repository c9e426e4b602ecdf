"""The DFL2L method module: the fusion restarted with halved rates after a divergence."""

import json
import os
import re

import jax
import numpy as np
import pytest

from dfl2l_jax import loops
from dfl2l_jax.errors import CheckpointError
from dfl2l_jax.methods import base
from dfl2l_jax.methods import dfl2l
from tests import helpers

N = 14
# On this zoo the fusion diverges at rates 0.4 and 0.2 and not at 0.1 (nor 0.05).
ZOO = helpers.toy_zoo(N, key=8, spread=0.5)


def _ctx(workdir=None, lr=0.4, halvings=3, zoo=ZOO, chunk_steps=7):
  rates = {f"fusion__{k}": lr for k in dfl2l.RATES}
  config = helpers.smoke_config(fusion__chunk_steps=chunk_steps, fusion__embed_dim=4,
                                fusion__rate_halvings=halvings, **rates)
  return base.MethodContext(config=config, benchmark=None, zoo=zoo, s_idx=np.arange(11),
                            q_idx=np.arange(11, N), key=jax.random.key(7),
                            workdir=None if workdir is None else str(workdir))


def _assert_same(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_a_diverging_fusion_restarts_with_halved_rates_and_resumes_past_them(
    tmp_path, monkeypatch):
  ctx = _ctx(tmp_path / "a", lr=0.2)
  state = dfl2l.offline_fusion(ctx)
  assert ctx.notes == {"rate_scale": 0.5}
  with open(tmp_path / "a" / "fusion" / "dfl2l" / "diverged.json") as f:
    marker = json.load(f)
  assert "non-finite" in marker["error"] and marker["spec"]["fusion"]["outer_lr"] == 0.2
  assert not (tmp_path / "a" / "fusion" / "dfl2l_rates_x0.5" / "diverged.json").exists()

  # The same as a run that starts at the rates the rule reached; a stable run records
  # nothing, and its spec leaves out rate_halvings (so checkpoints from before resume).
  direct_ctx = _ctx(tmp_path / "b", lr=0.1, halvings=0)
  _assert_same(state, dfl2l.offline_fusion(direct_ctx))
  assert direct_ctx.notes == {}
  assert sorted(os.listdir(tmp_path / "b" / "fusion")) == ["dfl2l"]
  with open(tmp_path / "b" / "fusion" / "dfl2l" / "spec.json") as f:
    assert "rate_halvings" not in json.load(f)["fusion"]

  # Resumed: the diverged attempt is skipped, the good one restored from its checkpoint.
  ran = []
  original = base.MethodContext.run_loop

  def spy(self, name, *args, **kwargs):
    ran.append(name)
    return original(self, name, *args, **kwargs)

  monkeypatch.setattr(base.MethodContext, "run_loop", spy)
  ctx = _ctx(tmp_path / "a", lr=0.2)
  _assert_same(dfl2l.offline_fusion(ctx), state)
  assert ran == ["dfl2l_rates_x0.5"] and ctx.notes == {"rate_scale": 0.5}
  # A damaged marker is named, not trusted.
  (tmp_path / "a" / "fusion" / "dfl2l" / "diverged.json").write_text('{"err')
  with pytest.raises(CheckpointError, match=r"dfl2l/diverged.json is unreadable"):
    dfl2l.offline_fusion(_ctx(tmp_path / "a", lr=0.2))


def test_without_halvings_or_when_they_run_out_the_divergence_is_an_error(tmp_path):
  with pytest.raises(loops.DivergenceError, match=r"dfl2l: .*non-finite in the chunk ending at "
                     r"step (\d+); lower the learning rates") as e:
    dfl2l.offline_fusion(_ctx(lr=0.2, halvings=0))
  step = int(re.search(r"ending at step (\d+);", str(e.value)).group(1))
  assert step % 7 == 0  # the end of a chunk of 7 steps (which chunk: the zoo's random draw)
  assert "halving" not in str(e.value)
  with pytest.raises(loops.DivergenceError,
                     match=r"dfl2l_rates_x0.5: .*\(after 1 halving of the rates; "
                           r"config.fusion.rate_halvings\)"):
    dfl2l.offline_fusion(_ctx(tmp_path, lr=0.4, halvings=1))


def test_online_fusion_halves_its_rates_too():
  ctx = _ctx(lr=0.2, chunk_steps=11)  # one chunk: one compilation per attempt
  state = dfl2l.online_fusion(ctx)
  assert ctx.notes == {"rate_scale": 0.5} and int(state.step) == 11
  assert np.all(np.isfinite(np.asarray(state.emb_s)))


def test_the_halving_policy_serves_any_loop(tmp_path):
  """loops.with_rate_halving knows nothing of DFL2L: any training loop that raises
  DivergenceError gets the restarts, the markers and the skip on resume."""
  ran = []

  def train(scale, attempt):
    ran.append(attempt)
    if scale > 0.3:
      raise loops.DivergenceError(f"{attempt}: loss became non-finite")
    return f"trained at x{scale}"

  run = lambda: loops.with_rate_halving(
      train, name="student", halvings=2, spec_of=lambda scale: {"lr": 0.1 * scale},
      folder_of=lambda attempt: str(tmp_path / attempt))
  assert run() == ("trained at x0.25", 0.25)
  assert ran == ["student", "student_rates_x0.5", "student_rates_x0.25"]
  assert (tmp_path / "student_rates_x0.5" / loops.MARKER).exists()
  ran.clear()
  assert run() == ("trained at x0.25", 0.25) and ran == ["student_rates_x0.25"]
  with pytest.raises(loops.DivergenceError, match=r"after 1 halving of the rates\)$"):
    loops.with_rate_halving(train, name="other", halvings=1, spec_of=lambda s: {})
