"""What a benchmark provides to the pipeline, the methods and the meta-test."""

import dataclasses
import functools
from typing import Any, Callable

import flax.linen as nn
import jax
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
    batch_fn: `(task, key, data) -> {"x", "y"}`, one training batch of one zoo
      task.
    loss_fn: `(params, batch) -> scalar` training loss, used for the zoo and
      for adaptation at meta-test (Algorithm 3 line 7).
    metric_fn: `(params, query, support) -> scalar` the reported metric on a
      query batch after adaptation on `support` (networks with BatchNorm take
      their normalisation statistics from the support set; see docs/method.md).
    zoo_eval_fn: `(params, task, data) -> scalar` a zoo model's metric on
      held-out data of its own task (the zoo's quality).
    make_episodes: `(shots) -> dict` of meta-test episodes with a leading task
      axis, in whatever form `gather_episode` reads (arrays of examples, or
      indices into `data`), plus anything for plots.
    points_available: the largest number of support examples a test task has
      (per class for classification).
    spec: JSON-able description of the architecture and task distribution;
      stored beside the zoo so a mismatching workdir is detected.
    data: arrays shared by all tasks (for example images that tasks and
      episodes index into), passed to batch_fn, zoo_eval_fn and
      gather_episode; None when there are none.
    gather_episode: `(episode, data) -> (support, query)`, each {"x", "y"}, for
      one episode (one slice of make_episodes' output). The default reads
      support_x, support_y, query_x, query_y.
    member_loop: how the ensemble trainer runs the zoo's members, "vmap" or
      "map" (see ensemble.make_ensemble_chunk).
    zoo_bn_stats_fn: `(params, task, data) -> batch_stats`, a zoo model's
      BatchNorm population statistics over its own training data (what a
      pretrained CNN checkpoint carries as running statistics); None for
      networks without BatchNorm.
    validation_episodes: `(shots, num_tasks) -> (episodes, data, gather_fn)`,
      episodes of the meta-validation classes (disjoint from the meta-training and
      meta-test ones) in the form `gather_fn(episode, data)` reads, for choices a
      method makes before the meta-test; never the test tasks. None where the
      benchmark has no meta-validation classes.
    group_bn_stats_fn: `(group) -> batch_stats` for a group (zoo.store.ZooGroup) of a
      mixed imported zoo other than the run's: its models' BatchNorm population
      statistics over images of their own classes, for a zoo whose models normalise
      with a batch's statistics; None where the zoo has one architecture.
    group_quality_fn: `(group) -> [metric per model]` for such a group: each model's
      zoo_eval_fn measure by its own network on images of its own classes; None where
      the zoo has one architecture.
    imported_zoo: the zoo read from config.zoo.source (zoo.store.LoadedZoo: its
      manifest, parameters and BatchNorm statistics), which the pipeline uses instead
      of training one; None: the zoo is trained from the config.
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
  data: Any = None
  gather_episode: Callable = None
  member_loop: str = "vmap"
  zoo_bn_stats_fn: Callable = None
  validation_episodes: Callable = None
  imported_zoo: Any = None
  group_bn_stats_fn: Callable = None
  group_quality_fn: Callable = None

  def __post_init__(self):
    if self.gather_episode is None:
      object.__setattr__(self, "gather_episode", gather_arrays)

  def init_params(self, key):
    return _init_params(self.model, key, self.example_input)

  def apply(self, params, x):
    return self.model.apply({"params": params}, x)

  @property
  def lower_is_better(self):
    return self.metric == "mse"


@functools.partial(jax.jit, static_argnums=0)
def _init_params(model, key, example_input):
  """A network's initial parameters, compiled once per network and input shape: flax's
  init run op by op (and vmapped over a zoo's keys) costs seconds of small compilations."""
  return model.init(key, example_input)["params"]


def gather_arrays(episode, data):
  """Episodes that carry their examples: support_x/_y and query_x/_y."""
  del data
  return ({"x": episode["support_x"], "y": episode["support_y"]},
          {"x": episode["query_x"], "y": episode["query_y"]})
