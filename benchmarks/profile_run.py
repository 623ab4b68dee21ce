"""Where a training run's CPU time goes after start-up: the share spent in the network.

    python benchmarks/profile_run.py [--before] [-- flags...]

Runs `train_KE_cls.py` in this process (default: the bench_run.py case) and times, by the
training thread's CPU clock, every top-level forward pass (training and evaluation) and every
`Precision.step` (backward + optimizer step). Start-up ends at the first training forward; the
rest of the process's CPU time (all threads: the checkpoint writer and the summary plot included)
is the denominator. `--before` forces the older behaviour (the best weights tested
again when they are the last ones, the cache decoding every image again after the image check,
the resume state written after every epoch), to compare runs of the same code.
"""
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402  (after OMP_NUM_THREADS is set: torch reads it when imported)
from bench_run import DEFAULT_FLAGS  # noqa: E402  (the repository on sys.path first)
from flowers_like import DEFAULT_ROOT, ensure_dataset  # noqa: E402  (the repository on sys.path first)

from utils import performance  # noqa: E402  (the repository on sys.path first)


class NetworkClock:
    def __init__(self):
        self.depth, self.entered = 0, 0.0
        self.forward = {"train": 0.0, "eval": 0.0}
        self.step = 0.0
        self.startup_cpu = None

    def pre(self, module, args):
        if self.depth == 0:
            if self.startup_cpu is None and module.training and torch.is_grad_enabled():
                self.startup_cpu = time.process_time()
            self.entered = time.thread_time()
        self.depth += 1

    def post(self, module, args, output):
        self.depth -= 1
        if self.depth == 0:
            self.forward["train" if module.training else "eval"] += time.thread_time() - self.entered


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    before = "--before" in argv[:argv.index("--") if "--" in argv else len(argv)]
    flags = argv[argv.index("--") + 1:] if "--" in argv else DEFAULT_FLAGS + [
        "--data", ensure_dataset(DEFAULT_ROOT)]
    if before:
        import data.cache
        import trainers.knowledge_evolution
        trainers.knowledge_evolution.SKIP_TEST_OF_SAME_WEIGHTS = False
        data.cache.KEEP_CHECKED_DECODES = False
        flags = flags + ["--save_every_minutes", "0"]
    clock = NetworkClock()
    torch.nn.modules.module.register_module_forward_pre_hook(clock.pre)
    torch.nn.modules.module.register_module_forward_hook(clock.post)
    plain_step = performance.Precision.step

    def timed_step(self, loss, optimizer):
        start = time.thread_time()
        try:
            return plain_step(self, loss, optimizer)
        finally:
            clock.step += time.thread_time() - start

    performance.Precision.step = timed_step
    import train_KE_cls
    with tempfile.TemporaryDirectory() as log_dir:
        code = train_KE_cls.main(flags + ["--log-dir", log_dir, "--name", "profile"])
    end = time.process_time()
    if code != 0 or clock.startup_cpu is None:
        sys.exit(f"the run failed (exit {code})")
    after = end - clock.startup_cpu
    network = clock.forward["train"] + clock.step + clock.forward["eval"]
    print("# flags: " + " ".join(flags) + (" (--before)" if before else ""))
    print(f"start-up CPU {clock.startup_cpu:.1f} s; after start-up {after:.1f} s, of which "
          f"train forward {clock.forward['train']:.1f} s, backward + step {clock.step:.1f} s, "
          f"eval forward {clock.forward['eval']:.1f} s")
    print(f"network share of the CPU time after start-up: {100 * network / after:.1f}%; "
          f"beyond the network {after - network:.1f} s; total CPU {end:.1f} s")


if __name__ == "__main__":
    main()
