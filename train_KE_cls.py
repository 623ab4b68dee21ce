"""Knowledge Evolution training: `python train_KE_cls.py [flags]` (see --help).

With no flag it runs the paper's Flowers-102 recipe: Split_ResNet18, split rate 0.5, 5
generations of 200 epochs. `--set SyntheticShapes` runs a built-in demo dataset instead.
"""
import sys

from trainers.command import main

if __name__ == "__main__":
    sys.exit(main())
