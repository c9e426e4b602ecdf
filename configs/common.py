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


def oml():
  """Online meta-learning (`oml`, follow-the-meta-leader, Finn et al. 2019).

  Owned by dfl2l_jax/methods/maml.py; the inner loop, meta-batch and Adam settings
  come from `maml`. Total meta-steps: |S| x steps_per_arrival.
  """
  o = ml_collections.ConfigDict()
  o.steps_per_arrival = 10              # meta-steps on the buffer after each arrival
  o.first_order = False                 # FTML's objective is MAML's; second order is cheap here
  return o


def merging():
  """Model merging baselines: task_arithmetic, ties (methods/merging.py), ota,
  weight_matching (methods/ot_fusion.py, methods/weight_matching.py), mfgp (methods/mfgp.py)."""
  m = ml_collections.ConfigDict()
  m.ta_scales = (0.25, 0.5, 1.0, 2.0, 4.0)  # lambda = scale / |S|; chosen on Q
  m.ties_density = 0.2                  # fraction of each task vector's entries kept (top-k)
  m.ties_scales = (0.0625, 0.125, 0.25, 0.5, 1.0)  # lambda = scale (TIES' multiplier)
  # How task_arithmetic and ties choose lambda on Q: "likelihood" (data-free, Eq. 2)
  # or "zoo_data" (loss on the Q models' own training data; not data-free).
  m.scale_criterion = "likelihood"
  m.mfgp_descriptor_dim = 4             # PCA dimensions of the stand-in task descriptors
  m.mfgp_fit_steps = 300                # Adam steps on the GP log marginal likelihood
  m.mfgp_fit_lr = 0.05
  # ota and weight_matching (methods/ot_fusion.py, methods/weight_matching.py):
  m.ot_reg = 0.0                        # 0: exact assignment; > 0: Sinkhorn entropy weight
                                        # (relative to the mean ground cost)
  m.ot_iters = 5000                     # at most this many Sinkhorn iterations (stops at 1e-3)
  m.wm_iters = 20                       # weight-matching coordinate-descent sweeps (at most)
  m.wm_init = "identity"                # weight matching starts from: identity | ota
  m.align_reference = "closest_to_mean"  # model aligned to: closest_to_mean | first (S[0])
  m.align_rounds = 1                    # > 1: realign every model to the last fused average
  return m


def zoo_features():
  """The zoo as a frozen feature ensemble (methods/zoo_features.py)."""
  z = ml_collections.ConfigDict()
  # Ridge strength relative to the mean feature energy, chosen per shot count on
  # meta-validation pseudo tasks (the Q models label random inputs), never on test tasks.
  z.ridge_grid = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)
  z.val_query = 100                     # pseudo-query inputs per meta-validation model
  z.val_repeats = 5                     # pseudo tasks per meta-validation model
  return z


def zoo_maml():
  """MAML on pseudo tasks labelled by the zoo (methods/maml.py, zoo_maml); its steps,
  batches and rates are config.maml's."""
  z = ml_collections.ConfigDict()
  z.start = "va"                        # va: from the zoo's average | random
  z.first_order = False                 # second-order meta-gradient by default
  return z


def zoo_distill():
  """One network distilled from the zoo on pseudo-inputs (methods/zoo_distill.py)."""
  z = ml_collections.ConfigDict()
  z.steps = 3000                        # Adam steps
  z.batch_size = 64                     # pseudo-inputs per step, shared by every head
  z.lr = 1e-3
  z.chunk_steps = 500                   # steps per compiled chunk (and checkpoint)
  return z


def inversion():
  """Model inversion of the zoo's CNNs, DeepInversion (dfl2l_jax/inversion.py).

  Defaults after Yin et al. 2020's CIFAR settings where they carry over (Adam on the
  images, jitter and flips, TV and L2 priors, a BatchNorm term); steps and images are
  cut for the CPU. Chosen a priori, never on test tasks.
  """
  i = ml_collections.ConfigDict()
  i.images_per_class = 10               # synthetic images per class of each zoo model
  i.steps = 300                         # Adam steps on the images
  i.lr = 0.1
  i.bn_weight = 0.05                    # BatchNorm-statistics matching
  i.tv_weight = 1e-3                    # total variation (smoothness)
  i.l2_weight = 1e-4
  i.jitter = 2                          # random circular shift, pixels each way
  i.flip = True                         # random horizontal flip
  i.chunk_steps = 50                    # steps per compiled chunk (and checkpoint)
  return i


def inversion_maml():
  """MAML on pseudo episodes of inverted images (methods/inversion_maml.py); its steps,
  batches and rates are config.maml's."""
  z = ml_collections.ConfigDict()
  z.start = "va"                        # va: from the zoo's average | random
  z.first_order = False
  z.label_perms = 8                     # label permutations per zoo model
  return z


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
