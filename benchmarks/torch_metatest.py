r"""The PyTorch yardstick for the meta-test: Algorithm 3 as a PyTorch user writes it.

  python benchmarks/torch_metatest.py [--tasks 60] [--steps 100] [--hw 84]
      [--variants loop,vmap] [--vmap-batch 50] [--small]

Same protocol as benchmarks/metatest_throughput.py (and the pipeline): 5-way
10-shot tasks, 15 query images per class, Conv4 with 16 filters (3x3 conv,
BatchNorm, ReLU, 2x2 max-pool, x4, then a linear head), S steps of full-batch
SGD with alpha = 0.1 on the 50 support images from one shared initialisation,
then the accuracy on the query images with BatchNorm statistics taken from the
support set (never from the query images). Random uint8 images, 20 meta-test
classes of 40 images, kept on the device; runs on CUDA when available.

Variants:
  loop  the plain way: per task `copy.deepcopy` of the nn.Module, an
        `torch.optim.SGD`, S steps of zero_grad / forward / backward / step in
        train mode; then one no-grad forward of the support set with BatchNorm
        momentum 1.0 (so the running statistics become exactly the support
        set's; torch stores the unbiased variance, a factor n/(n-1) with n at
        least 50 x 2 x 2 values per channel, which we accept) and the query
        forward in eval mode.
  vmap  torch.func: `vmap(grad(loss))` over `--vmap-batch` tasks at a time, S
        steps in a Python loop, with a functional Conv4 whose BatchNorm takes
        its statistics from the batch itself (training) or from a reference
        batch (the support set, at evaluation).

Compile-free; the first task (loop) or batch (vmap) is run once as warm-up.
Prints one JSON line per variant with tasks/s and steps/s, and the ratio of
vmap to loop when both run.
"""

import argparse
import copy
import datetime
import json
import time

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

WAYS, SHOTS, QUERY, FILTERS = 5, 10, 15, 16
TEST_CLASSES, PER_CLASS = 20, 40
LR = 0.1


def cpu_model():
  try:
    from dfl2l_jax import results  # pylint: disable=g-import-not-at-top
    return results.cpu_model()
  except ImportError:
    import platform  # pylint: disable=g-import-not-at-top
    return platform.processor()


class Conv4(nn.Module):
  def __init__(self, size, ways=WAYS, filters=FILTERS):
    super().__init__()
    layers, c_in = [], 3
    for _ in range(4):
      layers += [nn.Conv2d(c_in, filters, 3, padding=1), nn.BatchNorm2d(filters, momentum=1.0),
                 nn.ReLU(), nn.MaxPool2d(2)]
      c_in = filters
      size //= 2
    self.features = nn.Sequential(*layers)
    self.head = nn.Linear(filters * size * size, ways)

  def forward(self, x):
    return self.head(self.features(x).flatten(1))


def make_data(size, tasks, device, seed=0):
  """Random uint8 images on the device and per-task support/query indices."""
  rng = np.random.default_rng(seed)
  images = rng.integers(0, 256, size=(TEST_CLASSES * PER_CLASS, 3, size, size), dtype=np.uint8)
  table = np.arange(TEST_CLASSES * PER_CLASS).reshape(TEST_CLASSES, PER_CLASS)
  s_idx, q_idx = [], []
  for t in range(tasks):
    r = np.random.default_rng([seed, 1, t])
    cls = r.choice(TEST_CLASSES, WAYS, replace=False)
    perms = np.stack([table[c][r.permutation(PER_CLASS)] for c in cls])
    s_idx.append(perms[:, :SHOTS].reshape(-1))
    q_idx.append(perms[:, PER_CLASS - QUERY:].reshape(-1))
  as_t = lambda a: torch.as_tensor(np.stack(a), device=device)
  return (torch.as_tensor(images, device=device), as_t(s_idx), as_t(q_idx),
          torch.arange(WAYS, device=device).repeat_interleave(SHOTS),
          torch.arange(WAYS, device=device).repeat_interleave(QUERY))


def normalise(images):
  return images.float() / 255.0 - 0.5


def sync(device):
  if device.type == "cuda":
    torch.cuda.synchronize()


# ----------------------------------------------------------------------------- loop


def adapt_and_eval(base, xs, ys, xq, yq, steps):
  model = copy.deepcopy(base)
  model.train()
  opt = torch.optim.SGD(model.parameters(), lr=LR)
  for _ in range(steps):
    opt.zero_grad(set_to_none=True)
    F.cross_entropy(model(xs), ys).backward()
    opt.step()
  with torch.no_grad():
    model(xs)          # BatchNorm momentum 1: running statistics := the support set's
    model.eval()
    return (model(xq).argmax(-1) == yq).float().mean() * 100


def run_loop(base, data, steps):
  images, s_idx, q_idx, ys, yq = data
  accs = []
  for t in range(len(s_idx)):
    accs.append(adapt_and_eval(base, normalise(images[s_idx[t]]), ys,
                               normalise(images[q_idx[t]]), yq, steps))
  return torch.stack(accs)


# ----------------------------------------------------------------------------- vmap


def functional_conv4(p, x, ref=None):
  """Conv4 from the parameter dict of `Conv4`; BatchNorm statistics from `ref` if given."""
  for i in range(4):
    c, b = f"features.{4 * i}", f"features.{4 * i + 1}"
    conv = lambda z: F.conv2d(z, p[c + ".weight"], p[c + ".bias"], padding=1)
    x = conv(x)
    stats = x if ref is None else conv(ref)
    mean = stats.mean((0, 2, 3), keepdim=True)
    var = stats.var((0, 2, 3), unbiased=False, keepdim=True)
    scale = p[b + ".weight"][None, :, None, None] * torch.rsqrt(var + 1e-5)
    shift = p[b + ".bias"][None, :, None, None]
    block = lambda z: F.max_pool2d(F.relu((z - mean) * scale + shift), 2)
    x = block(x)
    if ref is not None:
      ref = block(stats)
  return F.linear(x.flatten(1), p["head.weight"], p["head.bias"])


def run_vmap(base, data, steps, batch):
  images, s_idx, q_idx, ys, yq = data
  p0 = {k: v.detach() for k, v in base.named_parameters()}
  loss = lambda p, xs: F.cross_entropy(functional_conv4(p, xs), ys)
  grads = torch.func.vmap(torch.func.grad(loss))
  evaluate = torch.func.vmap(
      lambda p, xs, xq: (functional_conv4(p, xq, ref=xs).argmax(-1) == yq).float().mean() * 100)
  accs = []
  for start in range(0, len(s_idx), batch):
    xs = normalise(images[s_idx[start:start + batch]])
    xq = normalise(images[q_idx[start:start + batch]])
    p = {k: v.expand((len(xs),) + v.shape).clone() for k, v in p0.items()}
    for _ in range(steps):
      g = grads(p, xs)
      p = {k: p[k] - LR * g[k] for k in p}
    with torch.no_grad():
      accs.append(evaluate(p, xs, xq))
  return torch.cat(accs)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--tasks", type=int, default=60)
  parser.add_argument("--steps", type=int, default=100)
  parser.add_argument("--hw", type=int, default=84)
  parser.add_argument("--variants", default="loop,vmap")
  parser.add_argument("--vmap-batch", type=int, default=50)
  parser.add_argument("--repeats", type=int, default=1)
  parser.add_argument("--small", action="store_true", help="4 tasks, 3 steps, 32x32")
  args = parser.parse_args()
  if args.small:
    args.tasks, args.steps, args.hw, args.vmap_batch = 4, 3, 32, 4
  device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
  torch.manual_seed(0)
  base = Conv4(args.hw).to(device)
  data = make_data(args.hw, args.tasks, device)
  name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
  rows = {}
  for variant in args.variants.split(","):
    if variant == "loop":
      fn = lambda d: run_loop(base, d, args.steps)
      warm = tuple(x[:1] if i in (1, 2) else x for i, x in enumerate(data))
    elif variant == "vmap":
      fn = lambda d: run_vmap(base, d, args.steps, args.vmap_batch)
      warm = tuple(x[:args.vmap_batch] if i in (1, 2) else x for i, x in enumerate(data))
    else:
      raise SystemExit(f"unknown variant {variant!r} (loop, vmap)")
    fn(warm)
    sync(device)
    best = float("inf")
    for _ in range(args.repeats):
      t0 = time.perf_counter()
      acc = fn(data)
      sync(device)
      best = min(best, time.perf_counter() - t0)
    rows[variant] = {
        "benchmark": "torch_metatest", "impl": f"torch_{variant}", "size": args.hw,
        "tasks": args.tasks, "steps": args.steps, "ways": WAYS, "shots": SHOTS,
        "query": QUERY, "filters": FILTERS,
        "vmap_batch": args.vmap_batch if variant == "vmap" else None,
        "seconds": round(best, 4), "tasks_per_s": round(args.tasks / best, 2),
        "steps_per_s": round(args.tasks * args.steps / best, 1),
        "mean_accuracy": round(float(acc.mean()), 3), "torch": torch.__version__,
        "threads": torch.get_num_threads(), "device": name, "cpu": cpu_model(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
  if "loop" in rows and "vmap" in rows:
    rows["vmap"]["ratio_vmap_over_loop"] = round(
        rows["vmap"]["tasks_per_s"] / rows["loop"]["tasks_per_s"], 2)
  for r in rows.values():
    print(json.dumps(r), flush=True)


if __name__ == "__main__":
  main()
