"""Anti-replay window: numbered edge cases, then a property test against a set-based model.

References: RFC 4303 §3.4.3 (window rule, check before / update after the ICV) and Appendix A
(ESN high-half inference, Cases A and B). Appendix A gives no numeric examples, so test 22 walks
its four inference rows with concrete numbers instead.

Every test runs twice: on :class:`ReplayWindow` and on its C twin ``ipsecsa._fastesp.Replay``
(the window of SAs on the native fast path), made through ``new_window(..., native=True)``.
"""

from __future__ import annotations

import functools

import pytest
from conftest import require_native
from hypothesis import given, settings
from hypothesis import strategies as st

from ipsecsa.datapath.replay import (
    ESN_INFERENCE_WINDOW_WHEN_OFF,
    MAX_REPLAY_WINDOW,
    ReplayWindow,
    new_window,
)
from ipsecsa.errors import ConfigError


@pytest.fixture(autouse=True, params=["python", "native"])
def implementation(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run the module against the Python window or, by rebinding ``ReplayWindow``, the C one."""
    if request.param == "native":
        require_native()
        monkeypatch.setitem(globals(), "ReplayWindow", functools.partial(new_window, native=True))
    return request.param

WRAP = 1 << 32  # first sequence number of high half 1
SEQ64_MAX = (1 << 64) - 1


def receive(window: ReplayWindow, seq_low: int) -> int | None:
    """One packet through the data path with a good ICV: check, then commit."""
    seq = window.check(seq_low)
    if seq is not None:
        assert window.commit(seq) is True
    return seq


def accepts(window: ReplayWindow, seq_low: int) -> bool:
    return window.check(seq_low) is not None


# --- numbered edge cases ----------------------------------------------------------------------


def test_01_first_packet() -> None:
    w = ReplayWindow(64, esn=False)
    assert w.top == 0
    assert w.check(1) == 1
    assert w.top == 0  # check changes nothing
    assert w.commit(1) is True
    assert w.top == 1


def test_02_in_order() -> None:
    w = ReplayWindow(64, esn=False)
    for seq in range(1, 1001):
        assert receive(w, seq) == seq
    assert w.top == 1000


def test_03_in_window_out_of_order() -> None:
    w = ReplayWindow(64, esn=False)
    for seq in (1, 5, 3, 2, 4, 69, 7, 68, 6):  # window ends at 6..69
        assert receive(w, seq) == seq
    assert w.top == 69
    for seq in (1, 2, 3, 4, 5, 6, 7, 68, 69):
        assert not accepts(w, seq)
    assert accepts(w, 8) and accepts(w, 67) and accepts(w, 70)


def test_04_duplicate() -> None:
    w = ReplayWindow(64, esn=False)
    receive(w, 1)
    receive(w, 2)
    assert w.check(2) is None  # duplicate of top
    assert w.check(1) is None  # duplicate inside the window
    assert w.commit(2) is False and w.commit(1) is False


def test_05_left_edge_accepted_one_past_rejected() -> None:
    w = ReplayWindow(64, esn=False)
    receive(w, 100)  # window is 37..100: 64 numbers
    assert w.check(37) == 37
    assert w.check(36) is None
    assert w.commit(36) is False
    assert w.commit(37) is True


def test_06_too_old() -> None:
    w = ReplayWindow(64, esn=False)
    receive(w, 10_000)
    for seq in (1, 5000, 10_000 - 64):
        assert w.check(seq) is None
        assert w.commit(seq) is False
    assert w.top == 10_000


def test_07_far_ahead_clears_bitmap() -> None:
    w = ReplayWindow(64, esn=False)
    for seq in range(1, 65):
        receive(w, seq)
    receive(w, 64 + 1000)  # jump far beyond the window
    assert w.top == 1064
    for seq in range(1, 65):  # the old ones are now left of the window
        assert w.check(seq) is None
    for seq in range(1001, 1064):  # the new window holds only 1064
        assert w.check(seq) == seq
    assert w.check(1064) is None


@pytest.mark.parametrize("size", [32, 64, 100, 128, 1024])
@pytest.mark.parametrize("jump", [1, 2, 63, 64, 65, 127, 128, 129, 191, 256, 300, 2048, 5000])
def test_07b_jump_sweep_ring_aliasing(size: int, jump: int) -> None:
    """Every jump distance, including multiples of the ring's size where slots alias."""
    w = ReplayWindow(size, esn=False)
    old_top = 3 * size + 7
    for seq in range(1, old_top + 1):
        receive(w, seq)
    new_top = old_top + jump
    assert receive(w, new_top) == new_top
    for seq in range(max(1, new_top - size - 3), new_top + 3):
        in_window = new_top - seq < size
        seen = seq <= old_top or seq == new_top
        expected = seq if (seq > new_top or (in_window and not seen)) else None
        assert w.check(seq) == expected, seq


def test_08_seq_zero_without_esn() -> None:
    w = ReplayWindow(64, esn=False)
    assert w.check(0) is None
    assert w.commit(0) is False
    receive(w, 5)  # 0 would now lie inside the window: still never valid
    assert w.check(0) is None
    assert w.commit(0) is False


def test_09_window_zero_accepts_duplicates() -> None:
    w = ReplayWindow(0, esn=False)
    for seq in (5, 5, 1, 5, 4_000_000_000, 2):
        assert w.check(seq) == seq
        assert w.commit(seq) is True
    assert w.top == 4_000_000_000  # still tracked
    assert w.check(0) is None and w.commit(0) is False


@pytest.mark.parametrize("size", [32, 64, 1024, 4096, 65536])
def test_10_sizes(size: int) -> None:
    w = ReplayWindow(size, esn=False)
    assert w.size == size
    top = size * 3 + 5
    receive(w, top)
    left = top - size + 1
    assert w.check(left) == left  # exactly the left edge
    assert w.check(left - 1) is None  # one past it
    assert receive(w, left) == left and w.check(left) is None
    assert receive(w, top - 1) == top - 1
    # Move by more than one word and by exactly the window.
    assert receive(w, top + 65) == top + 65
    assert w.check(top) is None and w.check(top + 64) == top + 64
    assert receive(w, top + 65 + size) == top + 65 + size
    assert w.check(top + 65) is None and w.check(top + 66) == top + 66


@pytest.mark.parametrize("size", [-1, 1, 16, 31, MAX_REPLAY_WINDOW + 1, True, 64.0, "64", None])
def test_11_invalid_sizes(size: object) -> None:
    with pytest.raises(ConfigError) as info:
        ReplayWindow(size, esn=False)  # type: ignore[arg-type]
    assert info.value.field == "replay_window"


@pytest.mark.parametrize(
    ("esn", "top"), [(False, -1), (False, WRAP), (True, -1), (True, SEQ64_MAX + 1), (False, 1.0)]
)
def test_11b_invalid_top(esn: bool, top: object) -> None:
    with pytest.raises(ConfigError) as info:
        ReplayWindow(64, esn=esn, top=top)  # type: ignore[arg-type]
    assert info.value.field == "seq"


def test_12_restore_treats_at_or_below_top_as_seen() -> None:
    w = ReplayWindow(64, esn=False, top=1000)
    assert w.top == 1000
    for seq in (1000, 999, 990, 937):
        assert w.check(seq) is None
    assert receive(w, 1010) == 1010
    assert w.check(1005) == 1005  # above the restored top and never received
    assert w.check(1000) is None and w.check(999) is None  # still "seen"
    assert ReplayWindow(64, esn=False, top=WRAP - 1).check(WRAP - 1) is None  # space exhausted


def test_13_commit_of_a_replay_returns_false() -> None:
    w = ReplayWindow(64, esn=False)
    receive(w, 10)
    first, second = w.check(7), w.check(7)  # two copies both pass check
    assert first == second == 7
    assert w.commit(first) is True
    assert w.commit(second) is False
    assert w.top == 10 and w.check(7) is None
    # Also for copies of a new right edge.
    a, b = w.check(11), w.check(11)
    assert w.commit(a) is True and w.commit(b) is False and w.top == 11


def test_14_window_moved_between_check_and_commit() -> None:
    w = ReplayWindow(64, esn=False)
    receive(w, 100)
    late = w.check(40)
    assert late == 40
    receive(w, 200)  # 40 is now left of the window
    assert w.commit(late) is False
    assert w.top == 200


def test_15_esn_wrap_of_low_bits() -> None:
    w = ReplayWindow(64, esn=True, top=WRAP - 5)
    assert w.check(3) == WRAP + 3
    assert w.check(0) == WRAP  # low 0 after a wrap is valid
    assert w.check(WRAP - 4) == WRAP - 4  # still ahead in the old subspace
    assert receive(w, 3) == WRAP + 3
    assert w.top == WRAP + 3
    assert w.check(0) == WRAP  # now in the window, never received
    assert w.check(3) is None


def test_16_esn_late_packet_from_previous_subspace() -> None:
    w = ReplayWindow(64, esn=True, top=WRAP - 10)
    assert receive(w, WRAP - 4) == WRAP - 4
    assert receive(w, 2) == WRAP + 2  # the wrap
    assert w.top == WRAP + 2
    assert w.check(WRAP - 3) == WRAP - 3  # late, previous subspace, in window (Case B)
    assert receive(w, WRAP - 3) == WRAP - 3
    assert w.check(WRAP - 3) is None and w.check(WRAP - 4) is None
    assert w.top == WRAP + 2
    # Restored at the same top instead: everything at or below it counts as received.
    assert ReplayWindow(64, esn=True, top=WRAP + 2).check(WRAP - 3) is None


def test_17_esn_case_b_previous_high_half() -> None:
    th = 3
    w = ReplayWindow(64, esn=True, top=th * WRAP - 100)  # restored in subspace 2
    assert receive(w, 10) == th * WRAP + 10  # Tl = 10 < W - 1: Case B
    assert w.check(WRAP - 20) == th * WRAP - 20  # Seql >= Bl: Seqh = Th - 1
    assert w.check(WRAP - 53) == th * WRAP - 53  # exactly the left edge
    assert w.check(WRAP - 54) == (th + 1) * WRAP - 54  # one past: inferred ahead, never older
    assert w.check(5) == th * WRAP + 5  # Seql < Bl, Seql <= Tl: Seqh = Th
    assert w.check(11) == th * WRAP + 11  # ahead


def test_18_esn_high_half_exhaustion() -> None:
    w = ReplayWindow(64, esn=True, top=SEQ64_MAX - 4)  # Th = 2^32 - 1, Case A
    assert w.check(WRAP - 2) == SEQ64_MAX - 1
    assert w.check(WRAP - 1) == SEQ64_MAX
    assert w.check(3) is None  # would need Th + 1 = 2^32
    assert receive(w, WRAP - 1) == SEQ64_MAX
    for low in (0, 1, 1000, WRAP - 65):
        assert w.check(low) is None  # nothing left to receive
    assert w.commit(SEQ64_MAX + 1) is False


def test_19_esn_no_subspace_below_zero() -> None:
    w = ReplayWindow(64, esn=True)  # Th = 0, Tl = 0 < W - 1: Case B
    assert w.check(WRAP - 1) is None  # would be Th - 1 = -1
    assert w.check(WRAP - 63) is None  # Bl itself
    assert w.check(WRAP - 64) == WRAP - 64  # Seql < Bl: Th, far ahead
    assert w.check(1) == 1


def test_20_esn_full_zero_invalid() -> None:
    w = ReplayWindow(64, esn=True)
    assert w.check(0) is None
    assert w.commit(0) is False
    receive(w, 5)
    assert w.check(0) is None
    assert ReplayWindow(64, esn=True, top=WRAP - 5).check(0) == WRAP


def test_21_esn_window_zero_infers_nearest() -> None:
    assert ESN_INFERENCE_WINDOW_WHEN_OFF == 1 << 31
    w = ReplayWindow(0, esn=True, top=WRAP + 10)
    assert w.check(WRAP - 100) == WRAP - 100  # late, previous subspace: accepted (anti-replay off)
    assert w.check(10) == WRAP + 10  # duplicate of top: accepted
    half = 1 << 31
    assert w.check(half + 11) == half + 11  # 2^31 - 1 behind: the oldest it places behind
    assert w.check(half + 10) == WRAP + half + 10  # 2^31 ahead
    assert w.commit(WRAP - 100) is True and w.commit(WRAP - 100) is True
    assert w.top == WRAP + 10
    assert w.commit(WRAP + 20) is True and w.top == WRAP + 20
    assert ReplayWindow(0, esn=True).check(0) is None  # full 0 still invalid


@pytest.mark.parametrize(
    ("top", "seq_low", "expected"),
    [
        # Case A (Tl >= W - 1), W = 64, Th = 5; Bl = Tl - 63.
        (5 * WRAP + 1000, 937, 5 * WRAP + 937),  # Seql >= Bl: Th
        (5 * WRAP + 1000, 2000, 5 * WRAP + 2000),  # Seql >= Bl, ahead: Th
        (5 * WRAP + 1000, 936, 6 * WRAP + 936),  # Seql < Bl: Th + 1
        (5 * WRAP + 63, 0, 5 * WRAP),  # Tl = W - 1 is still Case A, Bl = 0
        # Case B (Tl < W - 1); Bl = Tl - 63 mod 2^32.
        (5 * WRAP + 62, WRAP - 1, 5 * WRAP - 1),  # Seql >= Bl: Th - 1
        (5 * WRAP + 10, WRAP - 53, 5 * WRAP - 53),  # Seql = Bl: Th - 1
        (5 * WRAP + 10, WRAP - 54, 5 * WRAP + WRAP - 54),  # Seql < Bl: Th
        (5 * WRAP + 10, 11, 5 * WRAP + 11),  # Seql < Bl: Th (ahead)
    ],
)
def test_22_rfc4303_appendix_a_rows(top: int, seq_low: int, expected: int) -> None:
    # A restored top makes everything at or below it "seen": restore further back, then commit
    # the top, so that the rest of the window is open.
    w = ReplayWindow(64, esn=True, top=top - 200)
    assert w.commit(top) is True
    assert w.check(seq_low) == expected


def test_23_slots_and_properties() -> None:
    w = ReplayWindow(64, esn=True, top=7)
    assert not hasattr(w, "__dict__")
    assert (w.size, w.esn, w.top) == (64, True, 7)
    with pytest.raises(AttributeError):
        w.top = 9  # type: ignore[misc]
    assert "ReplayWindow(size=64, esn=True, top=7)" == repr(w)


# --- property test against a trivially correct model --------------------------------------------


class Model:
    """A set of received numbers plus top, with the same window rule, written the obvious way."""

    def __init__(self, size: int, esn: bool, top: int) -> None:
        self.size, self.esn, self.top, self.restored = size, esn, top, top
        self.received: set[int] = set()
        self.max = SEQ64_MAX if esn else WRAP - 1

    def infer(self, seq_low: int) -> int | None:
        if not self.esn:
            return seq_low
        # The one number with these low bits in [T - W + 1, T - W + 2^32] (Appendix A, restated).
        w = self.size or ESN_INFERENCE_WINDOW_WHEN_OFF
        base = self.top - w + 1
        seq = base + (seq_low - base) % WRAP
        return seq if 0 <= seq <= self.max else None

    def seen(self, seq: int) -> bool:
        return seq <= self.restored or seq in self.received

    def check(self, seq_low: int) -> int | None:
        seq = self.infer(seq_low)
        if seq is None or seq == 0:
            return None
        if self.size == 0 or seq > self.top:
            return seq
        if self.top - seq >= self.size or self.seen(seq):
            return None
        return seq

    def commit(self, seq: int) -> bool:
        if not 0 < seq <= self.max:
            return False
        if self.size and seq <= self.top and (self.top - seq >= self.size or self.seen(seq)):
            return False
        self.received.add(seq)
        self.top = max(self.top, seq)
        return True


SIZES = [0, 32, 64, 100, 1024, 4096]


@settings(max_examples=300, deadline=None)
@given(data=st.data(), size=st.sampled_from(SIZES), esn=st.booleans())
def test_property_matches_model(data: st.DataObject, size: int, esn: bool) -> None:
    limit = SEQ64_MAX if esn else WRAP - 1
    starts = [0, 1, 50, 5000, WRAP - 3000, WRAP - 70, WRAP - 1]
    if esn:
        starts += [WRAP, WRAP + 20, 7 * WRAP - 100, SEQ64_MAX - 3000, SEQ64_MAX - 5]
    top0 = data.draw(st.sampled_from(starts), label="top")
    window = ReplayWindow(size, esn, top0)
    model = Model(size, esn, top0)
    span = max(size, 64)
    held: list[int] = []  # passed check, commit still pending (other packets overtake it)

    for _ in range(data.draw(st.integers(1, 60), label="steps")):
        kind = data.draw(st.sampled_from(["near", "near", "near", "jump", "hold", "late", "race"]))
        if kind == "late" and held:
            seq = held.pop(data.draw(st.integers(0, len(held) - 1)))
            assert window.commit(seq) == model.commit(seq)
            assert window.top == model.top
            continue
        if kind == "jump":
            offset = data.draw(st.integers(span, 3 * span + 3000))
        else:
            offset = data.draw(st.integers(-2 * span - 3, span + 3))
        true_seq = min(max(model.top + offset, 0), limit)
        seq_low = true_seq & (WRAP - 1)
        got = window.check(seq_low)
        assert got == model.check(seq_low), (true_seq, seq_low)
        if got is None:
            continue
        if got != true_seq:
            continue  # inferred into another subspace: the ICV would fail, nothing is committed
        if kind == "hold":
            held.append(got)
            continue
        icv_ok = data.draw(st.booleans()) if kind == "near" else True
        if not icv_ok:
            continue  # forged: checked, never committed
        assert window.commit(got) == model.commit(got)
        if kind == "race":  # a second copy that passed check before the first committed
            assert window.commit(got) == model.commit(got) == (size == 0)
        assert window.top == model.top

    # Final sweep: the window and the model agree on every number around the edge.
    for seq in range(max(0, model.top - span - 3), min(model.top + 3, limit) + 1):
        assert window.check(seq & (WRAP - 1)) == model.check(seq & (WRAP - 1)), seq
