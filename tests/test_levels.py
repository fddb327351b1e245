import pytest

from vfnb.errors import VfnbError
from vfnb.levels import GRADABLE_LABELS, label_from_level, level_name, spine_order


@pytest.mark.parametrize("label,name", [(1, "C1"), (7, "C7"), (8, "T1"), (19, "T12"), (20, "L1"), (25, "L6"), (28, "T13")])
def test_level_names_round_trip(label, name):
    assert level_name(label) == name
    assert label_from_level(name) == label
    assert label_from_level(name.lower()) == label
    assert label_from_level(str(label)) == label


def test_unknown_levels_are_refused():
    for bad in ("T14", "X1", "0", "29", ""):
        with pytest.raises(VfnbError, match="level"):
            label_from_level(bad)
    with pytest.raises(VfnbError, match="1-28"):
        level_name(0)


def test_t13_sorts_between_t12_and_l1_and_sacrum_not_graded():
    assert sorted([20, 28, 19], key=spine_order) == [19, 28, 20]
    assert 26 not in GRADABLE_LABELS and 27 not in GRADABLE_LABELS and 28 in GRADABLE_LABELS
