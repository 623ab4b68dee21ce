"""The hand-written architectures: `split_*.py` registers each one with `@hand_written` where it
defines it (the key is the function's name, the --arch name); models/registry.py checks the table
against models/names.py."""
from layers.registry import register

HAND_WRITTEN_ARCHS = {}     # --arch name -> (builder, num_classes) -> dense model
hand_written = register(HAND_WRITTEN_ARCHS)
