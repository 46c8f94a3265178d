"""``ipsecsa pcap inspect``: each usual mistake in an SA file is named by its hint.

One capture carries traffic of thirteen SAs made with their *true* settings; one SA file holds
each of them with one deliberate mistake (or none). ``inspect --json`` must report, for every
packet that does not unprotect, the frame, the SPI, the reason and the hint of the ``--json``
contract (issue 14): icv-length, esn, direction, salt, algorithm, or null when nothing explains it
(a wrong key). Replays are failures (REPLAY), reordering within the window is not, an SPI the file
lacks is BAD_SPI, and without an SA file NULL-encrypted ESP is recognised with its ICV length.
"""

from __future__ import annotations

import dataclasses
import json

import pytest

from ipsecsa import SecurityAssociation
from ipsecsa.config import parse_sa
from ipsecsa.crypto.transforms import COUNTER_IV
from tests.cli.conftest import ARP_FRAME, plain_ip
from tests.cli.helpers import ether, ipsecsa_many, write_pcap

A, B = "192.0.2.1", "198.51.100.1"


def _k(byte: int, n: int) -> str:
    return f"{byte:02x}" * n


def _sa(spi, enc, ekey, integ=None, ikey=None, **extra):
    sa = {"spi": spi, "protocol": "esp", "mode": "tunnel", "src": A, "dst": B,
          "encryption": {"algorithm": enc, "key": ekey}, **extra}
    if integ:
        sa["integrity"] = {"algorithm": integ, "key": ikey}
    return sa


SALT6, SALT7 = "a1a2a3a4", "b1b2b3b4"
# spi: (true SA, SA as the broken file has it, expected hint or "ok"/None)
CASES = {
    0x1001: (_sa(0x1001, "aes-gcm-12", _k(1, 20)), _sa(0x1001, "aes-gcm-16", _k(1, 20)),
             "icv-length"),
    0x1002: (_sa(0x1002, "aes-cbc", _k(2, 16), "hmac-sha256-96", _k(0x22, 32)),
             _sa(0x1002, "aes-cbc", _k(2, 16), "hmac-sha256-128", _k(0x22, 32)), "icv-length"),
    0x1003: (_sa(0x1003, "aes-gcm-16", _k(3, 20), esn=True),
             _sa(0x1003, "aes-gcm-16", _k(3, 20)), "esn"),
    0x1004: (_sa(0x1004, "aes-gcm-16", _k(4, 20)), _sa(0x1004, "aes-gcm-16", _k(5, 20)),
             "direction"),
    0x1005: (_sa(0x1005, "aes-gcm-16", _k(5, 20)), _sa(0x1005, "aes-gcm-16", _k(4, 20)),
             "direction"),
    0x1006: (_sa(0x1006, "aes-gcm-16", _k(6, 16) + SALT6),
             _sa(0x1006, "aes-gcm-16", _k(6, 16) + SALT7), "salt"),
    0x1007: (_sa(0x1007, "aes-gcm-16", _k(7, 16) + SALT7),
             _sa(0x1007, "aes-gcm-16", _k(7, 16) + SALT6), "salt"),  # salts swapped
    0x1008: (_sa(0x1008, "aes-ctr", _k(8, 16) + "c1c2c3c4", "hmac-sha1-96", _k(0x88, 20)),
             _sa(0x1008, "aes-ctr", "c1c2c3c4" + _k(8, 16), "hmac-sha1-96", _k(0x88, 20)),
             "salt"),
    0x1009: (_sa(0x1009, "chacha20-poly1305", _k(9, 36)), _sa(0x1009, "aes-gcm-16", _k(9, 36)),
             "algorithm"),
    0x100A: (_sa(0x100A, "aes-gcm-16", _k(10, 20)), _sa(0x100A, "aes-gcm-16", _k(11, 20)),
             None),
    0x100B: (_sa(0x100B, "aes-gcm-16", _k(12, 20)), _sa(0x100B, "aes-gcm-16", _k(12, 20)),
             "ok"),
    0x100C: (_sa(0x100C, "aes-gcm-16", _k(13, 20)), None, "BAD_SPI"),
    0x100D: (_sa(0x100D, "null", "", "hmac-sha1-96", _k(14, 20)),
             _sa(0x100D, "null", "", "hmac-sha1-96", _k(14, 20)), "ok"),
}
PACKETS = 5
#: Where the failure is not the ICV: 96-bit vs 128-bit truncation misaligns the CBC ciphertext
#: (BAD_LENGTH, checked before the ICV); a swapped AES-CTR salt with the right integrity key
#: verifies and then decrypts to garbage (BAD_PADDING).
REASONS = {0x1002: "BAD_LENGTH", 0x1008: "BAD_PADDING"}


@pytest.fixture(scope="module")
def material(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("inspect")
    records = [(0, ARP_FRAME)]  # frame 0 is not IP: frame numbers count every record
    expected: dict[int, tuple[int, str, str | None]] = {}  # frame -> (spi, reason, hint)
    ticks = 1
    for spi, (true, broken, hint) in CASES.items():
        cfg = parse_sa(true)
        # The AES-CTR case with counter IVs (IV = sequence number), not random ones: the garbage
        # its wrong salt decrypts to must be the same in every run. With random IVs its last
        # bytes sometimes formed valid padding, and the packet failed as BAD_INNER instead.
        sa = SecurityAssociation.from_config(dataclasses.replace(cfg, direction="outbound"),
                                             unsafe_iv_source=COUNTER_IV if spi == 0x1008
                                             else None)
        packets = [sa.protect(plain_ip(2 * i)).packet for i in range(PACKETS)]
        if spi == 0x100B:
            # reordered (2 before 1) and two replays of packet 0
            packets = [packets[0], packets[2], packets[1], packets[0], packets[3], packets[0],
                       packets[4]]
        for n, p in enumerate(packets):
            frame = len(records)
            records.append((ticks, ether(p, 0x0800)))
            ticks += 1000
            if spi == 0x100B:
                if n in (3, 5):
                    expected[frame] = (spi, "REPLAY", None)
            elif hint == "ok":
                continue
            elif hint == "BAD_SPI":
                expected[frame] = (spi, "BAD_SPI", None)
            else:
                expected[frame] = (spi, REASONS.get(spi, "ICV_FAILURE"), hint)
    capture = tmp / "mixed.pcap"
    write_pcap(capture, 1, records)
    sa_file = tmp / "broken.json"
    sa_file.write_text(json.dumps({"sas": [b for _t, b, _h in CASES.values() if b]}))
    with_file, without, text = ipsecsa_many([
        ["pcap", "inspect", "--sa-file", str(sa_file), str(capture), "--json"],
        ["pcap", "inspect", str(capture), "--json"],
        ["pcap", "inspect", "--sa-file", str(sa_file), str(capture)]])
    for run in (with_file, without, text):
        assert run.returncode == 0, run.stderr
    return expected, json.loads(with_file.stdout), json.loads(without.stdout), text.stdout


def test_failures_follow_the_contract(material):
    expected, doc, _, _ = material
    failures = doc["failures"]
    for f in failures:
        assert set(f) == {"frame", "spi", "reason", "hint"}
        assert isinstance(f["frame"], int) and f["spi"].startswith("0x") and len(f["spi"]) == 10
    got = {f["frame"]: (int(f["spi"], 16), f["reason"], f["hint"]) for f in failures}
    assert got == expected


@pytest.mark.parametrize("spi", sorted(CASES), ids=lambda s: f"0x{s:08x}")
def test_each_mistake_is_named(material, spi):
    _expected, doc, _, _ = material
    hint = CASES[spi][2]
    mine = [f for f in doc["failures"] if int(f["spi"], 16) == spi]
    if spi == 0x100B:
        return  # the replay case has its own test
    if hint == "ok":
        assert mine == []
        return
    if hint == "BAD_SPI":
        assert {f["reason"] for f in mine} == {"BAD_SPI"} and len(mine) == PACKETS
        return
    assert len(mine) == PACKETS
    assert {(f["reason"], f["hint"]) for f in mine} == {(REASONS.get(spi, "ICV_FAILURE"), hint)}


def test_replays_and_reordering(material):
    _, doc, _, _ = material
    spi = next(s for s in doc["spis"] if s["spi"] == "0x0000100b")
    assert spi["packets"] == 7 and spi["duplicates"] == 2 and spi["reordered"] == 1
    assert spi["unprotected"] == 5 and spi["failed"] == 2
    assert spi["first_seq"] == 1 and spi["last_seq"] == 5 and spi["missing"] == 0
    assert [f["reason"] for f in doc["failures"] if f["spi"] == "0x0000100b"] == ["REPLAY"] * 2


def test_per_spi_statistics(material):
    _, doc, _, _ = material
    by_spi = {s["spi"]: s for s in doc["spis"]}
    assert len(by_spi) == len(CASES)
    s = by_spi["0x00001001"]
    assert (s["src"], s["dst"], s["sa"], s["packets"]) == (A, B, 0, PACKETS)
    assert s["first_seq"] == 1 and s["last_seq"] == PACKETS and s["packets_per_s"] > 0
    assert by_spi["0x0000100c"]["sa"] is None
    assert by_spi["0x00001009"]["hints"]["algorithm"]["detail"] == "as chacha20-poly1305"
    assert doc["reasons"]["ICV_FAILURE"] == 8 * PACKETS


def test_null_encryption_recognised_without_sa_file(material):
    _, _, doc, _ = material
    assert doc["failures"] == [] and not doc["sa_file"]
    nulls = {s["spi"]: s["null_encryption"] for s in doc["spis"]}
    assert nulls.pop("0x0000100d") == {"icv_bytes": 12, "examined": PACKETS,
                                        "agreeing": PACKETS, "inner": {"ipv4": PACKETS}}
    assert all(v is None for v in nulls.values())  # encrypted SPIs are not mistaken for NULL


def test_text_report(material):
    _, _, _, text = material
    assert "Per SPI" in text and "Failures" in text and "0x00001009" in text
    assert "hint for 0x00001003" in text and "esn on" in text
