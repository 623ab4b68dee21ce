"""Where datasets live and where experiments are written.

Edit the two defaults below, or set KE_DATASETS_DIR / KE_CHECKPOINTS_DIR in the environment.
"""
import os

_here = os.path.dirname(os.path.abspath(__file__))

datasets_dir = os.environ.get("KE_DATASETS_DIR", os.path.join(_here, "datasets"))
checkpoints_dir = os.environ.get("KE_CHECKPOINTS_DIR", os.path.join(_here, "checkpoints"))
