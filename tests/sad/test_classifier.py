"""The outbound classifier: NDIS filter semantics, most-specific-wins, tie-break, concurrency.

The property test checks the tuple-space search against a linear scan written here from the
filter semantics of reference §A.3 (not from ``Filter.matches``), under adds, removes and
replaces.
"""

from __future__ import annotations

import ipaddress
import random
import sys
import threading

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ipsecsa.errors import ConfigError
from ipsecsa.sad.classifier import Classifier, Filter
from ipsecsa.selectors import Selector

ALL = {4: (1 << 32) - 1, 6: (1 << 128) - 1}
WIDTH = {4: 32, 6: 128}
TCP, UDP = 6, 17


def ip(text: str) -> int:
    return int(ipaddress.ip_address(text))


def pkt(src: str, dst: str, protocol: int = TCP, sport: int = 40000, dport: int = 443):
    version = ipaddress.ip_address(src).version
    return version, ip(src), ip(dst), protocol, sport, dport


# -- the oracle ---------------------------------------------------------------------------------


def oracle_match(f: Filter, version, src, dst, protocol, sport, dport) -> bool:
    """§A.3 read literally, plus our mask-0 CHOICE."""
    if f.version != version:
        return False
    for addr, mask, value in ((f.src, f.src_mask, src), (f.dst, f.dst_mask, dst)):
        if addr == 0:
            continue
        if mask == 0:
            mask = ALL[version]
        if value & mask != addr & mask:
            return False
    return ((f.protocol == 0 or f.protocol == protocol) and (f.sport == 0 or f.sport == sport)
            and (f.dport == 0 or f.dport == dport))


def oracle_specificity(f: Filter):
    def bits(addr, mask):
        if addr == 0:
            return 0
        return WIDTH[f.version] if mask == 0 else (mask).bit_count()

    return (bits(f.src, f.src_mask) + bits(f.dst, f.dst_mask), int(f.sport != 0 or f.dport != 0),
            int(f.protocol != 0), int(f.dport != 0), int(f.sport != 0))


def oracle_lookup(live: dict[int, tuple[Filter, object]], packet):
    best = None
    for handle, (f, value) in live.items():
        if oracle_match(f, *packet):
            rank = (oracle_specificity(f), -handle)
            if best is None or rank > best[0]:
                best = (rank, value)
    return None if best is None else best[1]


# -- unit tests: filter semantics ----------------------------------------------------------------


def one(f: Filter) -> Classifier[str]:
    c: Classifier[str] = Classifier()
    c.add(f, "hit")
    return c


def test_all_zero_filter_matches_every_packet_of_its_version():
    c = one(Filter(4, 0, 0, 0, 0))
    assert c.lookup(*pkt("1.2.3.4", "5.6.7.8", UDP, 1, 2)) == "hit"
    assert c.lookup(*pkt("255.255.255.255", "0.0.0.0", 0, 0, 0)) == "hit"


@pytest.mark.parametrize("mask", [0, 0xFF000000, 0xFFFFFFFF, 0x00FF00FF])
def test_src_zero_is_any_source_whatever_the_mask(mask):
    c = one(Filter(4, 0, mask, ip("10.0.0.1"), 0xFFFFFFFF))
    assert c.lookup(*pkt("192.0.2.7", "10.0.0.1")) == "hit"
    assert c.lookup(*pkt("192.0.2.7", "10.0.0.2")) is None


@pytest.mark.parametrize("mask", [0, 0xFFFF0000, 0xFFFFFFFF])
def test_dst_zero_is_any_destination_whatever_the_mask(mask):
    c = one(Filter(4, ip("10.0.0.1"), 0xFFFFFFFF, 0, mask))
    assert c.lookup(*pkt("10.0.0.1", "198.51.100.9")) == "hit"
    assert c.lookup(*pkt("10.0.0.2", "198.51.100.9")) is None


def test_protocol_and_ports_wildcards_are_per_field():
    c = one(Filter.v4(protocol=TCP))
    assert c.lookup(*pkt("1.1.1.1", "2.2.2.2", TCP, 1, 2)) == "hit"
    assert c.lookup(*pkt("1.1.1.1", "2.2.2.2", UDP, 1, 2)) is None
    c = one(Filter.v4(sport=500))
    assert c.lookup(*pkt("1.1.1.1", "2.2.2.2", UDP, 500, 9)) == "hit"
    assert c.lookup(*pkt("1.1.1.1", "2.2.2.2", TCP, 500, 9)) == "hit"  # protocol still any
    assert c.lookup(*pkt("1.1.1.1", "2.2.2.2", UDP, 501, 500)) is None
    c = one(Filter.v4(dport=443))
    assert c.lookup(*pkt("1.1.1.1", "2.2.2.2", TCP, 443, 443)) == "hit"
    assert c.lookup(*pkt("1.1.1.1", "2.2.2.2", TCP, 443, 80)) is None
    # A port-less packet (ICMP: ports 0) only meets port wildcards.
    assert c.lookup(*pkt("1.1.1.1", "2.2.2.2", 1, 0, 0)) is None


def test_prefix_masks():
    c = one(Filter.v4("10.0.0.0/8", "192.168.1.0/24"))
    assert c.lookup(*pkt("10.200.3.4", "192.168.1.77")) == "hit"
    assert c.lookup(*pkt("11.0.0.1", "192.168.1.77")) is None
    assert c.lookup(*pkt("10.0.0.1", "192.168.2.1")) is None


def test_non_contiguous_mask():
    # Match on the first and last octet only: 10.x.y.5
    c = one(Filter(4, ip("10.9.9.5"), 0xFF0000FF, 0, 0))
    assert c.lookup(*pkt("10.1.2.5", "1.1.1.1")) == "hit"
    assert c.lookup(*pkt("10.250.0.5", "1.1.1.1")) == "hit"
    assert c.lookup(*pkt("10.1.2.6", "1.1.1.1")) is None
    assert c.lookup(*pkt("11.1.2.5", "1.1.1.1")) is None


def test_choice_nonzero_address_with_mask_zero_is_a_host():
    f = Filter(4, ip("10.0.0.1"), 0, ip("10.0.0.2"), 0)
    assert f.effective_src_mask == f.effective_dst_mask == 0xFFFFFFFF
    assert f.specificity[0] == 64
    c = one(f)
    assert c.lookup(*pkt("10.0.0.1", "10.0.0.2")) == "hit"
    assert c.lookup(*pkt("10.0.0.1", "10.0.0.3")) is None
    assert c.lookup(*pkt("10.0.0.9", "10.0.0.2")) is None
    # It is exactly the same filter as an explicit host mask: the duplicate loses the tie.
    c.add(Filter(4, ip("10.0.0.1"), 0xFFFFFFFF, ip("10.0.0.2"), 0xFFFFFFFF), "explicit")
    assert c.lookup(*pkt("10.0.0.1", "10.0.0.2")) == "hit"


def test_address_bits_outside_the_mask_are_ignored():
    c = one(Filter(4, ip("10.1.2.3"), 0xFF000000, 0, 0))
    assert c.lookup(*pkt("10.9.9.9", "1.1.1.1")) == "hit"


def test_ipv6():
    c = one(Filter.v6("2001:db8::/32", "2001:db8:1::1", protocol=UDP, dport=4500))
    assert c.lookup(*pkt("2001:db8:ffff::9", "2001:db8:1::1", UDP, 4500, 4500)) == "hit"
    assert c.lookup(*pkt("2001:db9::9", "2001:db8:1::1", UDP, 4500, 4500)) is None


def test_ipv4_and_ipv6_never_cross_match():
    c: Classifier[str] = Classifier()
    c.add(Filter(4, 0, 0, 0, 0), "v4-any")
    c.add(Filter(6, 0, 0, 0, 0), "v6-any")
    assert c.lookup(4, 1, 2, TCP, 1, 2) == "v4-any"
    assert c.lookup(6, 1, 2, TCP, 1, 2) == "v6-any"
    c = one(Filter(4, 0x0A000001, 0xFFFFFFFF, 0, 0))
    # The same integer as an IPv6 address (::10.0.0.1) does not meet an IPv4 filter.
    assert c.lookup(6, 0x0A000001, 2, TCP, 1, 2) is None
    c = one(Filter(6, 0x0A000001, ALL[6], 0, 0))
    assert c.lookup(4, 0x0A000001, 2, TCP, 1, 2) is None
    with pytest.raises(ConfigError):
        c.lookup(5, 0, 0, 0, 0, 0)


# -- unit tests: construction ---------------------------------------------------------------------


def test_prefix_constructor_forms():
    assert Filter.v4() == Filter(4, 0, 0, 0, 0)
    assert Filter.v4("0.0.0.0/0", "0.0.0.0/0") == Filter(4, 0, 0, 0, 0)
    assert Filter.v4("10.0.0.1") == Filter(4, ip("10.0.0.1"), 0xFFFFFFFF, 0, 0)
    f = Filter.v4("10.0.0.0/8", "192.168.1.0/24", TCP, 1234, 443)
    assert f == Filter(4, ip("10.0.0.0"), 0xFF000000, ip("192.168.1.0"), 0xFFFFFF00, 6, 1234, 443)
    # The all-zero network cannot be written with address 0 (the wildcard): a host bit is set.
    z = Filter.v4("0.0.0.0/8")
    assert z.src != 0 and z.src & z.src_mask == 0
    assert one(z).lookup(*pkt("0.1.2.3", "1.1.1.1")) == "hit"
    assert one(z).lookup(*pkt("1.1.2.3", "1.1.1.1")) is None
    with pytest.raises(ConfigError) as err:
        Filter.v4("0.0.0.0/32")
    assert err.value.field == "src"


@pytest.mark.parametrize("kwargs, field", [
    ({"src": "10.0.0.1/8"}, "src"),  # host bits: strict, like Selector
    ({"dst": "2001:db8::/32"}, "dst"),
    ({"src": "nonsense"}, "src"),
    ({"protocol": 256}, "protocol"),
    ({"sport": -1}, "sport"),
    ({"dport": 65536}, "dport"),
    ({"dport": True}, "dport"),
])
def test_v4_validation(kwargs, field):
    with pytest.raises(ConfigError) as err:
        Filter.v4(**kwargs)
    assert err.value.field == field


def test_raw_validation():
    with pytest.raises(ConfigError) as err:
        Filter(5, 0, 0, 0, 0)
    assert err.value.field == "version"
    with pytest.raises(ConfigError) as err:
        Filter(4, 1 << 32, 0, 0, 0)
    assert err.value.field == "src"
    Filter(6, 1 << 100, 0, 0, 0)  # fine for IPv6
    with pytest.raises(ConfigError) as err:
        Filter(4, 0, 0, 0, -1)
    assert err.value.field == "dst_mask"
    with pytest.raises(ConfigError):
        Classifier().add("10.0.0.0/8", 1)  # type: ignore[arg-type]


def test_from_selector():
    sel = Selector(src="10.0.0.0/8", dst="192.0.2.1/32", protocol=UDP, dport=500)
    assert Filter.from_selector(sel) == Filter.v4("10.0.0.0/8", "192.0.2.1", UDP, 0, 500)
    any_sel = Selector(protocol=TCP)
    with pytest.raises(ConfigError):
        Filter.from_selector(any_sel)
    assert Filter.from_selector(any_sel, 6) == Filter(6, 0, 0, 0, 0, TCP)
    with pytest.raises(ConfigError):
        Filter.from_selector(sel, 6)


def test_str():
    assert str(Filter.v4("10.0.0.0/8", None, TCP, 0, 443)) == \
        "IPv4 10.0.0.0/8 -> * proto 6 sport * dport 443"
    assert "&255.0.0.255" in str(Filter(4, ip("10.0.0.5"), 0xFF0000FF, 0, 0))


# -- unit tests: ordering -------------------------------------------------------------------------


def test_more_address_bits_win_over_protocol_and_ports():
    c: Classifier[str] = Classifier()
    c.add(Filter.v4("10.0.0.0/8", "10.0.0.0/8", TCP, 1, 443), "subnets+ports")
    c.add(Filter.v4("10.0.0.1", "10.0.0.2"), "hosts")
    c.add(Filter.v4("10.0.0.0/8", "10.0.0.0/8"), "subnets")
    assert c.lookup(*pkt("10.0.0.1", "10.0.0.2", TCP, 1, 443)) == "hosts"
    assert c.lookup(*pkt("10.0.0.1", "10.0.0.3", TCP, 1, 443)) == "subnets+ports"
    assert c.lookup(*pkt("10.0.0.1", "10.0.0.3", TCP, 1, 80)) == "subnets"


def test_ports_then_protocol_then_dport_then_sport():
    c: Classifier[str] = Classifier()
    p = pkt("10.0.0.1", "10.0.0.2", TCP, 1000, 443)
    c.add(Filter.v4("10.0.0.0/24"), "addr")
    assert c.lookup(*p) == "addr"
    c.add(Filter.v4("10.0.0.0/24", protocol=TCP), "proto")
    assert c.lookup(*p) == "proto"
    c.add(Filter.v4("10.0.0.0/24", sport=1000), "sport")  # a port beats a protocol
    assert c.lookup(*p) == "sport"
    c.add(Filter.v4("10.0.0.0/24", dport=443), "dport")  # dport beats sport
    assert c.lookup(*p) == "dport"
    c.add(Filter.v4("10.0.0.0/24", protocol=TCP, sport=1000), "proto+sport")
    assert c.lookup(*p) == "proto+sport"
    c.add(Filter.v4("10.0.0.0/24", protocol=TCP, dport=443), "proto+dport")
    assert c.lookup(*p) == "proto+dport"
    c.add(Filter.v4("10.0.0.0/24", protocol=TCP, sport=1000, dport=443), "all")
    assert c.lookup(*p) == "all"
    c.add(Filter.v4("10.0.0.0/25"), "one more bit")
    assert c.lookup(*p) == "one more bit"


def test_specificity_property():
    assert Filter.v4().specificity == (0, 0, 0, 0, 0)
    assert Filter.v4("10.0.0.0/8", "10.1.0.0/16", TCP, 0, 22).specificity == (24, 1, 1, 1, 0)
    assert Filter(4, ip("10.0.0.1"), 0xF0F0F0F0, 0, 0, 0, 7, 0).specificity == (16, 1, 0, 0, 1)


def test_tie_goes_to_the_filter_added_first():
    c: Classifier[str] = Classifier()
    p = pkt("10.0.0.1", "10.0.0.2")
    # Equal specificity, different shapes (/24 + /32 versus /32 + /24): first added wins.
    h_a = c.add(Filter.v4("10.0.0.0/24", "10.0.0.2"), "a")
    c.add(Filter.v4("10.0.0.1", "10.0.0.0/24"), "b")
    assert c.lookup(*p) == "a"
    # Exact duplicates share a bucket: first added wins, removing it promotes the next.
    c2: Classifier[str] = Classifier()
    h1 = c2.add(Filter.v4("10.0.0.1", "10.0.0.2"), "first")
    h2 = c2.add(Filter.v4("10.0.0.1", "10.0.0.2"), "second")
    h3 = c2.add(Filter.v4("10.0.0.1", "10.0.0.2"), "third")
    assert h1 < h2 < h3
    assert c2.lookup(*p) == "first"
    assert c2.remove(h2) == "second"
    assert c2.lookup(*p) == "first"
    assert c2.remove(h1) == "first"
    assert c2.lookup(*p) == "third"
    # Non-contiguous masks of equal popcount: different shapes, same tier.
    c3: Classifier[str] = Classifier()
    c3.add(Filter(4, ip("10.0.0.1"), 0xFF0000FF, 0, 0), "x")
    c3.add(Filter(4, ip("10.0.0.1"), 0xFFFF0000, 0, 0), "y")
    assert c3.lookup(*pkt("10.0.9.1", "1.1.1.1")) == "x"
    assert c.remove(h_a) == "a"
    assert c.lookup(*p) == "b"


def test_remove_and_replace():
    c: Classifier[str] = Classifier()
    h = c.add(Filter.v4("10.0.0.1", "10.0.0.2"), "old")
    g = c.add(Filter.v4("10.0.0.0/8"), "general")
    assert len(c) == 2 and h in c and c.shape_count == 2
    assert c.filter_of(h) == Filter.v4("10.0.0.1", "10.0.0.2")
    p = pkt("10.0.0.1", "10.0.0.2")
    assert c.replace(h, "new") == "old"
    assert c.lookup(*p) == "new"
    assert c.remove(h) == "new"
    assert h not in c and len(c) == 1 and c.shape_count == 1
    assert c.lookup(*p) == "general"
    with pytest.raises(KeyError):
        c.remove(h)
    with pytest.raises(KeyError):
        c.replace(h, "x")
    with pytest.raises(KeyError):
        c.filter_of(h)
    assert c.remove(g) == "general"
    assert len(c) == 0 and c.shape_count == 0 and c.lookup(*p) is None
    # Handles are not reused.
    assert c.add(Filter.v4(), "again") > g


def test_values_equal_to_handles_do_not_confuse_removal():
    c: Classifier[int] = Classifier()
    f = Filter.v4("10.0.0.1")
    h1 = c.add(f, 2)  # value 2 will equal the next handle
    h2 = c.add(f, 1)
    assert (h1, h2) == (1, 2)
    assert c.remove(h2) == 1
    assert c.lookup(*pkt("10.0.0.1", "1.1.1.1")) == 2


# -- property test: tuple-space search equals a linear scan ---------------------------------------

ADDR_POOL = {
    4: [0, ip("10.0.0.1"), ip("10.0.0.2"), ip("10.0.1.1"), ip("10.1.0.1"), ip("192.168.0.1"),
        ip("0.0.0.1")],
    6: [0, ip("2001:db8::1"), ip("2001:db8::2"), ip("2001:db8:0:1::1"), ip("2001:db9::1"),
        ip("::1")],
}
PREFIXES = {4: [0, 8, 16, 23, 24, 31, 32], 6: [0, 32, 48, 64, 120, 127, 128]}


def prefix_mask(version: int, plen: int) -> int:
    return ALL[version] ^ (ALL[version] >> plen)


@st.composite
def masks(draw, version: int) -> int:
    kind = draw(st.sampled_from(["prefix", "prefix", "prefix", "noncontig"]))
    if kind == "prefix":
        return prefix_mask(version, draw(st.sampled_from(PREFIXES[version])))
    # A non-contiguous mask: a few random byte-sized holes punched in a prefix, or fully random.
    m = prefix_mask(version, draw(st.sampled_from(PREFIXES[version])))
    for _ in range(draw(st.integers(1, 3))):
        m ^= 0xFF << (8 * draw(st.integers(0, WIDTH[version] // 8 - 1)))
    return m


@st.composite
def addresses(draw, version: int) -> int:
    return draw(st.one_of(st.sampled_from(ADDR_POOL[version]), st.integers(0, ALL[version])))


@st.composite
def filters(draw) -> Filter:
    version = draw(st.sampled_from([4, 4, 6]))
    return Filter(
        version,
        draw(addresses(version)), draw(masks(version)),
        draw(addresses(version)), draw(masks(version)),
        draw(st.sampled_from([0, 0, TCP, UDP])),
        draw(st.sampled_from([0, 0, 500, 1000])),
        draw(st.sampled_from([0, 0, 443, 500])),
    )


def packet_near(rnd: random.Random, f: Filter):
    """A packet built from a filter's fields, sometimes perturbed, to hit and nearly hit it."""
    top = ALL[f.version]

    def addr(a: int, m: int) -> int:
        keep = rnd.choice([m, m, top, 0])
        return (a & keep) | (rnd.getrandbits(WIDTH[f.version]) & ~keep & top)

    # Sometimes the other version, with the same address bits cut to its width (lookups do not
    # validate: a packet's fields are in range by construction).
    version = f.version if rnd.randrange(10) else 10 - f.version
    return (
        version,
        addr(f.src, f.src_mask) & ALL[version], addr(f.dst, f.dst_mask) & ALL[version],
        f.protocol if rnd.random() < 0.5 else rnd.choice([0, TCP, UDP, 50]),
        f.sport if rnd.random() < 0.5 else rnd.choice([0, 500, 1000, 4500]),
        f.dport if rnd.random() < 0.5 else rnd.choice([0, 443, 500, 80]),
    )


def random_packet(rnd: random.Random):
    version = rnd.choice([4, 6])
    pool = ADDR_POOL[version]
    def addr() -> int:
        return rnd.choice(pool) if rnd.random() < 0.7 else rnd.getrandbits(WIDTH[version])
    return (version, addr(), addr(), rnd.choice([0, TCP, UDP]), rnd.choice([0, 500, 1000]),
            rnd.choice([0, 443, 500]))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_lookup_equals_linear_scan(data):
    rnd = data.draw(st.randoms(use_true_random=False), label="packets")
    c: Classifier[str] = Classifier()
    live: dict[int, tuple[Filter, str]] = {}
    added: list[Filter] = []
    n_filters = data.draw(st.integers(1, 60), label="filters")
    steps = 0
    while len(added) < n_filters or steps < n_filters:
        steps += 1
        op = data.draw(st.sampled_from(["add"] * 6 + ["dup", "remove", "replace"]))
        if op in ("add", "dup") and len(added) < n_filters:
            f = data.draw(st.sampled_from(added)) if op == "dup" and added else data.draw(filters())
            tag = f"v{steps}"
            h = c.add(f, tag)
            assert h not in live
            live[h] = (f, tag)
            added.append(f)
        elif op == "remove" and live:
            h = data.draw(st.sampled_from(sorted(live)))
            assert c.remove(h) == live.pop(h)[1]
        elif op == "replace" and live:
            h = data.draw(st.sampled_from(sorted(live)))
            tag = f"r{steps}"
            assert c.replace(h, tag) == live[h][1]
            live[h] = (live[h][0], tag)
        assert len(c) == len(live)
        # Probe a few packets after every step: mostly derived from live filters.
        for _ in range(rnd.randrange(4)):
            if live and rnd.randrange(5):
                p = packet_near(rnd, rnd.choice([f for f, _ in live.values()]))
            else:
                p = random_packet(rnd)
            assert c.lookup(*p) == oracle_lookup(live, p), p
    # Every live filter's own addresses are looked up at the end.
    for f, _ in list(live.values()):
        p = (f.version, f.src, f.dst, f.protocol, f.sport, f.dport)
        assert c.lookup(*p) == oracle_lookup(live, p)


@settings(max_examples=200, deadline=None)
@given(filters(), st.randoms(use_true_random=False))
def test_filter_matches_agrees_with_oracle(f, rnd):
    p = packet_near(rnd, f)
    assert f.matches(*p) == oracle_match(f, *p)
    assert f.specificity == oracle_specificity(f)


# -- concurrency ----------------------------------------------------------------------------------


@pytest.fixture
def fast_switching():
    """Switch threads as often as CPython allows, so races have a chance to show."""
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(old)


def run_threads(writer, reader, n_readers=3, seconds=1.0):
    stop = threading.Event()
    errors: list[BaseException] = []
    counts: list[int] = []

    def guard(fn, *args):
        try:
            fn(*args)
        except BaseException as exc:  # noqa: BLE001 - reported to the main thread
            errors.append(exc)
            stop.set()

    threads = [threading.Thread(target=guard, args=(writer, stop))]
    threads += [threading.Thread(target=guard, args=(reader, stop, counts))
                for _ in range(n_readers)]
    for t in threads:
        t.start()
    stop.wait(seconds)
    stop.set()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    assert sum(counts) > 0
    return sum(counts)


def test_concurrent_replace_of_a_pair_is_never_torn(fast_switching):
    c: Classifier[tuple[int, int]] = Classifier()
    h = c.add(Filter.v4("10.0.0.1", "10.0.0.2"), (0, 0))
    c.add(Filter.v4("10.0.0.0/8"), (-1, -1))
    p = pkt("10.0.0.1", "10.0.0.2")

    def writer(stop):
        i = 0
        while not stop.is_set():
            i += 1
            c.replace(h, (i, i))  # e.g. an outbound SA and its partner, swapped as one value

    def reader(stop, counts):
        n, last = 0, 0
        while not stop.is_set():
            a, b = c.lookup(*p)
            assert a == b, (a, b)
            assert a >= last  # replace is linearizable: a reader never goes back in time
            last = a
            n += 1
        counts.append(n)

    run_threads(writer, reader)


def test_concurrent_add_then_remove_never_leaves_a_gap(fast_switching):
    """The writer moves coverage of one packet between shapes of different specificity, always
    adding the new filter before removing the old one, and creating/deleting shapes (and so
    republishing tiers) on every step. At every instant some filter matches the packet, so no
    lookup may answer None; each answer must be a value that was live."""
    c: Classifier[int] = Classifier()
    shapes = [
        Filter.v4("10.0.0.1", "10.0.0.2"),  # most specific
        Filter.v4("10.0.0.0/24", "10.0.0.0/24"),
        Filter.v4("10.0.0.1", None, protocol=TCP),
        Filter.v4("10.0.0.0/8"),  # least specific
    ]
    p = pkt("10.0.0.1", "10.0.0.2")
    c.add(Filter.v4("192.0.2.0/24"), -1)  # an unrelated shape that stays
    first = c.add(shapes[0], 0)
    issued = [0]

    def writer(stop):
        old, i = first, 0
        while not stop.is_set():
            i += 1
            new = c.add(shapes[(i * 3) % len(shapes)], i)  # jumps up and down in specificity
            issued[0] = i
            c.remove(old)
            old = new

    def reader(stop, counts):
        n = 0
        while not stop.is_set():
            v = c.lookup(*p)
            assert v is not None, "a lookup saw the gap between two writes"
            assert 0 <= v <= issued[0] + 1
            n += 1
        counts.append(n)

    run_threads(writer, reader)
    assert len(c) == 2


def test_concurrent_duplicate_bucket_updates(fast_switching):
    """Adds and removes of exact duplicates rewrite one bucket; the first-added filter that stays
    installed must always be what lookups see."""
    c: Classifier[str] = Classifier()
    f = Filter.v4("10.0.0.1", "10.0.0.2", TCP)
    c.add(f, "anchor")
    p = pkt("10.0.0.1", "10.0.0.2")

    def writer(stop):
        while not stop.is_set():
            hs = [c.add(f, "dup") for _ in range(3)]
            for h in hs:
                c.remove(h)

    def reader(stop, counts):
        n = 0
        while not stop.is_set():
            assert c.lookup(*p) == "anchor"
            n += 1
        counts.append(n)

    run_threads(writer, reader)
    assert len(c) == 1


def test_shape_and_key_is_the_packed_word_under_the_shape_mask():
    """``Filter._shape_and_key`` is written out for speed; the definition it shortcuts is the
    packed word of every field ANDed with the mask of the shape (effective masks, all-ones
    protocol/port parts for the fields given). Random filters of both versions, wildcards,
    mask-0 hosts and non-contiguous masks included."""
    from ipsecsa.sad.classifier import _pack, _shape_mask

    rng = random.Random(0x5A1E)

    def addr(bits: int) -> int:
        return rng.choice((0, 1, rng.getrandbits(bits), (1 << bits) - 1))

    def mask(bits: int) -> int:
        return rng.choice((0, (1 << bits) - 1, rng.getrandbits(bits),
                           ((1 << bits) - 1) ^ ((1 << rng.randrange(bits)) - 1)))

    for _ in range(3000):
        version = rng.choice((4, 6))
        bits = 32 if version == 4 else 128
        f = Filter(version, addr(bits), mask(bits), addr(bits), mask(bits),
                   rng.choice((0, 6, 255)), rng.choice((0, 1, 65535)), rng.choice((0, 500, 65535)))
        shape = (version, f.effective_src_mask, f.effective_dst_mask, bool(f.protocol),
                 bool(f.sport), bool(f.dport))
        want = _pack(version, f.src, f.dst, f.protocol, f.sport, f.dport) & _shape_mask(shape)
        assert f._shape_and_key() == (shape, want)


def _reference_probes(clf: Classifier, version: int) -> tuple:
    """The probe tuple as ``_publish`` built it before its one-shape case was written out."""
    groups = sorted((g for s, g in clf._groups.items() if s[0] == version),
                    key=lambda g: g.specificity, reverse=True)
    probes: list = []
    i = 0
    while i < len(groups):
        j = i + 1
        while j < len(groups) and groups[j].specificity == groups[i].specificity:
            j += 1
        tier = None if j == i + 1 else tuple((g.values.get, g.handles.get, g.mask)
                                             for g in groups[i:j])
        probes.extend((g.ports.get if g.prunes() else None, g.pmask, g.values.get, g.mask, tier)
                      for g in groups[i:j])
        i = j
    return tuple(probes)


def test_published_probes_are_what_the_general_loop_builds():
    """After every add and remove of a random sequence (zero, one and many shapes per version,
    shapes of equal specificity), the published probes equal the reference loop's."""
    rng = random.Random(0xB0B)
    clf: Classifier[int] = Classifier()
    live: list[int] = []
    for step in range(1500):
        if live and rng.random() < 0.45:
            clf.remove(live.pop(rng.randrange(len(live))))
        else:
            version = rng.choice((4, 6))
            top = (1 << (32 if version == 4 else 128)) - 1
            mask = rng.choice((top, top ^ 0xFF, top ^ 0xFFFF, 0))
            f = Filter(version, rng.choice((0, rng.getrandbits(8) + 1)), mask,
                       rng.getrandbits(8) + 1, rng.choice((top, top ^ 0xFF)),
                       rng.choice((0, 6)), 0, rng.choice((0, 443)))
            live.append(clf.add(f, step))
        assert clf._probes4 == _reference_probes(clf, 4)
        assert clf._probes6 == _reference_probes(clf, 6)
