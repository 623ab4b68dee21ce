"""Grids of Knowledge Evolution runs, on this machine or a SLURM cluster (through submitit).

    python -m trainers.sweep --name SWEEP [--log-dir DIR] --grid FLAG=V1,V2 [--grid ...]
        [--grid_file grid.yaml] [--executor local|slurm|debug] [--parallel N] [--runs_per_gpu K]
        [slurm options] -- TRAINING FLAGS
    python -m trainers.sweep --status DIR/SWEEP [--report]

Each point of the grid is a `train_KE_cls.py` run in `<log-dir>/<SWEEP>/<point>/`. Running the
same command again skips finished points, resumes interrupted ones and leaves running ones
alone (on SLURM also those whose job is queued). When no point is left to run, the paper-style
table is written (see utils.report): by the local sweep, or on SLURM by the job that ends last.
"""
import argparse
import os
import shutil
import subprocess
import sys

import constants
from errors import UserError, one_line

EXECUTORS = ("local", "slurm", "debug")
SWEEP_FILE = "sweep.json"
# submitit asks SLURM for USR2 this many seconds before the time limit (its default, passed
# explicitly): a job needs at least twice that to save a checkpoint in time
SIGNAL_DELAY_S = 90
NAME_BYTES = 200         # a folder name, with room for what the points add below it


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UserError(message)


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return int(text)


def _minutes(text: str) -> int:
    """SLURM's time formats (M, M:S, H:M:S, D-H, D-H:M, D-H:M:S) as whole minutes, rounded up."""
    days, dash, clock = text.partition("-")
    if not dash:
        days, clock = "0", text
    try:
        parts = [int(p) for p in clock.split(":")]
        day = int(days)
    except ValueError:
        parts = []
    if dash and 1 <= len(parts) <= 3:
        hours, minutes, seconds = (parts + [0, 0])[:3]
    elif not dash and 1 <= len(parts) <= 3:
        hours, minutes, seconds = ([0, 0] + parts)[-3:] if len(parts) == 3 else \
            (0, parts[0], parts[1] if len(parts) == 2 else 0)
    else:
        raise argparse.ArgumentTypeError(f"expected minutes or HH:MM:SS, got {text!r}")
    total = day * 1440 + hours * 60 + minutes + (seconds > 0)
    if total < 1 or min(parts) < 0:
        raise argparse.ArgumentTypeError(f"expected at least one minute, got {text!r}")
    return total


def _key_value(text: str):
    key, equals, value = text.partition("=")
    if not equals or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m trainers.sweep", allow_abbrev=False,
                description=__doc__.split("\n")[0],
                epilog="Everything after -- is passed to every point's train_KE_cls.py.")
    p.add_argument("--name", help="the sweep's name: its folder under --log-dir")
    p.add_argument("--log-dir", dest="log_dir", default=None, metavar="DIR",
                   help="where the sweep folder goes (default: constants.checkpoints_dir)")
    p.add_argument("--grid", action="append", default=[], metavar="FLAG=V1,V2",
                   help="an axis: values of a training flag; on,off for a switch; A-B for the "
                        "integers A to B (repeatable)")
    p.add_argument("--grid_file", metavar="YAML",
                   help="axes and fixed flags: {grid: {FLAG: [values]}, fixed: {FLAG: value}}")
    p.add_argument("--executor", choices=EXECUTORS, default="local",
                   help="local: a pool of processes (default); slurm: one job array through "
                        "submitit; debug: one after the other in this process")
    p.add_argument("--parallel", type=_positive, metavar="N",
                   help="local: points at once (default: the visible GPUs, one each; on the CPU "
                        "the cores divided by --cpus_per_run)")
    p.add_argument("--runs_per_gpu", type=_positive, metavar="K",
                   help="points sharing one GPU at once: locally K on each visible GPU, each "
                        "with its share of the cores; on SLURM K points a job of one GPU "
                        "(default 1)")
    p.add_argument("--status", metavar="DIR/SWEEP",
                   help="print where each point stands (and a running one's GPU and slot)")
    p.add_argument("--report", action="store_true",
                   help="with --status: also write the report of the points done so far")
    g = p.add_argument_group("resources per point (slurm; --cpus_per_run also local)")
    g.add_argument("--cpus_per_run", type=_positive, metavar="N",
                   help="CPU cores (intra-op threads) of one run (default: $OMP_NUM_THREADS or 1 "
                        "locally; SLURM's default on a cluster)")
    g.add_argument("--gpus_per_run", type=_positive, metavar="N",
                   help="GPUs of one run; more than one runs it under torchrun (default: none "
                        "asked of SLURM)")
    g.add_argument("--partition", help="checked with sinfo before submitting (default: the "
                                       "cluster's default partition)")
    g.add_argument("--job_name", metavar="NAME",
                   help="the SLURM name of the sweep's jobs (default: the sweep's --name)")
    g.add_argument("--time", type=_minutes, metavar="TIME",
                   help="time limit of one job: minutes or HH:MM:SS, at least 3 minutes "
                        "(required on SLURM; a pre-empted or timed-out point is requeued with "
                        "--resume)")
    g.add_argument("--mem", help="memory of one job, such as 32G")
    g.add_argument("--account")
    g.add_argument("--qos")
    g.add_argument("--constraint")
    g.add_argument("--slurm_extra", action="append", default=[], type=_key_value,
                   metavar="KEY=VALUE", help="any other sbatch option (repeatable)")
    return p


def split_argv(argv: list[str]):
    """(sweep flags, training flags): the training flags are those after `--`."""
    if "--" in argv:
        at = argv.index("--")
        return argv[:at], argv[at + 1:]
    return argv, []


def versions() -> dict:
    from importlib import metadata
    found = {}
    for package in ("torch", "torchvision", "submitit"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = None
    try:
        found["git_commit"] = subprocess.run(["git", "rev-parse", "HEAD"], cwd=os.path.dirname(
            os.path.dirname(os.path.abspath(__file__))), capture_output=True, text=True,
            timeout=30).stdout.strip() or None
    except OSError:
        found["git_commit"] = None
    return found


def plan(args, training: list[str]):
    """(sweep folder, its description, points) for the flags, every point checked."""
    from trainers.sweep_grid import expand, parse_axis, read_grid_file
    if not args.name:
        raise UserError("--name SWEEP is required (or --status DIR/SWEEP)")
    if "/" in args.name or "\0" in args.name or args.name in (".", ".."):
        raise UserError(f"--name {args.name}: a single folder name without '/'")
    if len(args.name.encode()) > NAME_BYTES:
        raise UserError(f"--name: {len(args.name.encode())} bytes, longer than a folder name may "
                        f"be here ({NAME_BYTES}); choose a shorter name")
    axes, fixed = read_grid_file(args.grid_file) if args.grid_file else ([], [])
    axes += [parse_axis(text) for text in args.grid]
    if not axes:
        raise UserError("no grid: give at least one --grid FLAG=V1,V2 or a --grid_file")
    fixed += training
    # the log folder may be a link (a user's scratch space); nothing under it may
    sweep_dir = os.path.join(os.path.realpath(args.log_dir or constants.checkpoints_dir), args.name)
    points = expand(axes, fixed, sweep_dir)
    description = {"grid": [a.to_json() for a in axes], "fixed": fixed,
                   "points": [p.to_json() for p in points]}
    return sweep_dir, description, points


def settle(sweep_dir: str, description: dict):
    """Write sweep.json, or check that the one there describes the same sweep."""
    from trainers.sweep_state import read_json
    path = os.path.join(sweep_dir, SWEEP_FILE)
    if os.path.lexists(path):
        try:
            from utils.sweep_report import checked_description
            saved = checked_description(read_json(path), path)
        except (OSError, ValueError) as error:
            raise UserError(f"cannot read {path} ({one_line(error)}); restore it or choose "
                            "another --name") from None
        if {k: saved.get(k) for k in description} != description:
            raise UserError(f"{sweep_dir} holds a sweep of another grid or other training flags; "
                            "run the command it was started with, or choose another --name")
        return
    from trainers.experiment import check_writable
    check_writable(sweep_dir, "--log-dir")
    os.makedirs(os.path.dirname(sweep_dir), exist_ok=True)
    from utils.safe_files import real_folder
    real_folder(os.path.dirname(sweep_dir), sweep_dir)     # checked as it is created
    from utils.checkpoint import atomic_write_json
    atomic_write_json(path, dict(description, versions=versions()))


def todo(sweep_dir: str, points):
    """(argv, resume argv, name) of the points to run, and those left as they are."""
    from trainers.experiment import Experiment
    from trainers.sweep_state import DONE, RUNNING, point_states
    runs, left = [], {}
    states = point_states(sweep_dir, [p.name for p in points])
    for point in points:
        state = states[point.name]
        if state.state in (DONE, RUNNING) or state.active:
            left[point.name] = state
            continue
        started = Experiment(os.path.join(sweep_dir, point.name), point.name).started()
        runs.append((point.resume_argv if started else point.argv, point.resume_argv, point.name))
    return runs, left


def local_pool_plan(args):
    """The local pool's sweep_placement.LocalPlan on this machine's cores and visible GPUs."""
    from trainers.sweep_placement import local_plan
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    import torch
    ids = []
    if torch.cuda.is_available():
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        ids = [d for d in visible.split(",") if d] if visible else \
            [str(i) for i in range(torch.cuda.device_count())]
    omp = os.environ.get("OMP_NUM_THREADS", "1")
    return local_plan(cores, ids, args.runs_per_gpu, args.parallel, args.cpus_per_run,
                      int(omp) if omp.isdigit() and int(omp) > 0 else 1)


def packed(args) -> int:
    """The points one SLURM job runs on its one GPU (1: a job a point)."""
    return args.runs_per_gpu or 1


def check_runs_per_gpu(args):
    if args.runs_per_gpu is None:
        return
    if args.executor == "debug":
        raise UserError("--runs_per_gpu: the debug executor runs one point at a time in this "
                        "process; use it with --executor local or slurm")
    if args.executor == "slurm" and packed(args) > 1 and (args.gpus_per_run or 1) > 1:
        raise UserError(f"--runs_per_gpu {args.runs_per_gpu} puts several points on one GPU; "
                        f"with --gpus_per_run {args.gpus_per_run} drop one of the two")


def slurm_parameters(args) -> dict:
    values = {"partition": args.partition, "time": args.time, "mem": args.mem,
              "account": args.account, "qos": args.qos, "constraint": args.constraint,
              "cpus_per_task": args.cpus_per_run and args.cpus_per_run * packed(args)}
    parameters = {k: v for k, v in values.items() if v is not None}
    parameters.update(nodes=1, ntasks_per_node=1, signal_delay_s=SIGNAL_DELAY_S,
                      job_name=args.job_name or args.name)
    if args.gpus_per_run or packed(args) > 1:
        parameters["gpus_per_node"] = args.gpus_per_run or 1
    if args.slurm_extra:
        parameters["additional_parameters"] = dict(args.slurm_extra)
    return parameters


def check_slurm_request(args):
    """--time long enough for a checkpoint, a readable --job_name, and a partition (checked
    with sinfo) that exists and has the CPUs and GPUs asked for; else one line."""
    import re
    if args.time is None:
        raise UserError("--executor slurm needs --time, the time limit of one job (without it "
                        "submitit asks for 5 minutes)")
    if args.time * 60 < 2 * SIGNAL_DELAY_S:
        raise UserError(f"--time {args.time} minute(s) is too short: SLURM signals a job "
                        f"{SIGNAL_DELAY_S} s before its time limit for a checkpoint; give at "
                        f"least {-(-2 * SIGNAL_DELAY_S // 60)} minutes")
    if args.job_name is not None and not re.fullmatch(r"[A-Za-z0-9._+-]{1,128}", args.job_name):
        raise UserError(f"--job_name {args.job_name!r}: letters, digits and . _ + - only")
    try:
        out = subprocess.run(["sinfo", "--noheader", "--Node", "--format=%P|%c|%G"],
                             capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise UserError(f"--executor slurm: sinfo did not answer ({error})") from None
    if out.returncode != 0:
        why = (out.stderr.strip().splitlines() or [f"exit status {out.returncode}"])[-1]
        raise UserError(f"--executor slurm: sinfo failed ({why})")
    nodes = {}                                   # partition -> [(cpus, gpus)] of its nodes
    default = None
    for line in out.stdout.splitlines():
        fields = line.strip().split("|")
        if len(fields) != 3:
            continue
        partition, cpus, gres = fields
        if partition.endswith("*"):
            partition = default = partition[:-1]
        gpus = sum(int(n) for n in re.findall(r"gpu(?::[^:,()]+)?:(\d+)", gres))
        cpus = int(re.match(r"\d*", cpus)[0] or 0)
        nodes.setdefault(partition, []).append((cpus, gpus))
    partition = args.partition or default
    if partition is None:
        raise UserError(f"--executor slurm: the cluster has no default partition; pass "
                        f"--partition (one of: {', '.join(sorted(nodes)) or 'none'})")
    if partition not in nodes:
        raise UserError(f"--partition {partition}: no such partition on this cluster (there "
                        f"are: {', '.join(sorted(nodes)) or 'none'})")
    most_cpus = max(c for c, _ in nodes[partition])
    most_gpus = max(g for _, g in nodes[partition])
    has = f"partition {partition} has nodes of at most {most_cpus} CPUs and {most_gpus} GPUs"
    if packed(args) > 1 and most_gpus == 0:
        raise UserError(f"--runs_per_gpu {args.runs_per_gpu}: {has}; choose a --partition with "
                        "GPUs, or drop --runs_per_gpu to run a point a job on the CPU")
    if args.gpus_per_run and args.gpus_per_run > most_gpus:
        raise UserError(f"--gpus_per_run {args.gpus_per_run}: {has}; "
                        + ("drop --gpus_per_run to run on the CPU" if most_gpus == 0
                           else "ask for fewer"))
    if args.cpus_per_run and args.cpus_per_run * packed(args) > most_cpus:
        each = f" for each of --runs_per_gpu {packed(args)}" if packed(args) > 1 else ""
        raise UserError(f"--cpus_per_run {args.cpus_per_run}{each}: {has}; ask for fewer")


def print_status(sweep_dir: str) -> list:
    from trainers.sweep_state import point_states, read_sweep
    description = read_sweep(sweep_dir)
    names = [p["name"] for p in description["points"]]
    width = max(map(len, names), default=0)
    states = []
    for name, state in point_states(sweep_dir, names).items():
        states.append(state.state)
        print(f"{name:<{width}}  {state}")
    counts = {s: states.count(s) for s in dict.fromkeys(states)}
    print(", ".join(f"{n} {s}" for s, n in counts.items()) + f" (of {len(names)})")
    return states


def run_debug(points, sweep_dir: str) -> dict[str, int]:
    """Run the points one after the other in this process, each one's output also kept in its
    log, as the pool keeps it; a point stopped by a signal (Ctrl-C) stops the sweep."""
    from trainers.command import main
    from trainers.sweep_state import STOPPED, kept_output, record_exit
    codes = {}
    for argv, _, name in points:
        with kept_output(sweep_dir, name):
            codes[name] = main(list(argv))
        record_exit(sweep_dir, name, codes[name])
        if codes[name] in STOPPED:
            break
    return codes


def execute(args, sweep_dir: str, points, local=None) -> int:
    """Run the points left to run; `local`: the local pool's plan (local_pool_plan)."""
    runs, left = todo(sweep_dir, points)
    for name, state in left.items():
        print(f"{name}: {state}, left as it is")
    if args.executor == "slurm":
        from trainers.sweep_run import submit_slurm
        from trainers.sweep_state import record_jobs
        if runs:
            jobs = submit_slurm(runs, sweep_dir, slurm_parameters(args), args.gpus_per_run or 1,
                                args.cpus_per_run, packed(args))
            record_jobs(sweep_dir, {name: job.job_id for (_, _, name), job in zip(runs, jobs, strict=True)})
            shared = len({job.job_id for job in jobs})
            sharing = f" ({shared} jobs of up to {packed(args)} points on one GPU)" \
                if packed(args) > 1 else ""
            print(f"submitted {len(jobs)} point(s) as job array {jobs[0].job_id.split('_')[0]}"
                  f"{sharing}; follow them with python -m trainers.sweep --status {sweep_dir}")
        else:
            print("nothing to submit")
        return 0
    if args.executor == "debug":
        codes = run_debug(runs, sweep_dir)
        from trainers.sweep_state import STOPPED
        stopped = next((c for c in codes.values() if c in STOPPED), None)
        if stopped is not None:
            print("stopped by a signal: the point saved a resumable checkpoint; run the same "
                  "command again to resume the sweep", file=sys.stderr)
            return stopped
    else:
        from trainers.sweep_run import LocalPool
        if local.slots:
            gpus = dict.fromkeys(slot.gpu for slot in local.slots)
            print(f"{len(local.slots)} point(s) at once on GPU(s) {', '.join(gpus)}, "
                  f"{local.cpus} core(s) each; --status {sweep_dir} shows which runs where",
                  flush=True)
        pool = LocalPool(sweep_dir, local.parallel, local.cpus, local.slots,
                         progress=lambda line: print(f"{os.path.basename(sweep_dir)}: {line}",
                                                     flush=True))
        codes = pool.run([(argv, name) for argv, _, name in runs])
        if pool.stop_signal is not None:
            import signal
            print(f"stopped by {signal.Signals(pool.stop_signal).name}: the running points saved "
                  f"resumable checkpoints; run the same command again to resume the sweep",
                  file=sys.stderr)
            return 128 + pool.stop_signal
    from trainers.sweep_state import RUNNING, point_state, report_if_done
    # a point refused because another process runs its experiment did not fail: it runs there
    elsewhere = sorted(n for n, c in codes.items() if c != 0
                       and point_state(sweep_dir, n).state == RUNNING)
    for name in elsewhere:
        print(f"{name}: run by another process, left to it", file=sys.stderr)
    failed = sorted(n for n, c in codes.items() if c != 0 and n not in elsewhere)
    try:
        report_if_done(sweep_dir)
    except UserError as error:
        print(f"the sweep's report was not written: {error}", file=sys.stderr)
    if failed:
        print(f"{len(failed)} point(s) failed ({', '.join(failed)}); see python -m "
              f"trainers.sweep --status {sweep_dir}", file=sys.stderr)
        return 1
    return 0


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    own, training = split_argv(argv)
    try:
        args = build_parser().parse_args(own)
        if args.status:
            if args.name or args.grid or args.grid_file or args.runs_per_gpu:
                raise UserError("--status DIR/SWEEP takes no other sweep flag")
            print_status(os.path.abspath(args.status))
            if args.report:
                from trainers.sweep_state import write_report
                write_report(os.path.abspath(args.status))
            return 0
        if args.report:
            raise UserError("--report goes with --status DIR/SWEEP")
        sweep_dir, description, points = plan(args, training)
        check_runs_per_gpu(args)
        local = local_pool_plan(args) if args.executor == "local" else None
        if args.executor == "slurm" and shutil.which("sbatch") is None:
            raise UserError("--executor slurm: sbatch is not on this machine's PATH; submit from "
                            "a SLURM login node, or use --executor local")
        if args.executor == "slurm":
            check_slurm_request(args)
        settle(sweep_dir, description)
        from trainers.sweep_state import lock_sweep
        lock = lock_sweep(sweep_dir)
        try:
            return execute(args, sweep_dir, points, local)
        finally:
            os.close(lock)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
