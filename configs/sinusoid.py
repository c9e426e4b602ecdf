r"""Sinusoid regression, the paper's synthetic benchmark (Section 5.2, Table 1).

Run the whole offline pipeline (zoo, fusion, meta-test of every method):

  python -m launch.offline --config=configs/sinusoid.py --workdir=/tmp/sinusoid

Online (Algorithm 2):            python -m launch.online  --config=configs/sinusoid.py --workdir=...
A seconds-long check:            --config=configs/sinusoid.py:smoke
Overrides:                       --config.seed=3 --config.fusion.gamma=0.5

Values the paper states are marked [paper]; the rest are our choices, explained
in docs/method.md.
"""

import ml_collections

from configs import common


def get_config(arg=None):
  c = ml_collections.ConfigDict()
  c.benchmark = "sinusoid"
  c.seed = 0
  # Comma-separated method names; "" runs the launcher's defaults
  # (offline: dfl2l, va, finetune; online: dfl2l_online, finetune).
  c.methods = ""
  c.shots = (5, 10)                     # [paper]

  c.model = ml_collections.ConfigDict()
  c.model.hidden = (50, 50)             # [paper] two hidden layers of 50 units

  c.zoo = ml_collections.ConfigDict()
  c.zoo.num_models = 100                # [paper]
  c.zoo.val_fraction = 0.2              # [paper] 80% S, 20% Q
  c.zoo.shared_init = True
  c.zoo.optimizer = "adam"
  c.zoo.lr = 1e-3
  c.zoo.steps = 4000
  c.zoo.batch_size = 64
  c.zoo.chunk_steps = 500

  c.fusion = common.fusion(embed_dim=100)

  # maml, fomaml, oml (baselines that use the zoo tasks' data; dfl2l_jax/methods/maml.py).
  # [Finn17]: Finn et al. 2017, Section 5.1 and cbfinn/maml: one inner step with alpha = 0.01,
  # K = 10 support and 10 query points, 25 tasks per meta-batch, Adam 1e-3, 70000 steps.
  # Ours: the same except 10000 meta-steps (CPU budget), drawn from the N zoo tasks.
  # oml: 100 meta-steps after each of the |S| = 80 arrivals (8000 in all).
  c.maml = common.maml(inner_steps=1, inner_lr=0.01,        # [Finn17]
                       meta_steps=10000,                    # [Finn17] 70000
                       meta_batch_size=25,                  # [Finn17]
                       support_size=10, query_size=10)      # [Finn17] K = 10
  c.maml.chunk_steps = 1000
  common.method_sections(c)             # oml, the merging methods, zoo_*, inversion*
  c.oml.steps_per_arrival = 100
  c.mesh = common.mesh()

  c.metatest = ml_collections.ConfigDict()
  c.metatest.num_tasks = 100            # [paper]
  c.metatest.num_points = 120           # per task: support drawn from the first 20
  c.metatest.query_points = 100         # held-out points per task
  c.metatest.steps = 1000               # S of Algorithm 3
  c.metatest.lr = 0.005                 # alpha of Algorithm 3
  # Each step at most c / lambda_max (the support loss's sharpness): plain SGD at 0.005 runs
  # past the stability edge 2 / lambda_max on ~78% of tasks, where results depend on float
  # rounding (docs/method.md). 0: plain fixed-rate SGD.
  c.metatest.step_bound = 1.9
  c.metatest.batch_size = 100           # tasks vmapped together

  if arg == "smoke":
    c.zoo.num_models = 10
    c.zoo.steps = 200
    c.zoo.chunk_steps = 50
    c.fusion.epochs = 2
    c.fusion.chunk_steps = 5
    c.maml.meta_steps = 20
    c.maml.chunk_steps = 10
    c.oml.steps_per_arrival = 2
    c.zoo_distill.steps = 100
    c.zoo_distill.chunk_steps = 50
    c.metatest.num_tasks = 8
    c.metatest.steps = 20
    c.metatest.batch_size = 4
  elif arg not in (None, ""):
    raise ValueError(f"unknown variant {arg!r} of configs/sinusoid.py (known: smoke)")
  c.lock()
  return c
