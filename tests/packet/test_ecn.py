"""RFC 6040 ECN tests.

Reference values: RFC 6040 §4.1 (normal-mode encapsulation copies the field, CE included) and
§4.2 Figure 4, transcribed independently below as rows of the arriving inner header, columns of
the arriving outer header (Not-ECT, ECT(0), ECT(1), CE); "drop" = None.
"""

import pytest

from ipsecsa.packet.ecn import CE, ECT0, ECT1, NOT_ECT, ecn_decapsulate, ecn_encapsulate

COLUMNS = (NOT_ECT, ECT0, ECT1, CE)
FIGURE_4 = {
    NOT_ECT: (NOT_ECT, NOT_ECT, NOT_ECT, None),
    ECT0: (ECT0, ECT0, ECT1, CE),
    ECT1: (ECT1, ECT1, ECT1, CE),
    CE: (CE, CE, CE, CE),
}
CELLS = [
    (inner, outer, FIGURE_4[inner][i]) for inner in FIGURE_4 for i, outer in enumerate(COLUMNS)
]


def test_codepoints():
    assert (NOT_ECT, ECT1, ECT0, CE) == (0, 1, 2, 3)


@pytest.mark.parametrize("inner, outer, expected", CELLS)
def test_decapsulation_cell(inner, outer, expected):
    assert ecn_decapsulate(outer, inner) == expected


def test_table_has_sixteen_cells():
    assert len(CELLS) == 16


@pytest.mark.parametrize("inner", [NOT_ECT, ECT1, ECT0, CE])
def test_encapsulation_normal_mode_copies(inner):
    assert ecn_encapsulate(inner) == inner


@pytest.mark.parametrize("inner", [NOT_ECT, ECT1, ECT0, CE])
def test_round_trip_without_marking_is_identity(inner):
    assert ecn_decapsulate(ecn_encapsulate(inner), inner) == inner
