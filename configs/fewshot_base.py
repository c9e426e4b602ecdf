"""Shared builder of the image configs (cifarfs_*way.py, miniimagenet_*way.py).

Variants, comma-separated after the config path:
  smoke  a handful of models and tasks, a few minutes on a 2-core CPU on real data
         (measured: 2 min 40 s with three methods, 1 min of it preparing the data once);
  proxy  CIFAR-FS configs only: Mini-ImageNet resized to 32x32 stands in for
         CIFAR-100 (results are labelled "cifar_fs_protocol_on_mini_imagenet32");
  reduced    the reduced scale of the Tables 2-3 pages (results/cifarfs_proxy.md with
             `proxy`, results/miniimagenet.md), what scripts/image_tables.sh runs;
  data_free  CIFAR-FS 5-way only: the reduced scale of results/data_free.md's proxy table
             (with `proxy`), its shot counts those of the field (1, 5) and the paper (10, 20).
"""

import ml_collections

from configs import common

VARIANTS = ("smoke", "proxy", "reduced", "data_free")

# The reduced scales of our results pages (CPU budget), per (protocol, ways): the zoo,
# the meta-test and the MAML baselines' budget. Every value is a config field.
_REDUCED_MAML = {"maml.meta_steps": 200, "maml.chunk_steps": 50, "oml.steps_per_arrival": 3}
REDUCED = {
    ("cifar_fs", 5): {"zoo.steps": 300, "zoo.batch_size": 32, "metatest.num_tasks": 100,
                      "metatest.steps": 30, "metatest.batch_size": 25, **_REDUCED_MAML},
    ("cifar_fs", 10): {"zoo.num_models": 50, "zoo.steps": 200, "zoo.batch_size": 32,
                       "metatest.num_tasks": 50, "metatest.steps": 30,
                       "metatest.batch_size": 1, **_REDUCED_MAML},
    ("mini_imagenet", 5): {"zoo.num_models": 40, "zoo.steps": 250, "zoo.batch_size": 16,
                           "zoo.chunk_steps": 50, "metatest.num_tasks": 40,
                           "metatest.steps": 15, "metatest.batch_size": 1, **_REDUCED_MAML},
    ("mini_imagenet", 10): {"zoo.num_models": 30, "zoo.steps": 200, "zoo.batch_size": 16,
                            "zoo.chunk_steps": 50, "metatest.num_tasks": 25,
                            "metatest.steps": 10, "metatest.batch_size": 1, **_REDUCED_MAML},
}
DATA_FREE = {"zoo.num_models": 40, "zoo.steps": 250, "zoo.batch_size": 16,
             "zoo.chunk_steps": 50, "metatest.num_tasks": 50, "metatest.steps": 15,
             "metatest.batch_size": 10, "shots": (1, 5, 10, 20), "maml.meta_steps": 300,
             "inversion.steps": 200}


def _set(c, values):
  for path, v in values.items():
    *parents, leaf = path.split(".")
    node = c
    for p in parents:
      node = node[p]
    node[leaf] = v


def make(protocol, ways, arg=None):
  variants = {v.strip() for v in (arg or "").split(",") if v.strip()}
  unknown = variants - set(VARIANTS)
  if unknown:
    raise ValueError(f"unknown config variants {sorted(unknown)} (known: "
                     f"{', '.join(VARIANTS)})")
  if "proxy" in variants and protocol != "cifar_fs":
    raise ValueError("the proxy variant exists for the CIFAR-FS configs only")
  if len(variants & {"smoke", "reduced", "data_free"}) > 1:
    raise ValueError("choose one of the variants smoke, reduced and data_free")
  if "data_free" in variants and (protocol, ways) != ("cifar_fs", 5):
    raise ValueError("the data_free variant exists for configs/cifarfs_5way.py only")

  c = ml_collections.ConfigDict()
  c.benchmark = protocol
  c.seed = 0
  c.methods = ""
  c.shots = (10, 20)                    # [paper] support images per class

  c.data = ml_collections.ConfigDict()
  if protocol == "cifar_fs":
    c.data.dataset = "mini_imagenet32" if "proxy" in variants else "cifar_fs"
  else:
    c.data.dataset = "mini_imagenet"
  c.data.manual_dir = ""                # folder with the downloaded archives
  c.data.data_dir = ""                  # where tfds keeps prepared data ("" = default)
  c.data.strict = True                  # check the standard class and image counts

  c.model = ml_collections.ConfigDict()
  c.model.filters = 16                  # [paper] Conv4 with 16 filters
  c.model.conv_impl = "auto"            # xla | patches; auto: patches on CPU and GPU, xla on TPU
  c.model.bn_impl = "flax"              # flax | fused: the same BatchNorm, hand-written backward

  c.zoo = ml_collections.ConfigDict()
  c.zoo.num_models = 100                # [paper]
  c.zoo.ways = ways                     # [paper] R = 5 or 10
  c.zoo.val_fraction = 0.2              # [paper]
  c.zoo.shared_init = True
  c.zoo.optimizer = "adam"
  c.zoo.lr = 1e-3
  c.zoo.steps = 1000
  c.zoo.batch_size = 64
  c.zoo.chunk_steps = 100
  c.zoo.bn_reference = 20               # train images per class giving BN statistics at eval
  c.zoo.member_loop = "auto"            # vmap | map over zoo members; auto: map on CPU
  c.zoo.source = ""                     # a zoo folder (launch.import_zoo) to use instead of
  #                                       training one; its manifest sets num_models, ways
  #                                       and model.filters (docs/zoo_format.md)
  c.zoo.group = ""                      # a zoo of several architectures: the group (e.g.
  #                                       "conv4-32") that parameter-space methods and the
  #                                       meta-test network use; "": the largest
  c.zoo.architectures = ""              # our trainer's zoo of several architectures, e.g.
  #                                       "conv4-32:30,resnet10:10" (launch.pretrain;
  #                                       dfl2l_jax/zoo/mixed.py); "": model.filters' Conv4
  c.zoo.contamination = ""              # experiments with untrusted models, e.g. "fake=0.3"
  #                                       or "fake=0.1,wrong_classes=0.1" (zoo/contamination.py)
  c.zoo.out_of_domain_dir = ""          # contamination out_of_domain: Omniglot's zip archives

  c.fusion = common.fusion(embed_dim=50)

  # maml, fomaml, oml (baselines that use the zoo tasks' data; dfl2l_jax/methods/maml.py).
  # [Finn17]: Finn et al. 2017 Mini-ImageNet: 5 inner steps, alpha = 0.01, 4 tasks per
  # meta-batch, K x R support and 15 x R query images, Adam 1e-3, 60000 steps, 32 filters.
  # Ours: a zoo batch (zoo.batch_size = 64 images, classes drawn at random) as support and
  # another as query, 16 filters (the paper's Conv4), and 1000 meta-steps (CPU budget).
  c.maml = common.maml(inner_steps=5, inner_lr=0.01,        # [Finn17]
                       meta_steps=1000,                     # [Finn17] 60000
                       meta_batch_size=4,                   # [Finn17]
                       support_size=0, query_size=0)        # whole zoo batches
  common.method_sections(c)             # oml, the merging methods, zoo_*, inversion*
  c.mesh = common.mesh()

  c.metatest = ml_collections.ConfigDict()
  c.metatest.num_tasks = 600            # [paper]
  c.metatest.query_per_class = 15
  c.metatest.steps = 100                # S of Algorithm 3
  c.metatest.lr = 0.1                   # alpha of Algorithm 3
  c.metatest.step_bound = 0.0           # 0: fixed-rate SGD (the bound is not measured on images)
  c.metatest.batch_size = 10            # tasks vmapped together (memory: 84x84 activations)

  if "smoke" in variants:
    c.zoo.num_models = 6
    c.zoo.steps = 60
    c.zoo.chunk_steps = 20
    c.zoo.batch_size = 32
    c.fusion.epochs = 2
    c.fusion.chunk_steps = 4
    c.maml.meta_steps = 4
    c.maml.meta_batch_size = 2
    c.maml.inner_steps = 1
    c.maml.chunk_steps = 2
    c.oml.steps_per_arrival = 1
    c.inversion.steps = 10
    c.inversion.chunk_steps = 5
    c.inversion.images_per_class = 4
    c.metatest.num_tasks = 10
    c.metatest.steps = 10
    c.metatest.batch_size = 5
  if "reduced" in variants:
    _set(c, REDUCED[(protocol, ways)])
  if "data_free" in variants:
    _set(c, DATA_FREE)
  c.lock()
  return c
