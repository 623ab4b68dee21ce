"""Where a local sweep's points run and with how many cores (torch-free, pure).

On GPUs each visible GPU offers `--runs_per_gpu K` slots; a point takes a free slot, and the
slots are ordered so that the points spread over the GPUs before two share one. Every run gets
an equal share of the usable cores. On the CPU there are no slots: `--parallel` and
`--cpus_per_run` decide, as they always have.
"""
from collections.abc import Sequence
from typing import NamedTuple

from errors import UserError


class Slot(NamedTuple):
    """One of the K places on a GPU (`gpu`: its id in CUDA_VISIBLE_DEVICES' numbering)."""
    gpu: str
    index: int

    def __str__(self):
        return f"GPU {self.gpu}, slot {self.index}"


class LocalPlan(NamedTuple):
    parallel: int                  # points at once
    cpus: int                      # cores of one run
    slots: list[Slot] | None    # the GPU slots, one a running point; None on the CPU


def gpu_slots(gpu_ids: Sequence[str], runs_per_gpu: int) -> list[Slot]:
    """K slots a GPU, slot 0 of every GPU first."""
    return [Slot(gpu, k) for k in range(runs_per_gpu) for gpu in gpu_ids]


def local_plan(cores: int, gpu_ids: Sequence[str], runs_per_gpu: int | None,
               parallel: int | None, cpus_per_run: int | None,
               omp_threads: int) -> LocalPlan:
    """The local pool's plan: `gpu_ids` the visible GPUs (empty on the CPU), the other
    arguments the sweep's flags (None when not given); UserError for a plan that cannot be."""
    if not gpu_ids:
        if runs_per_gpu and runs_per_gpu > 1:
            raise UserError(f"--runs_per_gpu {runs_per_gpu}: no CUDA device is visible; on the "
                            "CPU --parallel N sets how many points run at once")
        threads = cpus_per_run or omp_threads
        return LocalPlan(parallel or max(1, cores // threads), threads, None)
    slots = gpu_slots(gpu_ids, runs_per_gpu or 1)
    if parallel and parallel > len(slots):
        raise UserError(f"--parallel {parallel}: more points at once than the {len(gpu_ids)} "
                        f"GPU(s) x {runs_per_gpu or 1} run(s) each; give --runs_per_gpu "
                        f"{-(-parallel // len(gpu_ids))} to share each GPU, or a smaller "
                        "--parallel")
    slots = slots[:parallel or len(slots)]
    return LocalPlan(len(slots), cpus_per_run or max(1, cores // len(slots)), slots)
