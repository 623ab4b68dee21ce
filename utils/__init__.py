"""Training utilities. The choice names live here, free of imports, so the command-line parser
can list them without loading torch."""

OPTIMIZERS = ("sgd", "adam", "adamw", "rmsprop")                         # utils/optim.py
LR_POLICIES = ("constant_lr", "cosine_lr", "step_lr", "multistep_lr",    # utils/schedulers.py
               "long_cosine_lr")
AMP_MODES = ("none", "bf16", "fp16")                                     # utils/performance.py
ML_LOSSES = ("proxy_anchor", "multi_similarity")                         # utils/metric_loss.py
RECALL_KS = (1, 2, 4, 8, 16, 32)          # Recall@K of --task retrieval: utils/retrieval_metrics.py
