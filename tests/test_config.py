"""The configuration: parsed without torch, resolved once into a read-only object."""
import pytest

from configs.base_config import Config, default_weight_decay, given_over, resolve


def test_resolve_completes_the_flags_and_is_read_only():
    given = Config().parse(["-a", "Split_vgg11_bn", "-b", "8", "--set", "CSVList"])
    assert given.num_cls is None and given.seed is None and given.weight_decay is None
    run = resolve(given, num_classes=7, world_size=2, seed=123)
    assert (run.num_cls, run.process_batch_size, run.seed, run.weight_decay) == (7, 4, 123, 5e-4)
    assert run.batch_size == 8 and run.arch == "Split_vgg11_bn"
    with pytest.raises(AttributeError, match="read-only"):
        run.num_cls = 3
    assert given.num_cls is None                       # the parsed flags are left as they were
    assert resolve(Config().parse(["--seed", "9"]), 3, 1, seed=123).seed == 9


@pytest.mark.parametrize("argv, world, message", [
    (["-b", "6"], 4, "must divide evenly among 4"),
    (["-b", "4"], 4, "BatchNorm needs at least 2"),
    (["-b", "8", "--cs_kd"], 4, "--cs_kd needs an even batch of at least 4"),
])
def test_resolve_refuses_batches_the_world_cannot_split(argv, world, message):
    with pytest.raises(ValueError, match=message):
        resolve(Config().parse(argv), 3, world, seed=0)


def test_weight_decay_defaults_follow_the_recipe():
    assert default_weight_decay("Split_vgg16_bn", "sgd") == 5e-4
    assert default_weight_decay("Split_ResNet50", "sgd") == 1e-4
    assert default_weight_decay("Split_vgg16_bn", "adam") == 0.0
    assert resolve(Config().parse(["--wd", "0.003", "-a", "Split_vgg11_bn"]), 3, 1, 0).weight_decay == 0.003


def test_given_over_takes_only_the_named_flags_written_on_the_command_line():
    given = Config().parse(["--gpu", "1", "--epochs", "3"])
    merged = given_over({"gpu": None, "epochs": 200, "num_threads": 5}, given,
                        ("gpu", "num_threads", "epochs"))
    assert (merged.gpu, merged.epochs, merged.num_threads) == (1, 3, 5)   # num_threads not given
