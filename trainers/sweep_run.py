"""Running a sweep's points: one `train_KE_cls.py` process per point, on a local pool, as a
SLURM job array through submitit (the debug executor, in-process, is in trainers.sweep).

With `--runs_per_gpu K` > 1 on SLURM, one job of the array runs K points at once on its one GPU
(`PackJob`): each point its own training process with 1/K of the job's CPUs; each point's exit
is recorded as it ends, and a pre-emption saves and requeues only the points that had not ended.

Pre-emption on SLURM: submitit asks sbatch for `--signal=USR2@<signal_delay_s>` and its job
process handles SIGUSR2 by calling the job's `checkpoint()` and requeueing. `PointJob.checkpoint`
sends SIGTERM to the training child (which SLURM's USR2 must not kill: the child ignores it),
waits until the child has saved its resumable checkpoint and exited, and hands submitit the same
point with `--resume` (or, when it was stopped before its experiment folder existed, as it
was first given). A clean requeue is logged as one INFO line; when the last point's job ends,
the job writes the sweep's report (trainers.sweep_state.report_when_over, under a lock).

Threads: a job of C CPUs (`--cpus_per_run`, else SLURM's allocation) gives its training run
`--num_threads` W loader workers (C // 2 unless the training flags set it) and C - W intra-op
threads (OMP_NUM_THREADS, at least 1).
"""
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Sequence

from submitit.helpers import Checkpointable, DelayedSubmission

from trainers.sweep_state import clear_exit, open_output, output_path, record_exit, record_place

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = os.path.join(ROOT, "train_KE_cls.py")


def command(argv: Sequence[str], gpus: int = 1) -> list[str]:
    """The training command of a point: torchrun with one process per GPU when `gpus` > 1."""
    if gpus > 1:
        return [sys.executable, "-m", "torch.distributed.run", "--standalone",
                f"--nproc_per_node={gpus}", TRAIN, *argv]
    return [sys.executable, TRAIN, *argv]


WORKER_FLAGS = ("--num_threads", "-t")


def given_workers(argv: Sequence[str]) -> int | None:
    """The loader workers the training flags set (`--num_threads W`, `-t W`, `--num_threads=W`)."""
    found = None
    for i, arg in enumerate(argv):
        flag, equals, value = arg.partition("=")
        if flag in WORKER_FLAGS:
            value = value if equals else (argv[i + 1] if i + 1 < len(argv) else "")
            found = int(value) if value.isdigit() else found
    return found


def job_cpus(cpus: int | None) -> int:
    """The CPUs of this job: asked for (--cpus_per_run), else SLURM's allocation, else 1."""
    if cpus:
        return cpus
    for name in ("SLURM_CPUS_PER_TASK", "SLURM_CPUS_ON_NODE"):
        value = os.environ.get(name, "")
        if value.isdigit() and int(value) > 0:
            return int(value)
    return 1


def split_cpus(argv: Sequence[str], cpus: int):
    """(argv with the loader workers set, intra-op threads) for a run of `cpus` CPUs."""
    workers = given_workers(argv)
    argv = list(argv)
    if workers is None:
        workers = cpus // 2
        argv += ["--num_threads", str(workers)]
    return argv, max(1, cpus - workers)


def _ignore_preemption_signal():
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)


def start(argv: Sequence[str], sweep_dir: str, name: str, gpus: int = 1,
          env: dict[str, str] | None = None, new_session: bool = False) -> subprocess.Popen:
    """Start a point's training process, its output appended to `<sweep>/logs/<name>.log`."""
    with open_output(sweep_dir, name) as out:   # creates logs/, refusing links
        clear_exit(sweep_dir, name)
        return subprocess.Popen(command(argv, gpus), stdout=out, stderr=subprocess.STDOUT,
                                env=env, start_new_session=new_session,
                                preexec_fn=_ignore_preemption_signal)


def wait_without_reaping(pid: int | None = None) -> int:
    """Block until a child (`pid`, or any) has ended, leaving it to its Popen to reap; return
    its pid. A signal handler may run (and reap it) meanwhile."""
    while True:
        try:
            result = os.waitid(os.P_PID if pid else os.P_ALL, pid or 0, os.WEXITED | os.WNOWAIT)
        except ChildProcessError:
            return pid or 0
        if result is not None:
            return result.si_pid


class PointJob(Checkpointable):
    """A submitit job: run one point to its end; on pre-emption save it and requeue it."""

    def __init__(self):
        self.child = None

    def __getstate__(self):
        return {"child": None}

    def __call__(self, argv: list[str], resume_argv: list[str], sweep_dir: str, name: str,
                 gpus: int = 1, cpus: int | None = None) -> int:
        from trainers.experiment import Experiment
        if Experiment(os.path.join(sweep_dir, name), name).started():
            argv = resume_argv             # requeued, or run again after a scancel
        argv, threads = split_cpus(argv, job_cpus(cpus))
        try:
            import torch
            torch.set_num_threads(threads)
        except ImportError:
            pass
        env = dict(os.environ, OMP_NUM_THREADS=str(threads))
        self.child = start(argv, sweep_dir, name, gpus, env=env)
        wait_without_reaping(self.child.pid)
        code = self.child.wait()
        record_exit(sweep_dir, name, code)
        from trainers.sweep_state import report_when_over
        report_when_over(sweep_dir, name)
        if code != 0:
            raise RuntimeError(f"point {name} exited with status {code}; see "
                               f"{output_path(sweep_dir, name)}")
        return code

    def checkpoint(self, argv, resume_argv, sweep_dir, name, gpus=1, cpus=None
                   ) -> DelayedSubmission:
        where = "before it started"
        if self.child is not None and self.child.poll() is None:
            self.child.send_signal(signal.SIGTERM)
            record_exit(sweep_dir, name, self.child.wait())
            where = stopped_where(sweep_dir, name)
        logging.getLogger("submitit").info(f"point {name}: {where}, saved and requeued")
        return DelayedSubmission(PointJob(), argv, resume_argv, sweep_dir, name, gpus, cpus)


def stopped_where(sweep_dir: str, name: str) -> str:
    """"generation G, epoch E" where the point's resumable checkpoint continues."""
    from trainers.experiment import Experiment
    from trainers.sweep_state import _stopped_at, saved_config
    exp = Experiment(os.path.join(sweep_dir, name), name)
    try:
        return _stopped_at(exp, saved_config(exp)) if exp.started() else "before its first epoch"
    except (OSError, ValueError):
        return "its settings unreadable"


class PackJob(Checkpointable):
    """A submitit job of several points sharing the job's GPU: each its own training process
    with an equal share of the job's CPUs, started together, its exit recorded as it ends; on
    pre-emption the points still running are saved and requeued (those that ended are not)."""

    def __init__(self):
        self.children = {}                 # name -> Popen

    def __getstate__(self):
        return {"children": {}}

    def __call__(self, points: list[tuple[list[str], list[str], str]], sweep_dir: str,
                 cpus: int | None = None) -> int:
        """`cpus`: those of each point (--cpus_per_run), else SLURM's allocation shared."""
        from trainers.experiment import Experiment
        share = cpus or max(1, job_cpus(None) // len(points))
        gpu = os.environ.get("CUDA_VISIBLE_DEVICES", "")
        for slot, (argv, resume_argv, name) in enumerate(points):
            if Experiment(os.path.join(sweep_dir, name), name).started():
                argv = resume_argv
            argv, threads = split_cpus(argv, share)
            record_place(sweep_dir, name, f"GPU {gpu}, slot {slot}" if gpu else f"slot {slot}")
            self.children[name] = start(argv, sweep_dir, name,
                                        env=dict(os.environ, OMP_NUM_THREADS=str(threads)))
        codes = {}
        while len(codes) < len(self.children):
            pid = wait_without_reaping()
            ended = [n for n, c in self.children.items() if c.pid == pid and n not in codes]
            if not ended:                  # a child of someone else in this process
                os.waitpid(pid, 0)
                continue
            codes[ended[0]] = self.children[ended[0]].wait()
            record_exit(sweep_dir, ended[0], codes[ended[0]])
        from trainers.sweep_state import report_when_over
        report_when_over(sweep_dir, *codes)
        failed = [f"{n} (status {c})" for n, c in codes.items() if c != 0]
        if failed:
            raise RuntimeError(f"point(s) {', '.join(failed)} failed; see "
                               f"{os.path.join(sweep_dir, 'logs')}")
        return 0

    def checkpoint(self, points, sweep_dir, cpus=None) -> DelayedSubmission | None:
        running = {n: c for n, c in self.children.items() if c.poll() is None}
        for child in running.values():
            child.send_signal(signal.SIGTERM)
        left = []
        for point in points:
            name = point[2]
            if name in running:
                record_exit(sweep_dir, name, running[name].wait())
                where = stopped_where(sweep_dir, name)
            elif name in self.children:    # it ended (done or failed) before the signal
                record_exit(sweep_dir, name, self.children[name].returncode)
                continue
            else:
                where = "before it started"
            logging.getLogger("submitit").info(f"point {name}: {where}, saved and requeued")
            left.append(point)
        return DelayedSubmission(PackJob(), left, sweep_dir, cpus) if left else None


def submit_slurm(points, sweep_dir: str, parameters: dict, gpus: int,
                 cpus: int | None = None, runs_per_gpu: int = 1) -> list:
    """Submit the points (argv, resume argv, name) as one job array, one point a job or, with
    `runs_per_gpu` K > 1, K points a job (`PackJob`, `cpus` each); return the submitit jobs, in
    the order of the points (a job once for each of its points)."""
    import shlex

    import submitit

    from utils.safe_files import real_folder
    real_folder(os.path.dirname(sweep_dir), os.path.join(sweep_dir, "submitit"))  # no link there
    executor = submitit.SlurmExecutor(folder=os.path.join(sweep_dir, "submitit", "%j"))
    setup = [f"export PYTHONPATH={shlex.quote(ROOT)}${{PYTHONPATH:+:$PYTHONPATH}}"]
    executor.update_parameters(setup=setup, **parameters)
    for point in points:
        clear_exit(sweep_dir, point[2])    # an exit status there would be an earlier run's
    if runs_per_gpu > 1:
        packs = [list(points[i:i + runs_per_gpu]) for i in range(0, len(points), runs_per_gpu)]
        jobs = executor.map_array(PackJob(), packs, [sweep_dir] * len(packs),
                                  [cpus] * len(packs))
        return [job for job, pack in zip(jobs, packs, strict=True) for _ in pack]
    job = PointJob()
    return executor.map_array(job, [p[0] for p in points], [p[1] for p in points],
                              [sweep_dir] * len(points), [p[2] for p in points],
                              [gpus] * len(points), [cpus] * len(points))


class LocalPool:
    """Up to `parallel` points at once as child processes, each in its own session (a
    terminal's Ctrl-C reaches only the pool, which forwards it once to every child).

    `slots`: the GPU slots (trainers.sweep_placement) a running point takes one of: its GPU
    pinned with CUDA_VISIBLE_DEVICES, its `cpus` split into loader workers and intra-op threads
    (`split_cpus`), its slot recorded for --status. None on the CPU: `cpus` intra-op threads.
    """

    def __init__(self, sweep_dir: str, parallel: int, cpus: int, slots=None, progress=print):
        self.sweep_dir, self.parallel, self.cpus = sweep_dir, parallel, cpus
        self.slots = list(slots) if slots else None
        self.free_slots = list(slots) if slots else None
        self.progress = progress
        self.running = {}                  # pid -> (Popen, name, slot)
        self.codes = {}
        self.stop_signal = None

    def _forward(self, signum, frame):
        self.stop_signal = self.stop_signal or signum
        for proc, _, _ in self.running.values():
            if proc.poll() is None:
                proc.send_signal(signum)

    def _launch(self, argv, name):
        env, slot, threads = dict(os.environ), None, self.cpus
        if self.free_slots is not None:
            slot = self.free_slots.pop(0)
            argv, threads = split_cpus(argv, self.cpus)
            env["CUDA_VISIBLE_DEVICES"] = slot.gpu
            record_place(self.sweep_dir, name, str(slot))
        env["OMP_NUM_THREADS"] = str(threads)
        proc = start(argv, self.sweep_dir, name, env=env, new_session=True)
        self.running[proc.pid] = (proc, name, slot)

    def _reap_one(self):
        pid = wait_without_reaping()
        if pid not in self.running:          # a child of someone else in this process
            os.waitpid(pid, 0)
            return
        proc, name, slot = self.running.pop(pid)
        self.codes[name] = proc.wait()
        record_exit(self.sweep_dir, name, self.codes[name])
        if slot is not None:               # back in its place: the least shared GPU first
            self.free_slots = sorted(self.free_slots + [slot], key=self.slots.index)

    def line(self, pending: int) -> str:
        done = sum(c == 0 for c in self.codes.values())
        failed = len(self.codes) - done
        return f"{done} done, {len(self.running)} running, {failed} failed, {pending} pending"

    def run(self, points) -> dict[str, int]:
        """Run `points` (argv, name); return {name: exit status} of those that ran."""
        queue = list(points)
        previous = {s: signal.signal(s, self._forward) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            while queue or self.running:
                while queue and len(self.running) < self.parallel and self.stop_signal is None:
                    self._launch(*queue.pop(0))
                self.progress(self.line(len(queue)))
                if not self.running:
                    break
                self._reap_one()
            self.progress(self.line(len(queue)))
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
        return self.codes
