"""pytest plugin of bench_suite.py: the peak disk use of the temporary base folder per test."""
import json
import os
import threading

import pytest


def disk_use(folder):
    """Bytes allocated under `folder`, each inode once (hard links share their blocks)."""
    seen, total = set(), 0
    for parent, _, names in os.walk(folder):
        for name in names:
            try:
                info = os.lstat(os.path.join(parent, name))
            except OSError:
                continue                            # removed while we walked
            if (info.st_dev, info.st_ino) not in seen:
                seen.add((info.st_dev, info.st_ino))
                total += info.st_blocks * 512
    return total


class DiskWatch:
    """Samples the folder's size in a thread and after each test; keeps the peak per test."""

    def __init__(self, folder, out):
        self.folder, self.out, self.current = folder, out, "(collection)"
        self.peaks, self.done = {}, threading.Event()
        self.thread = threading.Thread(target=self.watch, daemon=True)
        self.thread.start()

    def sample(self):
        size, test = disk_use(self.folder), self.current
        if size > self.peaks.get(test, -1):
            self.peaks[test] = size

    def watch(self):
        while not self.done.wait(0.25):
            self.sample()

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_protocol(self, item):
        self.current = item.nodeid
        yield
        self.sample()

    def pytest_unconfigure(self):
        self.done.set()
        self.thread.join()
        with open(self.out, "w") as f:
            json.dump(self.peaks, f)


def pytest_configure(config):
    config.pluginmanager.register(DiskWatch(os.environ["KE_SUITE_BASETEMP"],
                                            os.environ["KE_SUITE_REPORT"]))
