"""Stored filters reopen from their compiled form (issue 12: reopening 100,000 contexts fast):
the classifier entries, F.20 order and F.16 key come from the row, the FWPM_FILTER0 and its
compiled conditions are rebuilt at first read. Everything observable must be as before the
restart: enumerations, every packet's verdict, the cached inbound filter of a Create. A compiled
form this engine could not have written is refused; one of another format is compiled again."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from wfp.helpers import (
    A4,
    A6,
    B4,
    B6,
    add_filter,
    addr_conditions,
    all_filters,
    cond,
    icmp4,
    ipsec_filter,
    open_engine,
    plain_filter,
    traffic,
    udp4,
    udp6,
    v_mask4,
    v_range,
    v_u8,
    v_u16,
    val,
)

from ipsecsa import wfp
from ipsecsa.store.sqlite import StoreError, _digest
from ipsecsa.wfp import filterrows


@pytest.fixture()
def db(tmp_path: Path) -> Path:
    return tmp_path / "filters.db"


def populate(bfe: wfp.Engine, h: int) -> dict[str, int]:
    """Filters of every shape the compiled form must carry: IPsec pairs (v4, v6), block and
    permit filters with masks, port ranges and protocols, an explicit weight, a boot-time one."""
    ids = {}
    ids["fin"] = add_filter(bfe, h, ipsec_filter("inbound", addr_conditions(A4, B4)))
    ids["fout"] = add_filter(bfe, h, ipsec_filter("outbound", addr_conditions(A4, B4)))
    ids["fin6"] = add_filter(bfe, h, ipsec_filter("inbound", addr_conditions(A6, B6), v6=True))
    ids["block"] = add_filter(bfe, h, plain_filter("outbound", wfp.FWP_ACTION_BLOCK, [
        cond(wfp.FWPM_CONDITION_IP_REMOTE_ADDRESS, wfp.FWP_MATCH_EQUAL,
             v_mask4("203.0.113.0", 0xFFFFFF00)),
        cond(wfp.FWPM_CONDITION_IP_REMOTE_PORT, wfp.FWP_MATCH_RANGE,
             v_range(val(wfp.FWP_UINT16, uint16=6000), val(wfp.FWP_UINT16, uint16=6010))),
        cond(wfp.FWPM_CONDITION_IP_PROTOCOL, wfp.FWP_MATCH_EQUAL, v_u8(17))]))
    ids["permit"] = add_filter(bfe, h, plain_filter("outbound", wfp.FWP_ACTION_PERMIT, [
        cond(wfp.FWPM_CONDITION_IP_REMOTE_PORT, wfp.FWP_MATCH_EQUAL, v_u16(6005))],
        weight=val(wfp.FWP_UINT8, uint8=15)))
    ids["boottime"] = add_filter(bfe, h, plain_filter(
        "outbound", wfp.FWP_ACTION_BLOCK, flags=wfp.FWPM_FILTER_FLAG_BOOTTIME))
    return ids


def probes() -> list[bytes]:
    return [udp4(A4, B4, b"ipsec"), udp4(A4, "203.0.113.7", b"blocked", dport=6003),
            udp4(A4, "203.0.113.7", b"weighted permit", dport=6005),
            udp4(A4, "203.0.113.7", b"other port", dport=7000),
            icmp4(A4, "203.0.113.7", 8, 0), udp6(A6, B6, b"v6 ipsec, no context")]


def verdicts(bfe: wfp.Engine) -> list[Any]:
    return [(r.drop, r.packet) for r in (bfe.outbound(p) for p in probes())]


def test_reopened_filters_behave_as_before_without_being_rebuilt(db: Path) -> None:
    bfe = wfp.Engine(database=db)
    h = open_engine(bfe)
    ids = populate(bfe, h)
    cached_in = bfe.IPsecSaContextCreate1(h, traffic(A4, B4, ids["fout"]), None)[1]
    assert cached_in == ids["fin"]
    before, seen = all_filters(bfe, h), verdicts(bfe)
    bfe.close()

    again = wfp.Engine(database=db)
    h2 = open_engine(again)
    recs = again._filters.by_id
    assert all("stored" not in r.__dict__ and "compiled" not in r.__dict__
               for r in recs.values())
    # F.16 from the stored key: nothing rebuilt.
    assert again.IPsecSaContextCreate1(h2, traffic(A4, B4, ids["fout"]), None)[1] == ids["fin"]
    assert all("stored" not in r.__dict__ for r in recs.values())
    assert verdicts(again) == seen
    assert "compiled" in recs[ids["block"]].__dict__  # a candidate: compiled at first need
    assert "compiled" not in recs[ids["fin6"]].__dict__  # never a candidate
    assert all_filters(again, h2) == before
    assert [r.order for r in sorted(recs.values(), key=lambda r: r.id)] == \
        [(-f.effectiveWeight.uint64, f.filterId) for f in before]
    # The classifier entries read from the rows (IPv6 ones hold 128-bit integers) are exactly
    # what compiling the stored filters gives.
    for rec in recs.values():
        if rec.published:
            clf = again._filters._index[rec.layer.name]
            assert [clf.filter_of(h) for h in rec.handles] == rec.compiled.index(), rec.id
    assert recs[ids["fin6"]].published and recs[ids["fin6"]].layer.version == 6
    again.close()


def rewrite(db: Path, change: Any) -> None:
    """Change each stored compiled form with ``change(form)`` and give the row a digest that
    fits (as a bug, not damage, would write it)."""
    con = sqlite3.connect(db)
    for fid, key, lifetime, body, compiled in con.execute(
            "SELECT id, key, lifetime, body, compiled FROM filters").fetchall():
        form = json.loads(compiled)
        change(form)
        text = json.dumps(form)
        con.execute("UPDATE filters SET compiled = ?, digest = ? WHERE id = ?",
                    (text, _digest(key, lifetime, body, text), fid))
    con.commit()
    con.close()


@pytest.mark.parametrize(("what", "change"), [
    ("layer", lambda f: f.__setitem__(1, "FWPM_LAYER_NO_SUCH_LAYER")),
    ("action", lambda f: f.__setitem__(2, 0x12345)),
    ("callout", lambda f: f.__setitem__(3, "FWPM_CALLOUT_NO_SUCH_CALLOUT")),
    ("fits", lambda f: f.__setitem__(3, None)),
    ("weight", lambda f: f.__setitem__(4, -1)),
    ("entry", lambda f: f[6].append([5, 0, 0, 0, 0, 0, 0, 0])),
    ("shape", lambda f: f.pop()),
])
def test_a_compiled_form_the_engine_could_not_have_written_is_refused(db: Path, what: str,
                                                                      change: Any) -> None:
    bfe = wfp.Engine(database=db)
    h = open_engine(bfe)
    add_filter(bfe, h, ipsec_filter("outbound", addr_conditions(A4, B4)))
    bfe.close()
    rewrite(db, change)
    with pytest.raises(StoreError) as info:
        wfp.Engine(database=db)
    assert str(db) in str(info.value) and "stored filter" in str(info.value)


def test_a_compiled_form_of_another_format_is_compiled_again(db: Path) -> None:
    bfe = wfp.Engine(database=db)
    h = open_engine(bfe)
    ids = populate(bfe, h)
    before, seen = all_filters(bfe, h), verdicts(bfe)
    bfe.close()
    rewrite(db, lambda f: f.__setitem__(0, filterrows.FORMAT + 1))
    again = wfp.Engine(database=db)
    h2 = open_engine(again)
    assert "stored" in again._filters.by_id[ids["fin"]].__dict__  # the full way
    assert verdicts(again) == seen and all_filters(again, h2) == before
    again.close()
    con = sqlite3.connect(db)
    formats = {json.loads(c)[0] for (c,) in con.execute("SELECT compiled FROM filters")}
    con.close()
    assert formats == {filterrows.FORMAT}  # written again under this version's rules
