"""Where a run starts, decided once before the generation loop.

A new run starts at generation 0. A resumed one reads the experiment's results CSV (which
generations have their dense and slim rows) and the first unfinished generation's training
state: `--resume PATH`'s checkpoint when it is of that generation, else its `resume.state`,
else none (the generation trains from its beginning).
"""
import os
from dataclasses import dataclass

from errors import UserError
from trainers.experiment import Experiment
from trainers.state import TrainingState
from utils import counting
from utils.checkpoint import load_checkpoint


@dataclass
class Work:
    """What is left of one generation: training (from `state`, or from its beginning), its
    dense row, its slim row."""
    train: bool
    dense: bool
    slim: bool
    state: TrainingState | None = None


@dataclass
class Start:
    generation: int           # the first generation with work left (num_generations: none)
    first: Work               # what is left of it; every later generation has all its work left
    has_slim: bool

    def work(self, g: int) -> Work:
        return self.first if g == self.generation else Work(True, True, self.has_slim)


def where_to_start(cfg, exp: Experiment, new: bool, has_slim: bool,
                   resume_checkpoint: dict | None = None) -> Start:
    if new:
        return Start(0, Work(True, True, has_slim), has_slim)
    progress = exp.progress()
    for g in range(cfg.num_generations):
        if progress.generation_done(cfg, g):
            continue
        if g in progress.dense:
            return Start(g, Work(False, False, True), has_slim)
        state = _training_state(exp, g, resume_checkpoint, cfg.num_generations)
        trained = state is not None and state.trained(cfg.epochs)
        return Start(g, Work(not trained, True, has_slim, None if trained else state), has_slim)
    return Start(cfg.num_generations, Work(False, False, False), has_slim)


def _training_state(exp: Experiment, g: int, resume_checkpoint, generations: int) -> TrainingState | None:
    if resume_checkpoint is not None:
        if resume_checkpoint["generation"] != g:
            raise UserError(f"the checkpoint given to --resume is of "
                            f"{counting.generation(resume_checkpoint['generation'], generations)}"
                            f", but {counting.generation(g, generations)} of {exp.dir} is not "
                            "finished; resume without a path")
        return TrainingState.from_checkpoint(resume_checkpoint)
    if os.path.exists(exp.resume_state(g)):
        return TrainingState.from_checkpoint(load_checkpoint(exp.resume_state(g)))
    return None
