"""Running a sweep's points: one `train_KE_cls.py` process per point, on a local pool, as a
SLURM job array through submitit (the debug executor, in-process, is in trainers.sweep).

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
from typing import Dict, List, Optional, Sequence

from submitit.helpers import Checkpointable, DelayedSubmission

from trainers.sweep_state import exit_path, open_output, output_path, record_exit

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = os.path.join(ROOT, "train_KE_cls.py")


def command(argv: Sequence[str], gpus: int = 1) -> List[str]:
    """The training command of a point: torchrun with one process per GPU when `gpus` > 1."""
    if gpus > 1:
        return [sys.executable, "-m", "torch.distributed.run", "--standalone",
                f"--nproc_per_node={gpus}", TRAIN, *argv]
    return [sys.executable, TRAIN, *argv]


WORKER_FLAGS = ("--num_threads", "-t")


def given_workers(argv: Sequence[str]) -> Optional[int]:
    """The loader workers the training flags set (`--num_threads W`, `-t W`, `--num_threads=W`)."""
    found = None
    for i, arg in enumerate(argv):
        flag, equals, value = arg.partition("=")
        if flag in WORKER_FLAGS:
            value = value if equals else (argv[i + 1] if i + 1 < len(argv) else "")
            found = int(value) if value.isdigit() else found
    return found


def job_cpus(cpus: Optional[int]) -> int:
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
          env: Optional[Dict[str, str]] = None, new_session: bool = False) -> subprocess.Popen:
    """Start a point's training process, its output appended to `<sweep>/logs/<name>.log`."""
    with open_output(sweep_dir, name) as out:   # creates logs/, refusing links
        if os.path.lexists(exit_path(sweep_dir, name)):
            os.remove(exit_path(sweep_dir, name))     # a link is removed, never followed
        return subprocess.Popen(command(argv, gpus), stdout=out, stderr=subprocess.STDOUT,
                                env=env, start_new_session=new_session,
                                preexec_fn=_ignore_preemption_signal)


def wait_without_reaping(pid: Optional[int] = None) -> int:
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

    def __call__(self, argv: List[str], resume_argv: List[str], sweep_dir: str, name: str,
                 gpus: int = 1, cpus: Optional[int] = None) -> int:
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


def submit_slurm(points, sweep_dir: str, parameters: dict, gpus: int,
                 cpus: Optional[int] = None) -> list:
    """Submit the points (each with its argv) as one job array; return the submitit jobs."""
    import shlex

    import submitit
    from utils.safe_files import real_folder
    real_folder(os.path.dirname(sweep_dir), os.path.join(sweep_dir, "submitit"))  # no link there
    executor = submitit.SlurmExecutor(folder=os.path.join(sweep_dir, "submitit", "%j"))
    setup = [f"export PYTHONPATH={shlex.quote(ROOT)}${{PYTHONPATH:+:$PYTHONPATH}}"]
    executor.update_parameters(setup=setup, **parameters)
    job = PointJob()
    return executor.map_array(job, [p[0] for p in points], [p[1] for p in points],
                              [sweep_dir] * len(points), [p[2] for p in points],
                              [gpus] * len(points), [cpus] * len(points))


class LocalPool:
    """Up to `parallel` points at once as child processes, each in its own session (a
    terminal's Ctrl-C reaches only the pool, which forwards it once to every child).

    `devices`: GPU ids to pin one run each to (CUDA_VISIBLE_DEVICES), or None on the CPU.
    """

    def __init__(self, sweep_dir: str, parallel: int, threads: int, devices=None,
                 progress=print):
        self.sweep_dir, self.parallel, self.threads = sweep_dir, parallel, threads
        self.free_devices = list(devices) if devices else None
        self.progress = progress
        self.running = {}                  # pid -> (Popen, name, device)
        self.codes = {}
        self.stop_signal = None

    def _forward(self, signum, frame):
        self.stop_signal = self.stop_signal or signum
        for proc, _, _ in self.running.values():
            if proc.poll() is None:
                proc.send_signal(signum)

    def _env(self, device) -> Dict[str, str]:
        env = dict(os.environ, OMP_NUM_THREADS=str(self.threads))
        if device is not None:
            env["CUDA_VISIBLE_DEVICES"] = str(device)
        return env

    def _launch(self, argv, name):
        device = self.free_devices.pop(0) if self.free_devices is not None else None
        proc = start(argv, self.sweep_dir, name, env=self._env(device), new_session=True)
        self.running[proc.pid] = (proc, name, device)

    def _reap_one(self):
        pid = wait_without_reaping()
        if pid not in self.running:          # a child of someone else in this process
            os.waitpid(pid, 0)
            return
        proc, name, device = self.running.pop(pid)
        self.codes[name] = proc.wait()
        record_exit(self.sweep_dir, name, self.codes[name])
        if device is not None:
            self.free_devices.append(device)

    def line(self, pending: int) -> str:
        done = sum(c == 0 for c in self.codes.values())
        failed = len(self.codes) - done
        return f"{done} done, {len(self.running)} running, {failed} failed, {pending} pending"

    def run(self, points) -> Dict[str, int]:
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
