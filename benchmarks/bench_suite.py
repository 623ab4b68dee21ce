"""How long the default test suite takes, in wall and CPU time, and how much disk it holds.

    python benchmarks/bench_suite.py [--output FILE] [pytest arguments, e.g. -n auto or -x]

Runs `python -m pytest -q` (pytest.ini's default selection) in a fresh temporary base folder,
with a plugin (suite_disk.py) that walks that folder every 0.25 s and after every test. Sizes
are allocated blocks, a hard-linked file counted once. Prints the wall time, the CPU time of
pytest and every process it started (user + system, xdist workers included), the load average
before and after (a busy machine stretches both), the peak disk and the test running at the
peak, the largest peak per module, and what is left once the suite ends. `--output FILE` keeps
pytest's own output (with `--durations=N`: the slowest tests).
"""
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

from suite_disk import disk_use

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def children_cpu_seconds():
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main(argv):
    output = None
    if argv[:1] == ["--output"]:
        output, argv = argv[1], argv[2:]
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="ke-suite-") as scratch:
        basetemp = os.path.join(scratch, "basetemp")
        report = os.path.join(scratch, "peaks.json")
        here = os.path.dirname(os.path.abspath(__file__))
        env = dict(os.environ, KE_SUITE_BASETEMP=basetemp, KE_SUITE_REPORT=report,
                   PYTHONPATH=os.pathsep.join(filter(None, [here, os.environ.get("PYTHONPATH")])))
        # --basetemp makes pytest use (and first empty) this folder; the retention policy of
        # pytest.ini still applies, so what is left at the end is what a failed test kept
        command = [sys.executable, "-m", "pytest", "-q", "-p", "suite_disk",
                   f"--basetemp={basetemp}", *argv]
        start, cpu_start = time.perf_counter(), children_cpu_seconds()
        result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
        wall, cpu = time.perf_counter() - start, children_cpu_seconds() - cpu_start
        if output:
            with open(output, "w") as f:
                f.write(result.stdout + result.stderr)
        summary = [line for line in result.stdout.splitlines()
                   if " passed" in line or " failed" in line]
        left = disk_use(basetemp) if os.path.isdir(basetemp) else 0
        with open(report) as f:
            peaks = json.load(f)
    print(f"# {' '.join(command[2:])}  (cpu cores usable: {len(os.sched_getaffinity(0))})")
    print(f"suite: {summary[-1].strip('= ') if summary else 'no summary line'}; "
          f"exit {result.returncode}")
    test, peak = max(peaks.items(), key=lambda item: item[1])
    load_after = os.getloadavg()
    print(f"wall {wall:.0f} s; cpu {cpu:.0f} s; load average (1, 5, 15 min) before "
          f"{load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}, after "
          f"{load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f}")
    print(f"peak temporary disk {peak / 1e6:.0f} MB during {test}; "
          f"left after the run {left / 1e6:.0f} MB")
    modules = {}
    for name, size in peaks.items():
        module = name.split("::")[0]
        modules[module] = max(modules.get(module, 0), size)
    print("largest peaks by module (MB):")
    for module, size in sorted(modules.items(), key=lambda item: -item[1])[:10]:
        print(f"  {size / 1e6:7.0f}  {module}")
    return result.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
