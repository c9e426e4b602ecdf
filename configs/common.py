"""Config sections shared by every benchmark."""

import ml_collections

from dfl2l_jax import methods


def fusion(embed_dim):
  """The DFL2L fusion section. [paper] marks values the paper states (Sections 5.2-5.3);
  the others are our choices, explained in docs/method.md."""
  f = ml_collections.ConfigDict()
  f.embed_dim = embed_dim               # [paper] 100 (sinusoid), 50 (images)
  f.epochs = 3                          # [paper] (sinusoid)
  f.optimizer = "sgd"                   # [paper]
  f.outer_lr = 0.03                     # [paper]
  f.inner_lr = 0.03                     # [paper] (one rate is given)
  f.inner_steps = 1                     # [paper] K = 1
  f.dro_steps = 1                       # [paper] K = 1
  f.dro_lr = 0.03
  f.embed_lr = 0.03
  f.sigma = 1.0
  f.gamma = 1.0
  f.use_dro = True
  f.meta_batch_size = 1                 # [paper] one S and one Q model per step
  f.keep_inner_update = False
  f.learn_val_embeddings = True
  f.w_scale = 0.1
  f.embed_init_std = 0.1
  f.chunk_steps = 100
  f.rate_halvings = 3                   # on divergence: restart with the 4 rates halved,
  #                                       at most this often (methods/dfl2l.py)
  return f


def maml(inner_steps, inner_lr, meta_steps, meta_batch_size, support_size, query_size):
  """MAML / first-order MAML (`maml`, `fomaml`): meta-trained on the zoo tasks' own data.

  Owned by dfl2l_jax/methods/maml.py, which documents and validates every field;
  the benchmark configs give the paper's values (Finn et al. 2017) beside ours.
  """
  m = ml_collections.ConfigDict()
  m.meta_steps = meta_steps             # outer steps (maml, fomaml)
  m.meta_batch_size = meta_batch_size   # tasks per outer step
  m.inner_steps = inner_steps           # K inner SGD steps
  m.inner_lr = inner_lr                 # alpha
  m.outer_lr = 1e-3                     # beta, Adam [Finn et al. 2017]
  m.support_size = support_size         # examples per support batch (0: a whole zoo batch)
  m.query_size = query_size             # examples per query batch (0: a whole zoo batch)
  m.chunk_steps = 100
  return m


def method_sections(c):
  """Adds the sections of the methods that need no benchmark-specific values (oml,
  task_arithmetic, ties, mfgp, ota, weight_matching, zoo_features, zoo_maml, zoo_distill,
  inversion, inversion_maml), each with the defaults its method module states and
  comments (the `sections` of its registry entry, dfl2l_jax/methods/). A config without
  one of them still runs: the pipeline adds what is missing. Listed here so that flags
  such as --config.ties.density=0.3 find the field."""
  methods.add_default_sections(c)


def mesh():
  """Devices (jax.sharding) and hosts (jax.distributed): dfl2l_jax/sharding.py, BUILD.md.

  Zoo training and fusion split the model axis across the devices, the meta-test
  the task axis. Results do not depend on the device count (up to float rounding).
  """
  m = ml_collections.ConfigDict()
  m.num_devices = 0                     # 0: every device (of every host); n: the first n
  m.distributed = False                 # call jax.distributed.initialize() first
                                        # (or set DFL2L_DISTRIBUTED=1)
  m.coordinator_address = ""            # "": auto-detected (TPU pod, SLURM, Open MPI)
  m.num_processes = 0                   # 0: auto-detected
  m.process_id = -1                     # -1: auto-detected
  return m
