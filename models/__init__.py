"""Architectures built from split layers: the hand-written ones (split_*.py) and any torchvision
CNN split from its torch.fx graph (graph_split.py), registered in registry.py and named in
names.py (free of imports, so the command-line parser lists them without loading torch)."""
