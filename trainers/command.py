"""The training command's one run: parse the flags, train (or --evaluate / --export_slim),
and turn bad input into one line with exit status 2 (an interrupted run: 128 + the signal).
Entry points call `main`: train_KE_cls.py, and trainers/sweep.py's debug executor."""
import logging
import sys


def main(argv=None) -> int:
    try:
        return _main(argv)
    except KeyboardInterrupt:  # Ctrl-C before training installed its own handler
        print("interrupted", file=sys.stderr)
        return 130


def _main(argv) -> int:
    from configs.base_config import Config  # the trainers import torch, which takes seconds
    from data import DataError  # torch-free, as data.precheck
    from errors import UserError

    cfg = Config().parse(argv)
    from data.precheck import precheck
    try:
        precheck(cfg)                   # paths and layout, before torch is imported
    except DataError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    from utils.distributed import launched_rank
    main_process = launched_rank() == 0  # under torchrun only rank 0 reports
    logging.basicConfig(level=logging.INFO if main_process else logging.WARNING,
                        format="%(asctime)s %(message)s", datefmt="%H:%M:%S", stream=sys.stdout)
    from trainers.knowledge_evolution import run
    from trainers.signals import Interrupted
    try:
        if cfg.evaluate or cfg.export_slim:  # trainers.tools imports torchvision (data/formats.py)
            from trainers.tools import evaluate_checkpoint, export_checkpoint
            (evaluate_checkpoint if cfg.evaluate else export_checkpoint)(cfg)
        else:
            run(cfg)
    except (UserError, DataError) as error:
        if main_process:
            print(f"error: {error}", file=sys.stderr)
        return 2
    except Interrupted as stop:
        if main_process:
            print(stop, file=sys.stderr)
        return 128 + stop.signal_number
    return 0
