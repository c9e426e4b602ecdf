"""Progress lines, metrics.jsonl and the stderr log handler (dfl2l_jax/metrics.py)."""

import io
import json
import sys

import numpy as np

from dfl2l_jax import metrics


def test_progress_eta_excludes_the_first_chunk_which_includes_compilation(monkeypatch):
  clock = iter([0.0, 100.0, 110.0, 130.0])  # start; compile-heavy first chunk; then 10 s/chunk
  monkeypatch.setattr(metrics.time, "perf_counter", lambda: next(clock))
  lines = []
  progress = metrics.Progress("zoo", total=400, log=lines.append)
  progress.update(100, extra="loss=1.0")
  progress.update(200)
  progress.update(300)
  assert lines == [
      "zoo: 100/400 (25%), 1m40s elapsed | loss=1.0",
      # 100 steps in 10 s after the first update: 200 left -> 20 s.
      "zoo: 200/400 (50%), 1m50s elapsed, ETA 20s",
      # (300 - 100) steps in 30 s: 100 left -> 15 s.
      "zoo: 300/400 (75%), 2m10s elapsed, ETA 15s",
  ]
  assert metrics._fmt_seconds(3 * 3600 + 5 * 60 + 9) == "3h05m"  # pylint: disable=protected-access


def test_jsonl_writer_appends_rows_and_spells_out_non_finite_values(tmp_path):
  path = tmp_path / "sub" / "metrics.jsonl"
  writer = metrics.JsonlWriter(str(path))
  writer.write_scalars(5, {"loss": np.float32(0.5), "shift": float("nan")})
  writer.write_scalars(np.int64(10), {"loss": np.inf})
  rows = [json.loads(line) for line in path.read_text().splitlines()]
  assert [(r["step"], r["loss"]) for r in rows] == [(5, 0.5), (10, "inf")]
  assert rows[0]["shift"] == "nan"


def test_stderr_handler_installs_once_and_writes_to_the_current_stderr(capsys, monkeypatch):
  saved = list(metrics.log.handlers), metrics.log.propagate, metrics.log.level
  try:
    for h in list(metrics.log.handlers):
      metrics.log.removeHandler(h)
    metrics.install_stderr_handler()
    metrics.install_stderr_handler()
    assert len(metrics.log.handlers) == 1
    later = io.StringIO()  # sys.stderr replaced after installation (as pytest does per test)
    monkeypatch.setattr(sys, "stderr", later)
    metrics.log_info("fusion %d", 7)
    assert later.getvalue().count("fusion 7") == 1
    assert "fusion 7" not in capsys.readouterr().err
  finally:
    for h in list(metrics.log.handlers):
      metrics.log.removeHandler(h)
    for h in saved[0]:
      metrics.log.addHandler(h)
    metrics.log.propagate, metrics.log.level = saved[1], saved[2]


def _tensorboard_scalars(logdir):
  """{(tag, step): value} from the TFRecord event files in `logdir`."""
  import glob  # pylint: disable=g-import-not-at-top
  import struct  # pylint: disable=g-import-not-at-top
  from tensorboardX.proto import event_pb2  # pylint: disable=g-import-not-at-top
  out = {}
  for path in glob.glob(str(logdir / "events.out.tfevents.*")):
    data = open(path, "rb").read()
    pos = 0
    while pos < len(data):
      (length,) = struct.unpack("<Q", data[pos:pos + 8])
      event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + length])
      pos += 12 + length + 4
      for v in event.summary.value:
        out[(v.tag, event.step)] = v.simple_value
  return out


def test_a_runs_writer_sends_the_same_scalars_to_jsonl_and_tensorboard(tmp_path):
  writer = metrics.workdir_writer(str(tmp_path))
  writer.write_scalars(50, {"zoo/loss": np.float32(0.25), "zoo/bad": float("nan")})
  writer.write_scalars(100, {"zoo/loss": 0.125})
  writer.close()
  rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert [(r["step"], r["zoo/loss"]) for r in rows] == [(50, 0.25), (100, 0.125)]
  # TensorBoard gets the finite scalars (a NaN stays in metrics.jsonl only).
  assert _tensorboard_scalars(tmp_path / "tensorboard") == {("zoo/loss", 50): 0.25,
                                                            ("zoo/loss", 100): 0.125}
