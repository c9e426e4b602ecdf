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
