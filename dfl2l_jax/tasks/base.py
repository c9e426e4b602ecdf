"""What a benchmark provides to the pipeline, the methods and the meta-test."""

import dataclasses
from typing import Any, Callable

import flax.linen as nn
import numpy as np


@dataclasses.dataclass(frozen=True)
class Benchmark:
  """A task distribution with its target network, losses and episodes.

  Attributes:
    name: benchmark name, as in results.json.
    metric: "mse" (lower is better) or "accuracy" (percent, higher is better).
    model: the flax target network.
    example_input: one input batch, for `model.init`.
    zoo_tasks: pytree with a leading model axis describing each zoo model's
      task: what `batch_fn` and `zoo_eval_fn` read.
    batch_fn: `(task, key) -> {"x", "y"}`, one training batch of one zoo task.
    loss_fn: `(params, batch) -> scalar` training loss, used for the zoo and
      for adaptation at meta-test (Algorithm 3 line 7).
    metric_fn: `(params, batch) -> scalar` the reported metric on a batch.
    zoo_eval_fn: `(params, task) -> scalar` a zoo model's metric on held-out
      data of its own task (the zoo's quality).
    make_episodes: `(shots) -> dict` of meta-test episodes with a leading task
      axis: support_x, support_y, query_x, query_y (plus anything for plots).
    points_available: the largest number of support examples a test task has
      (per class for classification).
    spec: JSON-able description of the architecture and task distribution;
      stored beside the zoo so a mismatching workdir is detected.
  """
  name: str
  metric: str
  model: nn.Module
  example_input: np.ndarray
  zoo_tasks: Any
  batch_fn: Callable
  loss_fn: Callable
  metric_fn: Callable
  zoo_eval_fn: Callable
  make_episodes: Callable
  points_available: int
  spec: dict

  def init_params(self, key):
    return self.model.init(key, self.example_input)["params"]

  def apply(self, params, x):
    return self.model.apply({"params": params}, x)

  @property
  def lower_is_better(self):
    return self.metric == "mse"
