"""zoo_features: the zoo used in function space, as a frozen feature ensemble.

Parameter fusion (DFL2L, VA, OT, merging) keeps one network and discards what the zoo's
models compute. Here the N zoo models stay, and a new task is learned by a head fitted
on the support set over their outputs: no task data, no meta-training.

Regression (sinusoid): the features of an input x are the N zoo models' outputs
phi(x) = (f_1(x), ..., f_N(x)). The head is ridge regression with an unpenalised
intercept, fitted on the K support points in its dual form (K x K, so K < N is fine):

    G = Phi_c Phi_c^T,   alpha = (G + lambda I)^-1 (y - mean y),
    prediction(x) = (phi(x) - mean phi) Phi_c^T alpha + mean y,

Phi_c the support features centred by their mean, lambda = lambda_rel * trace(G) / K
(scale-free). lambda_rel is chosen per shot count from `zoo_features.ridge_grid` on
meta-validation pseudo tasks, never on test tasks: each meta-validation model f_q
(the split's Q) labels K support and `zoo_features.val_query` query inputs drawn
uniformly from the benchmark's input domain, the meta-training models S give the
features, and the lambda_rel of the lowest mean pseudo-query MSE is kept. At test
time all N models give features.

Test-time cost per task: N networks, N (K + Q) forward passes, no backward pass.

Classification (Conv4 zoos): the features of an image are every zoo model's flattened
last-block activations (`models.Conv4(head=False)`; a ResNet's pooled features, in a zoo
of several architectures, whose every group is used, one `lax.map` over each group's
stacked models), each model's BatchNorm normalised
with the statistics of the task's support set (as every method's evaluation does;
docs/method.md, "BatchNorm"), or, for a zoo whose models carry running statistics (an
imported zoo, docs/zoo_format.md), with the model's own, as it computes in PyTorch's eval
mode; each model's feature vector scaled to unit length so that
every model weighs the same, and all N concatenated. Two heads
(`zoo_features.image_head`):

- "centroid" (default): the nearest class centroid of the support features (squared
  Euclidean distance). Nothing is fitted or chosen, so no selection is involved.
- "logistic": multinomial logistic regression on the concatenated features scaled to
  unit length, mean cross-entropy + ||W||^2 / (2 C n) over the n support images (the
  bias unpenalised; C = `zoo_features.logistic_c`, 1 as scikit-learn's default and as
  in Tian et al. 2020's linear probe), from zero by `zoo_features.logistic_steps`
  gradient steps of 1 / L, L = 1 + 1 / (C n) bounding the curvature. Fixed a priori.
- "select": one of the two per shot count, the one of the higher mean accuracy on
  `zoo_features.image_val_tasks` episodes of the meta-validation classes (the benchmark's
  `validation_episodes`: real labelled images of classes that are neither the zoo's nor
  the test tasks'; the field's protocol selects on them), the centroid on a tie. The
  choice is logged and recorded with the rows (`notes.image_head`). Never the test tasks.

Cost per task: N networks, N (2 K R + Q R) forward passes (one support pass gives the
statistics); the logistic head's fit adds steps x n x N D x R multiply-adds, far below
one Conv4 forward pass per model.

Untrusted models (`zoo_features.screen`, images; off by default): "untrained" scores every
model of the run's group, and `screen_references` random initialisations of its network
(never trained), by the nearest-centroid accuracy of its own features on `screen_tasks`
`screen_shots`-shot episodes of the meta-validation classes, and keeps the models that beat
every untrained network: a model whose features are no better than random ones is
dropped. The rule is fixed in advance (nothing tuned); the test tasks are never read. Each
model's score and what was done with it, and the untrained networks' scores, are logged
and recorded with the rows (`notes.screen`). A model with a non-finite score is dropped
and named; fewer than 2 models kept stops the method with the scores. A mixed zoo's other
groups are not screened (all kept).

Weighing the groups of a mixed zoo (`zoo_features.group_weight`, default 1): each model of
the other architectures' groups weighs that many times a model of the run's group, its
unit-length features scaled by the weight's square root, so that a squared distance is
the run's group's plus `group_weight` times the others'; 0 uses the run's group alone (and
its rows name only its models). `zoo_features.group_weight_grid` (empty by default)
chooses the weight per shot count instead, on the same meta-validation episodes as
"select" (jointly with the head when image_head=select), the weight nearest 1 on a tie;
the choice is recorded with the rows (`notes.group_weight`). Never the test tasks.
"""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from dfl2l_jax import adaptation
from dfl2l_jax import checks
from dfl2l_jax import metrics
from dfl2l_jax import models
from dfl2l_jax.errors import ConfigError, NotApplicable, ZooError
from dfl2l_jax.methods import base
from dfl2l_jax.zoo import contamination
from dfl2l_jax.zoo import source as zoo_source
from dfl2l_jax.zoo import store

def features(apply, zoo, x):
  """(n, N): every zoo model's scalar output at each of the n inputs x (n, 1)."""
  return jax.vmap(lambda p: apply(p, x)[:, 0])(zoo).T


def ridge_fit_predict(phi_s, y_s, phi_q, lam_rel):
  """Dual ridge with an unpenalised intercept; predictions at phi_q (see the module doc)."""
  mu_phi, mu_y = phi_s.mean(0), y_s.mean()
  phi_c = phi_s - mu_phi
  gram = phi_c @ phi_c.T
  k = gram.shape[0]
  lam = lam_rel * jnp.trace(gram) / k + 1e-12
  alpha = jnp.linalg.solve(gram + lam * jnp.eye(k, dtype=gram.dtype), y_s - mu_y)
  return (phi_q - mu_phi) @ (phi_c.T @ alpha) + mu_y


def _score(apply, state, support, query):
  zoo, lams = state["zoo"], state["lam_rel"]
  lam_rel = lams[str(support["x"].shape[0])]  # shapes are static: one lambda per shot count
  pred = ridge_fit_predict(features(apply, zoo, support["x"]), support["y"][:, 0],
                           features(apply, zoo, query["x"]), lam_rel)
  return jnp.mean(jnp.square(pred - query["y"][:, 0]))


@functools.lru_cache(maxsize=8)
def _scorer(apply):
  """One stable score function per network (a static argument of the compiled meta-test)."""
  return functools.partial(_score, apply)


def select_ridge(apply, zoo_s, zoo_q, shots, grid, domain, n_query, repeats, seed):
  """lambda_rel of the lowest mean query MSE on meta-validation pseudo tasks (module doc).

  Returns ({shots: lambda_rel}, {shots: [mean MSE per grid value]}).
  """
  rng = np.random.default_rng(seed)
  n_q = jax.tree.leaves(zoo_q)[0].shape[0]
  chosen, table = {}, {}
  for k in shots:
    x = rng.uniform(*domain, size=(repeats, n_q, k + n_query, 1)).astype(np.float32)

    @jax.jit
    def losses(x):
      def one(q_params, xs):
        y = apply(q_params, xs)[:, 0]
        phi = features(apply, zoo_s, xs)
        return jnp.stack([
            jnp.mean(jnp.square(ridge_fit_predict(phi[:k], y[:k], phi[k:], lam) - y[k:]))
            for lam in grid])
      return jax.vmap(lambda xr: jax.vmap(one)(zoo_q, xr))(x)  # (repeats, n_q, grid)

    mse = np.asarray(losses(jnp.asarray(x)), np.float64).reshape(-1, len(grid))
    mean = np.where(np.isfinite(mse), mse, np.inf).mean(0)
    if not np.isfinite(mean).any():
      raise FloatingPointError(f"zoo_features: every ridge value diverged at {k} shots")
    chosen[k] = float(grid[int(np.argmin(mean))])
    table[k] = [float(v) for v in mean]
  return chosen, table


def _unit_rows(f):
  return f / (jnp.linalg.norm(f, axis=-1, keepdims=True) + 1e-8)


def model_features(net, zoo, x, reference, running_stats=None):
  """(N, n, D): every zoo model's unit-length last-block features of the images x, its
  BatchNorm normalised with the statistics of `reference`, or with the model's own
  `running_stats` where the zoo carries them; models one after another."""
  if running_stats is None:
    one = lambda params: models.apply_with_reference(net, params, x, reference)
    return jax.lax.map(lambda p: _unit_rows(one(p)), zoo)
  return jax.lax.map(lambda ps: _unit_rows(net.apply(
      {"params": ps[0], "batch_stats": ps[1]}, x, train=False)), (zoo, running_stats))


def image_features(net, zoo, x, reference, running_stats=None):
  """(n, N * D): model_features of every model side by side."""
  feats = model_features(net, zoo, x, reference, running_stats)
  return jnp.transpose(feats, (1, 0, 2)).reshape(x.shape[0], -1)


def group_features(nets, state, support, query):
  """([f_s per group], [f_q per group]): image_features of a task's support and query
  images, group by group: nets[0] computes the run's group (state["zoo"],
  state["running_stats"]), nets[1:] the other architectures' groups of a mixed zoo
  (state["others"]); one `lax.map` over each group's stacked models."""
  groups = [(state["zoo"], state.get("running_stats"))] + [
      (g["zoo"], g.get("running_stats")) for g in state.get("others", ())]
  f_s = [image_features(net, zoo, support["x"], support["x"], stats)
         for net, (zoo, stats) in zip(nets, groups, strict=True)]
  f_q = [image_features(net, zoo, query["x"], support["x"], stats)
         for net, (zoo, stats) in zip(nets, groups, strict=True)]
  return f_s, f_q


def weighed(feats, weight):
  """The groups' features side by side, each model of the other groups weighing `weight`
  times a model of the run's group in squared distances (its unit-length features scaled
  by sqrt(weight)); None for a zoo of one architecture."""
  scale = 1.0 if weight is None else float(weight) ** 0.5
  return jnp.concatenate(feats[:1] + [scale * f for f in feats[1:]], -1)


def support_query_features(nets, state, support, query, weight=None):
  """The features of a task's support and query images, every group of the zoo
  concatenated (group_features), the other groups weighed by `weight` (`weighed`)."""
  f_s, f_q = group_features(nets, state, support, query)
  return weighed(f_s, weight), weighed(f_q, weight)


def centroid_accuracy(f_s, y_s, f_q, y_q, ways):
  """% of the query rows f_q whose nearest class centroid of the support rows is y_q."""
  onehot = jax.nn.one_hot(y_s, ways, dtype=f_s.dtype)  # (n_s, R)
  centroids = (onehot.T @ f_s) / onehot.sum(0)[:, None]
  dist = (jnp.sum(f_q**2, 1, keepdims=True) - 2 * f_q @ centroids.T
          + jnp.sum(centroids**2, 1)[None])
  return 100.0 * jnp.mean(jnp.argmin(dist, -1) == y_q)


def _centroid_score(nets, ways, weight, state, support, query):
  f_s, f_q = support_query_features(nets, state, support, query, weight)
  return centroid_accuracy(f_s, support["y"], f_q, query["y"], ways)


def fit_logistic(f, y, ways, c, steps):
  """Multinomial logistic regression on rows of `f` scaled to unit length: mean
  cross-entropy + ||W||^2 / (2 c n), bias unpenalised, `steps` gradient steps of 1 / L
  from zero (L = 1 + 1 / (c n) bounds the objective's curvature). Returns (W, b)."""
  n, d = f.shape
  x = _unit_rows(f)
  onehot = jax.nn.one_hot(y, ways, dtype=x.dtype)
  l2 = 1.0 / (c * n)

  def objective(wb):
    w, b = wb
    logp = jax.nn.log_softmax(x @ w + b)
    return -jnp.mean(jnp.sum(onehot * logp, -1)) + 0.5 * l2 * jnp.sum(w * w)

  step = 1.0 / (1.0 + l2)
  grad = jax.grad(objective)
  wb0 = (jnp.zeros((d, ways), x.dtype), jnp.zeros((ways,), x.dtype))
  return jax.lax.fori_loop(0, steps, lambda _, wb: jax.tree.map(
      lambda p, g: p - step * g, wb, grad(wb)), wb0)


def logistic_accuracy(f_s, y_s, f_q, y_q, ways, c, steps):
  """% of the query rows f_q that `fit_logistic` on the support rows labels y_q."""
  w, b = fit_logistic(f_s, y_s, ways, c, steps)
  return 100.0 * jnp.mean(jnp.argmax(_unit_rows(f_q) @ w + b, -1) == y_q)


def _logistic_score(nets, ways, c, steps, weight, state, support, query):
  f_s, f_q = support_query_features(nets, state, support, query, weight)
  return logistic_accuracy(f_s, support["y"], f_q, query["y"], ways, c, steps)


HEADS = ("centroid", "logistic")


def _candidates_score(nets, ways, c, steps, candidates, state, support, query):
  """(len(candidates),) accuracies of one task, one per (head, group weight) candidate,
  from one computation of its features (what `select` compares on meta-validation
  episodes)."""
  f_s, f_q = group_features(nets, state, support, query)
  accs = []
  for head, weight in candidates:
    a, b = weighed(f_s, weight), weighed(f_q, weight)
    accs.append(centroid_accuracy(a, support["y"], b, query["y"], ways) if head == "centroid"
                else logistic_accuracy(a, support["y"], b, query["y"], ways, c, steps))
  return jnp.stack(accs)


@functools.lru_cache(maxsize=8)
def _centroid_scorer(nets, ways, weight=None):
  """`nets`: a tuple of networks (head=False), one per group of the zoo; `weight`: the
  other groups' models' weight (`weighed`)."""
  return functools.partial(_centroid_score, nets, ways, weight)


@functools.lru_cache(maxsize=8)
def _logistic_scorer(nets, ways, c, steps, weight=None):
  return functools.partial(_logistic_score, nets, ways, c, steps, weight)


@functools.lru_cache(maxsize=8)
def _candidates_scorer(nets, ways, c, steps, candidates):
  """`candidates`: a tuple of (head, group weight)."""
  return functools.partial(_candidates_score, nets, ways, c, steps, candidates)


def group_state(ctx):
  """The run's group as a learner state: its models ("zoo") and, where the zoo carries
  them, their BatchNorm statistics ("running_stats")."""
  state = {"zoo": jax.tree.map(jnp.asarray, ctx.zoo)}
  if ctx.zoo_running_stats is not None:
    state["running_stats"] = jax.tree.map(jnp.asarray, ctx.zoo_running_stats)
  return state


def zoo_groups(ctx, net):
  """(nets, state, n): the feature networks (head=False) of every group of the zoo, the
  learner's state holding their models, and how many models that is. The run's group
  (ctx.zoo, ctx.zoo_running_stats) first; a mixed imported zoo adds its other groups
  (zoo/source.py), each with its own network and BatchNorm statistics."""
  nets = [net.clone(head=False)]
  state = group_state(ctx)
  n = jax.tree.leaves(ctx.zoo)[0].shape[0]
  imported = ctx.benchmark.imported_zoo
  if imported is not None and imported.mixed:
    others = []
    for g in zoo_source.other_groups(imported, ctx.config):
      conv4 = g.architecture["name"] == "conv4"
      nets.append(store.network(g.architecture, net.conv_impl if conv4 else "xla",
                                net.bn_impl if conv4 else "flax", head=False))
      other = {"zoo": jax.tree.map(jnp.asarray, g.params)}
      if ctx.zoo_running_stats is not None:
        other["running_stats"] = jax.tree.map(jnp.asarray, g.bn_stats)
      others.append(other)
      n += len(g.indices)
    state["others"] = others
    ctx.notes["zoo_models"] = zoo_source.every_model_note(imported)
  return tuple(nets), state, n


def _selected_score(scores, state, support, query):
  """The head chosen for this task's support-set size (static: one per shot count)."""
  return dict(scores)[support["x"].shape[0]](state, support, query)


@functools.lru_cache(maxsize=8)
def _selected_scorer(scores):
  """`scores`: ((n_support, score), ...), hashable so the scorer is a stable object."""
  return functools.partial(_selected_score, scores)


def label(candidate):
  """How a (head, group weight) candidate is named in logs and notes."""
  head, weight = candidate
  return head if weight is None else f"{head}@{weight:g}"


def select(ctx, score, candidates, state):
  """{shots: candidate} of the highest mean accuracy on meta-validation episodes (the
  earlier candidate on a tie), and {shots: {label: mean accuracy}}; module doc, "select"
  and "group_weight_grid". `score` scores a task by every candidate (head, group weight)
  from one computation of its features."""
  if ctx.benchmark.validation_episodes is None:
    raise NotApplicable("zoo_features.image_head=select and zoo_features.group_weight_grid "
                        "need the benchmark's meta-validation classes, and this benchmark "
                        "has none")
  n_tasks = int(ctx.config.zoo_features.image_val_tasks)
  chosen, table = {}, {}
  for k in (int(s) for s in ctx.config.shots):
    episodes, data, gather = ctx.benchmark.validation_episodes(k, n_tasks)
    acc = adaptation.score_learner(
        base.Learner(state=state, score=score, cost=None), episodes,
        batch_size=int(ctx.config.metatest.batch_size), gather_fn=gather, data=data)
    for i, candidate in enumerate(candidates):
      if not np.all(np.isfinite(acc[:, i])):
        raise FloatingPointError(f"zoo_features: {label(candidate)} gave a non-finite "
                                 f"meta-validation accuracy at {k} shots")
    means = acc.mean(0)
    table[k] = {label(c): float(a) for c, a in zip(candidates, means)}
    chosen[k] = candidates[int(np.argmax(means))]  # argmax keeps the first on a tie
    metrics.log.info("zoo_features: %d shots, %s chosen on %d meta-validation tasks (mean "
                     "accuracy: %s)", k, label(chosen[k]), n_tasks,
                     ", ".join(f"{h} {a:.2f}" for h, a in table[k].items()))
    if ctx.writer is not None:
      ctx.writer.write_scalars(0, {f"zoo_features/val_accuracy_{h}_{k}": a
                                   for h, a in table[k].items()})
  return chosen, table


def per_model_accuracy(net, ways, state, support, query):
  """(N,): each model's nearest-centroid accuracy on one task with its own features."""
  stats = state.get("running_stats")
  f_s = model_features(net, state["zoo"], support["x"], support["x"], stats)
  f_q = model_features(net, state["zoo"], query["x"], support["x"], stats)
  return jax.vmap(lambda a, b: centroid_accuracy(a, support["y"], b, query["y"], ways))(f_s, f_q)


@functools.lru_cache(maxsize=8)
def _per_model_scorer(net, ways):
  return functools.partial(per_model_accuracy, net, ways)


def untrained_references(ctx, state, count):
  """`count` random initialisations of the zoo's network (never trained; BatchNorm
  statistics, where the zoo carries them, PyTorch's initial ones: mean 0, variance 1),
  as a learner state: the yardstick of the "untrained" screen."""
  keys = jax.random.split(jax.random.fold_in(jax.random.key(ctx.config.seed), 0x5C4EE), count)
  refs = {"zoo": jax.vmap(ctx.benchmark.init_params)(keys)}
  if "running_stats" in state:
    refs["running_stats"] = contamination.untrained_statistics(state["running_stats"], count)
  return refs


def screen(ctx, net, state, option="zoo_features.screen"):
  """(kept model indices of the run's group, record): the "untrained" screen (module
  doc, "screen"). Every model and `screen_references` untrained networks of the same
  architecture are scored by their own nearest-centroid accuracy on `screen_tasks`
  `screen_shots`-shot episodes of the meta-validation classes; a model is kept if its
  mean beats every untrained network's. Never the test tasks. `option`: the config
  option that asked for it, which its errors and log lines name."""
  zc, bench = ctx.config.zoo_features, ctx.benchmark
  if bench.validation_episodes is None:
    raise NotApplicable(f"{option} needs the benchmark's meta-validation "
                        "classes, and this benchmark has none")
  ways, shots = int(bench.spec["ways"]), int(zc.screen_shots)
  episodes, data, gather = bench.validation_episodes(shots, int(zc.screen_tasks))
  score = lambda st: adaptation.score_learner(
      base.Learner(st, _per_model_scorer(net, ways), None), episodes,
      batch_size=int(ctx.config.metatest.batch_size), gather_fn=gather, data=data)
  acc = score(state)  # (tasks, N)
  reference = score(untrained_references(ctx, state, int(zc.screen_references))).mean(0)
  if not np.all(np.isfinite(reference)):
    raise FloatingPointError(f"{option}: an untrained network gave a non-finite "
                             "meta-validation accuracy")
  finite = np.all(np.isfinite(acc), 0)
  scores = np.where(finite, acc.mean(0), np.nan)
  bar = float(reference.max())
  keep = np.flatnonzero(finite & (scores > bar))
  shown = ", ".join(f"{i}: {s:.1f}" for i, s in enumerate(scores))
  if len(keep) < 2:
    raise ZooError(f"{option} keeps {len(keep)} of {len(scores)} models (at least "
                   f"2 needed): meta-validation accuracy to beat {bar:.1f} (untrained); "
                   f"models {shown}")
  for i in np.flatnonzero(~finite):
    metrics.log.warning("%s: model %d gave a non-finite accuracy on the "
                        "meta-validation episodes: excluded", option, i)
  dropped = [int(i) for i in np.setdiff1d(np.arange(len(scores)), keep)]
  metrics.log.info("%s: %d of %d models kept (their %d-shot accuracy on %d "
                   "meta-validation episodes beats %.1f, the best of %d untrained networks); "
                   "dropped %s; scores %s; untrained networks %s", option, len(keep), len(scores),
                   shots, int(zc.screen_tasks), bar, int(zc.screen_references), dropped, shown,
                   ", ".join(f"{s:.1f}" for s in reference))
  record = {"summary": f"kept {len(keep)} of {len(scores)}",
            "kept": [int(i) for i in keep], "dropped": dropped, "bar": round(bar, 3),
            "scores": [None if not np.isfinite(s) else round(float(s), 3) for s in scores],
            "untrained_scores": [round(float(s), 3) for s in reference]}
  return keep, record


def candidates_of(zc, mixed):
  """The (head, group weight) pairs `select` chooses from, the default first (the centroid,
  or the configured head; then the group weights nearest equal weighing); a weight of None
  for a zoo of one architecture. One pair: nothing to choose."""
  heads = HEADS if zc.image_head == "select" else (zc.image_head,)
  if not mixed:
    return tuple((h, None) for h in heads)
  weights = tuple(float(w) for w in zc.group_weight_grid) or (float(zc.group_weight),)
  weights = sorted(weights, key=lambda w: abs(np.log(w)) if w > 0 else np.inf)
  return tuple((h, w) for h in heads for w in weights)


def zoo_features_images(ctx):
  net = ctx.benchmark.model
  if not isinstance(net, models.Conv4):
    raise NotApplicable(f"zoo_features for classification needs a Conv4 zoo, got "
                        f"{type(net).__name__}")
  nets, state, n = zoo_groups(ctx, net)
  zc = ctx.config.zoo_features
  mixed = len(nets) > 1
  if not mixed and (tuple(zc.group_weight_grid) or float(zc.group_weight) != 1.0):
    raise NotApplicable("zoo_features.group_weight and group_weight_grid weigh the other "
                        "architectures of a mixed zoo, and this zoo has one architecture")
  if zc.screen == "untrained":
    keep, record = screen(ctx, nets[0], state)
    ctx.notes["screen"] = record
    n -= len(record["dropped"])
    state = dict(state, **{k: jax.tree.map(lambda x: x[keep], state[k])
                           for k in ("zoo", "running_stats") if k in state})
  ways = int(ctx.benchmark.spec["ways"])
  c, steps = float(zc.logistic_c), int(zc.logistic_steps)
  candidates = candidates_of(zc, mixed)
  if len(candidates) == 1:
    chosen = {int(k): candidates[0] for k in ctx.config.shots}
  else:
    chosen, _ = select(ctx, _candidates_scorer(nets, ways, c, steps, candidates), candidates,
                       state)
    if zc.image_head == "select":
      ctx.notes["image_head"] = ", ".join(f"{k}:{h}" for k, (h, _) in sorted(chosen.items()))
  if mixed and (tuple(zc.group_weight_grid) or float(zc.group_weight) != 1.0):
    ctx.notes["group_weight"] = ", ".join(f"{k}:{w:g}" for k, (_, w) in sorted(chosen.items()))
  if mixed and all(w == 0 for _, w in chosen.values()):  # the run's group alone
    nets, n = nets[:1], n - sum(len(jax.tree.leaves(g["zoo"])[0]) for g in state["others"])
    state = {k: v for k, v in state.items() if k != "others"}
    ctx.notes["zoo_models"] = zoo_source.group_note(ctx.benchmark.imported_zoo, ctx.config)
  cost = lambda n_support, n_query: {"networks": n,
                                     "forward": n * (2 * n_support + n_query), "backward": 0}

  def scorer(head, weight):
    return (_centroid_scorer(nets, ways, weight) if head == "centroid" else
            _logistic_scorer(nets, ways, c, steps, weight))
  if len(set(chosen.values())) == 1:
    return base.Learner(state=state, score=scorer(*next(iter(chosen.values()))), cost=cost)
  score = _selected_scorer(tuple((ways * k, scorer(*cw)) for k, cw in sorted(chosen.items())))
  return base.Learner(state=state, score=score, cost=cost)


def zoo_features(ctx: base.MethodContext):
  if ctx.benchmark.metric == "accuracy":
    return zoo_features_images(ctx)
  if "domain" not in ctx.benchmark.spec:
    raise NotApplicable("zoo_features needs a regression benchmark with an input domain "
                        "or a Conv4 classification zoo")
  zc = ctx.config.zoo_features
  grid = tuple(float(v) for v in zc.ridge_grid)
  apply = ctx.benchmark.apply
  chosen, table = select_ridge(
      apply, ctx.zoo_s, ctx.zoo_q, tuple(int(s) for s in ctx.config.shots), grid,
      tuple(ctx.benchmark.spec["domain"]), int(zc.val_query), int(zc.val_repeats),
      seed=[int(ctx.config.seed), 17])
  for k, lam in chosen.items():
    metrics.log.info("zoo_features: %d shots, lambda_rel %.0e chosen on meta-validation pseudo "
                  "tasks (pseudo-query MSE per grid value: %s)", k, lam,
                  ", ".join(f"{v:.4g}" for v in table[k]))
    if ctx.writer is not None:
      ctx.writer.write_scalars(0, {f"zoo_features/lambda_rel_{k}": lam})
  n = jax.tree.leaves(ctx.zoo)[0].shape[0]
  state = {"zoo": jax.tree.map(jnp.asarray, ctx.zoo),
           "lam_rel": {str(k): jnp.float32(v) for k, v in chosen.items()}}
  cost = lambda n_support, n_query: {"networks": n, "forward": n * (n_support + n_query),
                                     "backward": 0}
  return base.Learner(state=state, score=_scorer(apply), cost=cost)


IMAGE_HEADS = HEADS + ("select",)


def defaults():
  """config.zoo_features."""
  z = ml_collections.ConfigDict()
  # Ridge strength relative to the mean feature energy, chosen per shot count on
  # meta-validation pseudo tasks (the Q models label random inputs), never on test tasks.
  z.ridge_grid = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)
  z.val_query = 100                     # pseudo-query inputs per meta-validation model
  z.val_repeats = 5                     # pseudo tasks per meta-validation model
  # Images: the head on the support features, fixed a priori (nothing chosen on tasks),
  # or chosen per shot count on meta-validation classes ("select").
  z.image_head = "centroid"             # centroid (nearest class centroid) | logistic | select
  z.logistic_c = 1.0                    # inverse L2 strength (scikit-learn's C)
  z.logistic_steps = 1000               # gradient steps of the logistic fit
  z.image_val_tasks = 50                # meta-validation episodes per shot count ("select")
  # Untrusted models (images): "untrained" keeps a model only if its own features beat
  # every one of `screen_references` untrained networks on meta-validation episodes.
  z.screen = "off"                      # off | untrained
  z.screen_shots = 5
  z.screen_tasks = 50
  z.screen_references = 8
  # A zoo of several architectures: each model of the other groups weighs `group_weight`
  # times a model of the run's group (1: every model the same; 0: the run's group alone),
  # or the weight is chosen per shot count from `group_weight_grid` on meta-validation
  # episodes (empty: fixed), e.g. (0, 0.25, 0.5, 1, 2, 4).
  z.group_weight = 1.0
  z.group_weight_grid = ()
  return z


FIELDS = {"zoo_features.ridge_grid": checks.POSITIVE_REALS,
          "zoo_features.val_query": checks.POSITIVE_INT,
          "zoo_features.val_repeats": checks.POSITIVE_INT,
          "zoo_features.image_head": checks.one_of(IMAGE_HEADS),
          "zoo_features.logistic_c": checks.POSITIVE_REAL,
          "zoo_features.logistic_steps": checks.POSITIVE_INT,
          "zoo_features.image_val_tasks": checks.POSITIVE_INT,
          "zoo_features.screen": checks.one_of(("off", "untrained")),
          "zoo_features.screen_shots": checks.POSITIVE_INT,
          "zoo_features.screen_tasks": checks.POSITIVE_INT,
          "zoo_features.screen_references": checks.POSITIVE_INT,
          "zoo_features.group_weight": checks.NON_NEGATIVE_REAL,
          "zoo_features.group_weight_grid": checks.NON_NEGATIVE_REALS}


def validate(config):
  checks.check(config, FIELDS)
  if config.benchmark == "sinusoid" and config.zoo_features.get("screen", "off") != "off":
    raise ConfigError("zoo_features.screen scores a classifier zoo on meta-validation "
                      "classes; set it to off for a regression zoo")
  if config.benchmark == "sinusoid" and min(config.shots) < 2:
    raise ConfigError("zoo_features fits a ridge head with an intercept: it needs at least 2 "
                      f"support points, and config.shots has {min(config.shots)}")


ZOO_FEATURES = base.Method(
    "zoo_features", ("function_space",), zoo_features,
    "the zoo as a frozen feature ensemble: a head on the N models' outputs or features "
    "(ridge for regression, nearest class centroid or logistic regression for images), "
    "fitted on the support set",
    validate, learner=True, sections={"zoo_features": defaults})
