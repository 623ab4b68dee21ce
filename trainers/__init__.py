"""The training loop and what runs it. The choice names live here, free of imports, so the
command-line parser can list them without loading torch."""

AMP_MODES = ("none", "bf16", "fp16")        # trainers/performance.py: mixed precision
