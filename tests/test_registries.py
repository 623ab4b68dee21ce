"""Layer classes and hand-written architectures are registered where they are defined, under
the names the parser offers (models/names.py), each under its own name."""
import pytest
import torch.nn as nn

from layers import bn_type, conv_type, linear_type
from layers.registry import check_names, register
from models import hand_written, names
from models.registry import ARCHITECTURES

TABLES = [  # (registry, names the parser offers, module defining the classes, layer kind)
    (conv_type.CONV_LAYERS, names.CONV_TYPES, conv_type, nn.Conv2d),
    (bn_type.BN_LAYERS, names.BN_TYPES, bn_type, nn.BatchNorm2d),
    (linear_type.LINEAR_LAYERS, names.LINEAR_TYPES, linear_type, nn.Linear),
]


@pytest.mark.parametrize("table, offered, module, kind", TABLES)
def test_each_layer_class_is_registered_under_its_own_name(table, offered, module, kind):
    assert set(table) == set(offered)
    for name, cls in table.items():
        assert getattr(module, name) is cls, name      # the name the module binds to the class
        assert issubclass(cls, kind), name


def test_the_split_and_plain_classes_are_the_expected_ones():
    assert {"SplitConv": conv_type.SplitConv, "DenseConv": nn.Conv2d} == conv_type.CONV_LAYERS
    assert {"SplitLinear": linear_type.SplitLinear,
                                         "DenseLinear": nn.Linear} == linear_type.LINEAR_LAYERS
    assert bn_type.BN_LAYERS["NormalBatchNorm"] is nn.BatchNorm2d
    assert not bn_type.BN_LAYERS["NonAffineBatchNorm"](4).affine


def test_each_hand_written_architecture_is_registered_under_its_own_name():
    table = hand_written.HAND_WRITTEN_ARCHS
    assert set(table) == set(names.HAND_WRITTEN)
    for name, build in table.items():
        assert build.__name__ == name
        assert ARCHITECTURES[name] is build
    assert tuple(ARCHITECTURES)[:len(names.HAND_WRITTEN)] == names.HAND_WRITTEN
    for name in names.GRAPH_DERIVED:
        assert ARCHITECTURES[name].__name__ == name


def test_a_name_registered_twice_is_refused():
    table = {}
    register(table)(nn.Conv2d)
    register(table, "Other")(nn.Conv2d)
    assert table == {"Conv2d": nn.Conv2d, "Other": nn.Conv2d}
    with pytest.raises(ValueError, match="'Conv2d' is registered twice"):
        register(table, "Conv2d")(nn.Linear)


def test_names_and_registry_must_agree_as_sets():
    check_names({"A": 1, "B": 2}, ("B", "A"), "--x")        # order does not matter
    with pytest.raises(RuntimeError, match=r"--x: models/names.py lists \['C'\] that no class "
                                           r"registers, and \['B'\] are registered but not listed"):
        check_names({"A": 1, "B": 2}, ("A", "C"), "--x")
