"""Config sections shared by every benchmark."""

import ml_collections


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
  return f


def maml(inner_steps, inner_lr, meta_steps):
  """MAML / first-order MAML (`maml`, `fomaml`): meta-trained on the zoo tasks' own data.

  Owned by dfl2l_jax/methods/maml.py, which documents and validates every field.
  """
  m = ml_collections.ConfigDict()
  m.meta_steps = meta_steps
  m.meta_batch_size = 10                # tasks per meta-step
  m.inner_steps = inner_steps
  m.inner_lr = inner_lr
  m.outer_lr = 1e-3                     # Adam, as Finn et al. 2017
  m.chunk_steps = 100
  return m


def oml():
  """Online meta-learning (`oml`, follow-the-meta-leader, Finn et al. 2019).

  Owned by dfl2l_jax/methods/maml.py; the inner loop settings come from `maml`.
  """
  o = ml_collections.ConfigDict()
  o.steps_per_arrival = 10              # meta-steps on the buffer after each arrival
  return o


def merging():
  """Model merging baselines: task_arithmetic, ties (methods/merging.py), ota,
  weight_matching (methods/alignment.py), mfgp (methods/mfgp.py)."""
  m = ml_collections.ConfigDict()
  m.ta_scales = (0.25, 0.5, 1.0, 2.0, 4.0)  # in units of 1/|S|; chosen on Q
  m.ties_density = 0.2                  # fraction of each task vector's entries kept
  m.ties_scales = (0.25, 0.5, 1.0, 2.0, 4.0)
  m.ot_reg = 0.0                        # 0: exact assignment; > 0: Sinkhorn entropy weight
  m.ot_iters = 200                      # Sinkhorn iterations
  m.wm_iters = 20                       # weight-matching coordinate-descent sweeps
  return m


def mesh():
  """Devices (jax.sharding) and hosts (jax.distributed). See BUILD.md."""
  m = ml_collections.ConfigDict()
  m.num_devices = 0                     # 0: every device; n: the first n devices
  m.distributed = False                 # call jax.distributed.initialize() first
  return m
