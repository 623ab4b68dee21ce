"""How long the default test suite takes and how much disk its temporary folders hold at once.

    python benchmarks/bench_suite.py [pytest arguments, e.g. -x or tests/test_resume.py]

Runs `python -m pytest -q` (pytest.ini's default selection) in a fresh temporary base folder,
with a plugin (suite_disk.py) that walks that folder every 0.25 s and after every test. Sizes
are allocated blocks, a hard-linked file counted once. Prints the wall time, the peak and the
test running at the peak, the largest peak per module, and what is left once the suite ends.
"""
import json
import os
import subprocess
import sys
import tempfile
import time

from suite_disk import disk_use

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main(argv):
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
        start = time.perf_counter()
        result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - start
        summary = [line for line in result.stdout.splitlines()
                   if " passed" in line or " failed" in line]
        left = disk_use(basetemp) if os.path.isdir(basetemp) else 0
        with open(report) as f:
            peaks = json.load(f)
    print(f"# {' '.join(command[2:])}  (cpu cores usable: {len(os.sched_getaffinity(0))})")
    print(f"suite: {summary[-1].strip('= ') if summary else 'no summary line'}; "
          f"exit {result.returncode}")
    test, peak = max(peaks.items(), key=lambda item: item[1])
    print(f"wall {wall:.0f} s; peak temporary disk {peak / 1e6:.0f} MB during {test}; "
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
