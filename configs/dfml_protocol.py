"""Shared builder of the data-free meta-learning field's protocol (dfml_cifarfs.py,
dfml_miniimagenet.py): the setting of BiDf-MKD (Hu et al., ICML 2023), FREE (Wei et al.,
CVPR 2024) and TGR (Wei et al., ICML 2024), as their public code runs it (scripts and
pretraining code of Egg-Hu/BiDf-MKD, WalkerWorldPeace/FREE and WalkerWorldPeace/TGR):

  - 100 teachers, Conv4 with 32 filters, each from its own random initialisation
    (zoo.shared_init = False: there is no common base, so task_arithmetic and ties are n/a),
    each trained on 5 classes drawn at random from the 64 meta-training classes;
  - meta-test: 600 tasks, 5-way, 1 and 5 shots, 15 query images per class;
  - any selection uses the meta-validation classes, never the test tasks, and results are
    the final checkpoint (that code reports the best test accuracy seen during training).

PURER (Hu et al., CVPR 2023) differs in its zoo: its code trains 13 teachers on disjoint
blocks of 5 of the 64 classes. results/data_free.md lists what we could and could not
verify of these papers.

Variants, comma-separated: `proxy` (CIFAR-FS only: Mini-ImageNet at 32x32 stands in for
CIFAR-100), `smoke` (seconds to minutes on a CPU), `reduced` (the CPU budget of our results
pages: 40 teachers, 250 steps of batch 16, 50 test tasks, 15 adaptation steps; for the methods
that need them, 200 inversion steps and 300 MAML meta-steps, as in the proxy's data_free variant).
"""

from configs import fewshot_base


def make(protocol, arg=None):
  variants = {v.strip() for v in (arg or "").split(",") if v.strip()}
  unknown = variants - {"proxy", "smoke", "reduced"}
  if unknown:
    raise ValueError(f"unknown config variants {sorted(unknown)} (known: proxy, smoke, "
                     "reduced)")
  if "smoke" in variants and "reduced" in variants:
    raise ValueError("choose one of the variants smoke and reduced")
  base = ",".join(sorted(variants & {"proxy", "smoke"}))
  c = fewshot_base.make(protocol, 5, base)
  with c.unlocked():
    c.shots = (1, 5)
    c.model.filters = 32
    c.zoo.shared_init = False
    c.metatest.query_per_class = 15
    if "smoke" not in variants:
      c.zoo.num_models = 100
      c.metatest.num_tasks = 600
    if "reduced" in variants:
      c.zoo.num_models = 40
      c.zoo.steps = 250
      c.zoo.batch_size = 16
      c.zoo.chunk_steps = 50
      c.metatest.num_tasks = 50
      c.metatest.steps = 15
      c.inversion.steps = 200
      c.maml.meta_steps = 300
  return c
