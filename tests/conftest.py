"""Shared fixtures for the test suite."""
import pytest

from configs.base_config import Config


@pytest.fixture
def make_cfg():
    """`make_cfg(*argv)`: the configuration `train_KE_cls.py` would resolve for these flags."""
    def make(*argv):
        return Config().parse([str(a) for a in argv])
    return make


@pytest.fixture(scope="module")
def single_thread():
    """Run a module's tests on one intra-op thread, restoring the setting afterwards.

    The suite shares two cores with other processes; two OpenMP threads fighting for them are
    several times slower than one (measured: the slim-invariant tests take 3 s instead of 20 s).
    """
    import torch
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
