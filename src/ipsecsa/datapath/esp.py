"""ESP (RFC 4303): framing, padding, sequence numbers and replay around the per-SA crypto step.

The cryptographic step (``EspTransform.seal``/``open`` from :mod:`ipsecsa.crypto.transforms`) is
kept apart from everything here — headers, padding, sequence numbers, replay, lifetimes, policy —
because a NIC (``ipsecsa.ndis``) or a native batch engine can take its place: the SA calls
``self._seal`` / ``self._open``, which are the transform's bound methods unless swapped.

Outbound (RFC 4303 §3.3): sequence number assignment (never cycling, §3.3.3), padding to the
cipher's alignment (§2.4), optional TFC padding in tunnel mode (§2.4, §2.7), next header, IV and
ICV from the transform; transport mode inserts ESP after the IP header (IPv6: after the
extension headers that precede it, §3.1.1); tunnel mode builds a new outer header.

Inbound (RFC 4303 §3.4): reassembly of fragments first (§3.4.1), SPI check, anti-replay check
*before* the ICV and window update *after* it (§3.4.3), ICV/decryption, padding check (§2.4),
next header 59 dummy packets discarded (§2.6), and the inner packet checked against the SA's
selectors (RFC 4301 §5.2).
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable, Iterable
from typing import Protocol

from ipsecsa.crypto.transforms import EspTransform, esp_lengths, make_esp_transform, new_iv_mask
from ipsecsa.datapath import native as _native
from ipsecsa.datapath.replay import ReplayWindow
from ipsecsa.datapath.result import DROPPED, HELD, Result
from ipsecsa.datapath.sa import IvSource, SecurityAssociation
from ipsecsa.datapath.tunnel import ident_start
from ipsecsa.errors import ConfigError, DropReason, MalformedPacket, as_packet
from ipsecsa.packet.checksum import ones_sum
from ipsecsa.packet.ipv4 import ESP as PROTO_ESP
from ipsecsa.packet.ipv4 import HEADER_WORDS as _V4W
from ipsecsa.packet.ipv4 import IPIP as PROTO_IPIP  # tunnel mode next header: IPv4 inner packet
from ipsecsa.packet.ipv4 import IPV4_MAX_TOTAL_LENGTH as MAX_IPV4_LEN
from ipsecsa.packet.ipv4 import IPV6_IN_IP as PROTO_IPV6  # tunnel mode: IPv6 inner packet
from ipsecsa.packet.ipv4 import NONE as PROTO_NONE  # RFC 4303 §2.6 dummy packet
from ipsecsa.packet.ipv4 import TCP as PROTO_TCP
from ipsecsa.packet.ipv4 import UDP as PROTO_UDP
from ipsecsa.packet.ipv6 import DSTOPTS, FRAGMENT, HOPOPTS, ROUTING, parse_ipv6_chain
from ipsecsa.packet.natt import ESP_HEADER_LEN, UdpKind, classify_udp_payload
from ipsecsa.packet.udp import UDP_HEADER as _UDP
from ipsecsa.packet.udp import build_udp, fix_l4_checksum, udp_checksum

# --- specification constants -------------------------------------------------------------
#: IPv6 extension headers that can sit between ESP and the upper layer in transport mode.
_V6_EXT_AFTER_ESP = frozenset({HOPOPTS, ROUTING, FRAGMENT, DSTOPTS})

# --- precomputed tables -------------------------------------------------------------------
#: An outer IPv4 header whose addresses are one pre-packed 8-byte field.
_V4OUT = struct.Struct("!BBHHHBBH8s")
_U32 = struct.Struct("!I").pack
_SPI_SEQ = struct.Struct("!II")
_H = struct.Struct("!H")
_V6FIRST = struct.Struct("!IHBB")

#: RFC 4303 §2.4 default padding: bytes 1, 2, 3, ... ; index = pad length.
PAD = [bytes(range(1, n + 1)) for n in range(256)]
#: Trailer (padding ‖ pad length ‖ next header) by ``pad_len << 8 | next_header`` for the pad
#: lengths block alignment can need (0..15), so the hot path does one list index.
_TRAILER = [PAD[p] + bytes((p, nh)) for p in range(16) for nh in range(256)]

_new = tuple.__new__
log = logging.getLogger("ipsecsa.esp")


class NicStep(Protocol):
    """The crypto step done by a NIC (the NDIS offload division of labour, reference A.1)."""

    def send(self, header: bytes, esp_header: bytes, plaintext: bytes) -> bytes | None: ...

    def open(self, packet: bytes, esp_off: int, ct_off: int, end: int, seq: int
             ) -> bytes | None: ...


class EspSA(SecurityAssociation):
    """An ESP SA (RFC 4303): transport or tunnel mode, IPv4 or IPv6, optionally in UDP."""

    PROTOCOL = "esp"

    __slots__ = (
        "_block",
        "_bmask",
        "_check_blocks",
        "_df_fixed",
        "_dport",
        "_dscp",
        "_dst",
        "_encap",
        "_icvlen",
        "_ident",
        "_ivlen",
        "_min_esp",
        "_nat",
        "_o4addr",
        "_o4proto",
        "_o4sum",
        "_open",
        "_outer_extra",
        "_overhead",
        "_seal",
        "_spi_b",
        "_sport",
        "_src",
        "_tfc",
        "_transform",
        "_ttl",
        "_v6",
        "protect",
        "unprotect",
    )

    #: The Python path's crypto step; None on a native SA until the Python path first needs it.
    _transform: EspTransform | None

    # ----------------------------------------------------------------- per-SA preparation
    @property
    def transform(self) -> EspTransform:
        """The per-SA crypto step of the Python path (:mod:`ipsecsa.crypto.transforms`); on the
        native path built on first use."""
        t = self._transform
        return self._make_transform() if t is None else t

    def _make_transform(self, unsafe_iv_source: IvSource | None = None) -> EspTransform:
        """Build the Python path's transform: at construction on a Python-path SA (with the
        caller's ``unsafe_iv_source``), on first use on a native one, where the IV source and
        the counter-IV mask are the native engine's (kept once, there), so that both paths
        of one SA draw IVs from one sequence and never repeat one."""
        c = self.config
        key = c.encryption_key.bytes if c.encryption_key is not None else b""
        ikey = c.integrity_key.bytes if c.integrity_key is not None else None
        integ = c.integrity if (c.integrity is not None and c.integrity.name != "none") else None
        nat = self._nat
        iv_mask = None
        if nat is not None:
            unsafe_iv_source, iv_mask = nat.iv_source, nat.iv_mask
        t = make_esp_transform(c.encryption, key, integ, ikey, esn=c.esn,
                               unsafe_iv_source=unsafe_iv_source, iv_mask=iv_mask)
        if nat is not None:
            self._python_fields()
        self._transform = t
        #: The crypto step of the Python path (a NIC model does it instead when ``_nic`` is set).
        self._seal: Callable[[bytes, int, bytes], tuple[bytes, bytes]] = t.seal
        self._open: Callable[[bytes, int, bytes, bytes], bytes | None] = t.open
        return t

    def _wants_native(self, config: object, native: bool | None) -> bool:
        if native is None:
            native = _native.default()
        if native is False:
            return False
        ok = _native.available() and _native.supports(config)
        if native and not ok:
            raise ConfigError("native", _native.why_off() or "the native fast path does not "
                                        "implement this SA's algorithms")
        return ok

    def _new_window(self, config: object, use_native: bool) -> ReplayWindow:
        c = config
        if use_native:
            # The C twin of ReplayWindow, shared by the native engine and the Python path.
            return _native.new_window(c.replay_window, c.esn, c.seq)  # type: ignore[attr-defined]
        return super()._new_window(config, use_native)

    def _attach_native(self, unsafe_iv_source: IvSource | None) -> None:
        # The counter-IV mask is drawn here and kept by the engine only; the Python transform,
        # if ever built, takes it from there (_make_transform).
        iv_mask = 0 if unsafe_iv_source is not None else new_iv_mask()
        self._nat = _native.engine_for(self, unsafe_iv_source, iv_mask)

    def _build(self, unsafe_iv_source: IvSource | None, native: bool = False) -> None:
        self._nat = None
        c = self.config
        integ = c.integrity if (c.integrity is not None and c.integrity.name != "none") else None
        if native:
            # The native engine does the crypto; the Python transform (and its cryptography
            # objects, ~1.4 KB per SA) is built only if the Python path ever needs it, with the
            # engine's counter-IV mask so that both paths share it. ``_seal``/``_open`` stay
            # unset until then: the Python path is entered through _py_out/_py_in, which build.
            self._transform = None
            ivlen, icvlen, block = esp_lengths(c.encryption, integ)
        else:
            t = self._make_transform(unsafe_iv_source)
            ivlen, icvlen, block = t.iv_len, t.icv_len, t.block_size
        replay = self._replay
        if icvlen == 0 and replay is not None and replay.size:
            # Encryption-only ESP: nothing authenticates the sequence number, so a forged packet
            # would move the window and lock out the genuine traffic (RFC 4303 §3.4.3 updates
            # the window only after integrity verification). Anti-replay is therefore off;
            # high ESN bits are still inferred.
            log.warning("SA 0x%08x: encryption-only ESP, anti-replay turned off (no ICV to "
                        "protect the window)", c.spi)
            self._window = ReplayWindow(0, c.esn, top=replay.top)
        self._ivlen = ivlen
        self._icvlen = icvlen
        self._block = block
        self._bmask = block - 1
        self._check_blocks = block > 4
        self._overhead = ESP_HEADER_LEN + ivlen + icvlen
        self._min_esp = ESP_HEADER_LEN + ivlen + max(block, 4) + icvlen
        self._tfc = c.tfc_padding if c.mode == "tunnel" else 0
        encap = c.encapsulation
        self._encap = encap
        self._sport = encap.sport if encap else 0
        self._dport = encap.dport if encap else 0
        self._v6 = c.src.version == 6
        self._ttl = c.ttl
        self._dscp = None if c.dscp == "copy" else c.dscp
        self._df_fixed = None if c.df == "copy" else (0x4000 if c.df == "set" else 0)
        self._o4proto = PROTO_UDP if encap else PROTO_ESP
        self._outer_extra = 20 + (8 if encap else 0)
        # The outer IPv4 Identification counter exists in IPv4 tunnel mode only (transport mode
        # keeps the packet's own header; IPv6 has none): elsewhere a shared 0, no int per SA.
        self._ident = ident_start(c.spi) if c.mode == "tunnel" and not self._v6 else 0
        if not native:
            self._python_fields()

    def _python_fields(self) -> None:
        """The byte strings only the Python path reads (built with its transform on a native
        SA): SPI, outer addresses, the outer IPv4 header's constant checksum part."""
        c = self.config
        src, dst = c.src.packed, c.dst.packed
        self._spi_b = _U32(c.spi)
        self._src, self._dst = src, dst
        # Outer IPv4 header: the checksum contribution of everything constant, once per SA.
        self._o4addr = src + dst
        self._o4sum = (0x45 << 8) + (c.ttl << 8) + self._o4proto + (
            sum(struct.unpack("!HHHH", src + dst)) if not self._v6 else 0)

    def _select_paths(self) -> tuple[Callable[..., Result], Callable[..., Result]]:
        if self.mode == "tunnel":
            return self._out_tunnel, self._in_any
        return self._out_transport, self._in_any

    def _bind(self) -> None:
        """Bind the Python paths, then put the native engine in front of them for the
        direction this SA may use (it hands what it does not take to ``_py_out``/``_py_in``)."""
        super()._bind()
        nat = self._nat
        if nat is None:
            return
        # The engine object itself is the call (its vectorcall is protect on an outbound SA,
        # unprotect on any other): no bound method kept per SA.
        if self.direction == "outbound":
            self.protect = nat  # type: ignore[method-assign]
        else:
            self.unprotect = nat  # type: ignore[method-assign]

    def _py_out(self, pkt: bytes, now: float | None = None) -> Result:
        """The Python path of ``protect`` (the reference): where the native engine hands the
        packets it does not take. Builds the Python transform on first use."""
        if self._transform is None:
            self._make_transform()
        return (self._out_tunnel if self.mode == "tunnel" else self._out_transport)(pkt, now)

    def _py_in(self, pkt: bytes, now: float | None = None) -> Result:
        """The Python path of ``unprotect``; see :meth:`_py_out`."""
        if self._transform is None:
            self._make_transform()
        return self._in_any(pkt, now)

    @property
    def native(self) -> bool:
        """Whether this SA runs on the native fast path (:mod:`ipsecsa.datapath.native`)."""
        return self._nat is not None

    def protect_batch(self, packets: Iterable[bytes], now: float | None = None) -> list[Result]:
        """``protect`` over a batch, in order (sequence numbers follow the batch order); on the
        native path one call, with the GIL released around the crypto of large batches."""
        nat = self._nat
        if nat is not None and self.direction == "outbound":
            if isinstance(packets, (bytes, bytearray, memoryview)):
                raise TypeError("protect_batch takes an iterable of packets, not one packet")
            return nat.protect_batch(packets, now)  # type: ignore[no-any-return]
        return super().protect_batch(packets, now)

    def unprotect_batch(self, packets: Iterable[bytes], now: float | None = None
                        ) -> list[Result]:
        """``unprotect`` over a batch, in order: the verdicts of the same packets one by one."""
        nat = self._nat
        if nat is not None and self.direction != "outbound":
            if isinstance(packets, (bytes, bytearray, memoryview)):
                raise TypeError("unprotect_batch takes an iterable of packets, not one packet")
            return nat.unprotect_batch(packets, now)  # type: ignore[no-any-return]
        return super().unprotect_batch(packets, now)

    # ----------------------------------------------------------------- shared pieces
    def _encrypt(self, payload: bytes, next_header: int) -> tuple[int, bytes]:
        """Pad, number and seal ``payload``: returns (seq, ESP header ‖ IV ‖ ciphertext ‖ ICV)."""
        n = len(payload) + 2
        pad = -n & self._bmask
        seq = self._seq + 1  # the caller checked seq_limit
        self._seq = seq
        esp_hdr = self._spi_b + _U32(seq & 0xFFFFFFFF)
        iv, body = self._seal(esp_hdr, seq, payload + _TRAILER[pad << 8 | next_header])
        return seq, b"".join((esp_hdr, iv, body))

    # ----------------------------------------------------------------- outbound: transport
    def _out_transport(self, pkt: bytes, now: float | None = None) -> Result:
        """Transport mode: ESP between the IP header (and IPv6 extension headers) and the
        upper-layer payload."""
        if pkt.__class__ is not bytes:
            pkt = as_packet(pkt)
        if self._slow:
            reason, now = self._gate(now)
            if reason is not None:
                return self._drop(reason)
        try:
            vihl, tos, tlen, ident, ff, ttl, proto, _c, s1, s2, d1, d2 = _V4W.unpack_from(pkt)
        except struct.error:
            return self._drop(DropReason.TRUNCATED)
        if vihl != 0x45:
            if vihl >> 4 == 6:
                return self._out_transport6(pkt, now)
            if vihl >> 4 != 4 or vihl & 15 < 5:
                return self._drop(DropReason.MALFORMED)
        if self._v6:
            return self._drop(DropReason.WRONG_PROTOCOL)
        ihl = (vihl & 15) << 2
        if tlen > len(pkt) or tlen < ihl:
            return self._drop(DropReason.MALFORMED)
        if ff & 0x3FFF:  # transport mode applies to whole datagrams only (RFC 4303 §3.3)
            return self._drop(DropReason.MALFORMED)
        if self._selectors and not self._selectors_ok(4, pkt[12:16], pkt[16:20], proto, pkt, ihl):
            return self._drop(DropReason.SELECTOR_MISMATCH)
        plen = tlen - ihl
        pad = -(plen + 2) & self._bmask
        new_len = ihl + self._overhead + plen + 2 + pad
        if self._encap is not None:
            new_len += 8
            out_proto = PROTO_UDP
        else:
            out_proto = PROTO_ESP
        if new_len > MAX_IPV4_LEN:  # decided before a sequence number is spent
            return self._drop(DropReason.TOO_BIG)
        if self._seq >= self._seq_limit and (refused := self._over_limit()) is not None:
            return self._drop(refused)
        seq = self._seq + 1
        self._seq = seq
        esp_hdr = self._spi_b + _U32(seq & 0xFFFFFFFF)
        plain = pkt[ihl:tlen] + _TRAILER[pad << 8 | proto]
        s = (vihl << 8) + tos + new_len + ident + ff + (ttl << 8) + out_proto + s1 + s2 + d1 + d2
        if ihl > 20:
            s += ones_sum(pkt[20:ihl])
        s = (s & 0xFFFF) + (s >> 16)
        s = (s & 0xFFFF) + (s >> 16)
        hdr = _V4W.pack(vihl, tos, new_len, ident, ff, ttl, out_proto, ~s & 0xFFFF,
                        s1, s2, d1, d2)
        if ihl > 20:
            hdr += pkt[20:ihl]
        if self._encap is not None:
            hdr += _UDP.pack(self._sport, self._dport, new_len - ihl, 0)
        self.packets = p = self.packets + 1
        self.bytes = b = self.bytes + tlen
        if p >= self._pmark or b >= self._bmark or seq >= self._seq_max:
            self._post_send(seq, now)
        if self._nic is None or (out := self._nic.send(hdr, esp_hdr, plain)) is None:
            iv, body = self._seal(esp_hdr, seq, plain)
            return _new(Result, (b"".join((hdr, esp_hdr, iv, body)), None))
        return _new(Result, (out, None))

    def _out_transport6(self, pkt: bytes, now: float | None) -> Result:
        if not self._v6:
            return self._drop(DropReason.WRONG_PROTOCOL)
        try:
            ch = parse_ipv6_chain(pkt, stop_at_ipsec=False)
        except MalformedPacket as exc:
            return self._drop(exc.reason)
        if ch.fragment is not None:
            return self._drop(DropReason.MALFORMED)
        end = 40 + ch.payload_length
        ins, nh_off = ch.insert_offset, ch.insert_nh_offset
        next_header = pkt[nh_off]
        if self._selectors and not self._selectors_ok(6, ch.src, ch.dst, ch.upper_protocol,
                                                      pkt[:end], ch.upper_offset):
            return self._drop(DropReason.SELECTOR_MISMATCH)
        dlen = end - ins
        esp_len = self._overhead + dlen + 2 + (-(dlen + 2) & self._bmask)
        udp_len = 8 if self._encap is not None else 0
        if ins - 40 + udp_len + esp_len > 0xFFFF:  # decided before a sequence number is spent
            return self._drop(DropReason.TOO_BIG)
        if self._seq >= self._seq_limit and (refused := self._over_limit()) is not None:
            return self._drop(refused)
        seq, esp = self._encrypt(pkt[ins:end], next_header)
        head = bytearray(pkt[:ins])
        if self._encap is not None:
            esp = build_udp(ch.src, ch.dst, self._sport, self._dport, esp)
            head[nh_off] = PROTO_UDP
        else:
            head[nh_off] = PROTO_ESP
        _H.pack_into(head, 4, ins - 40 + len(esp))
        return self._sent(seq, end, now, bytes(head) + esp)

    # ----------------------------------------------------------------- outbound: tunnel
    def _out_tunnel(self, pkt: bytes, now: float | None = None) -> Result:
        """Tunnel mode: the whole inner packet (IPv4 or IPv6) becomes the ESP payload."""
        if pkt.__class__ is not bytes:
            pkt = as_packet(pkt)
        if self._slow:
            reason, now = self._gate(now)
            if reason is not None:
                return self._drop(reason)
        # The inner packet's checks, length, TOS/traffic class, DF, flow label and next header:
        # ipsecsa.datapath.tunnel.inner_info inlined (it states the rules; calling it costs
        # ~5% per packet here). tests/datapath/test_tunnel_inner.py holds the two equal.
        n = len(pkt)
        if n < 20:
            return self._drop(DropReason.TRUNCATED)
        first = pkt[0]
        if first >> 4 == 4:
            if first & 15 < 5:
                return self._drop(DropReason.MALFORMED)
            ilen = pkt[2] << 8 | pkt[3]
            if ilen > n or ilen < (first & 15) << 2:
                return self._drop(DropReason.MALFORMED)
            tos = pkt[1]
            ff = (pkt[6] & 0x40) << 8 if self._df_fixed is None else self._df_fixed
            flow = 0
            next_header = PROTO_IPIP
        elif first >> 4 == 6:
            if n < 40:
                return self._drop(DropReason.TRUNCATED)
            ilen = 40 + (pkt[4] << 8 | pkt[5])
            if ilen > n or (ilen == 40 and pkt[6] == 0):  # RFC 2675 jumbogram: unsupported
                return self._drop(DropReason.MALFORMED)
            tos = (first & 15) << 4 | pkt[1] >> 4
            flow = (pkt[1] & 15) << 16 | pkt[2] << 8 | pkt[3]
            ff = 0x4000 if self._df_fixed is None else self._df_fixed
            next_header = PROTO_IPV6
        else:
            return self._drop(DropReason.MALFORMED)
        inner = pkt if ilen == n else pkt[:ilen]
        if self._selectors:
            refused = self._inner_policy(inner)
            if refused is not None:
                return self._drop(refused)
        plen = ilen
        if plen < self._tfc:  # RFC 4303 §2.4: TFC padding after the inner packet
            inner = inner + bytes(self._tfc - plen)
            plen = self._tfc
        pad = -(plen + 2) & self._bmask
        elen = self._overhead + plen + 2 + pad
        # Lengths are decided before a sequence number is spent.
        if self._v6:
            if elen + (8 if self._encap is not None else 0) > 0xFFFF:
                return self._drop(DropReason.TOO_BIG)
        elif elen + self._outer_extra > MAX_IPV4_LEN:
            return self._drop(DropReason.TOO_BIG)
        if self._seq >= self._seq_limit and (refused := self._over_limit()) is not None:
            return self._drop(refused)
        seq = self._seq + 1
        self._seq = seq
        esp_hdr = self._spi_b + _U32(seq & 0xFFFFFFFF)
        plain = inner + _TRAILER[pad << 8 | next_header]
        if self._dscp is not None:
            tos = (self._dscp << 2) | (tos & 3)
        if self._v6:
            iv, body = self._seal(esp_hdr, seq, plain)
            if self._encap is not None:
                udp = build_udp(self._src, self._dst, self._sport, self._dport,
                            b"".join((esp_hdr, iv, body)))
                return self._sent(seq, ilen, now, _V6FIRST.pack(
                    (6 << 28) | (tos << 20) | flow, elen + 8, PROTO_UDP, self._ttl)
                    + self._src + self._dst + udp)
            hdr = _V6FIRST.pack((6 << 28) | (tos << 20) | flow, elen, PROTO_ESP, self._ttl)
            return self._sent(seq, ilen, now, b"".join((hdr, self._src, self._dst, esp_hdr,
                                                         iv, body)))
        total = elen + self._outer_extra
        self._ident = ident = (self._ident + 1) & 0xFFFF
        s = self._o4sum + tos + total + ident + ff
        s = (s & 0xFFFF) + (s >> 16)
        s = (s & 0xFFFF) + (s >> 16)
        hdr = _V4OUT.pack(0x45, tos, total, ident, ff, self._ttl, self._o4proto, ~s & 0xFFFF,
                          self._o4addr)
        if self._encap is not None:
            hdr += _UDP.pack(self._sport, self._dport, elen + 8, 0)
        self.packets = p = self.packets + 1
        self.bytes = b = self.bytes + ilen
        if p >= self._pmark or b >= self._bmark or seq >= self._seq_max:
            self._post_send(seq, now)
        if self._nic is None or (out := self._nic.send(hdr, esp_hdr, plain)) is None:
            iv, body = self._seal(esp_hdr, seq, plain)
            return _new(Result, (b"".join((hdr, esp_hdr, iv, body)), None))
        return _new(Result, (out, None))

    def _sent(self, seq: int, nbytes: int, now: float | None, out: bytes) -> Result:
        """Account for a sent packet (the less hot paths) and wrap it in a Result."""
        self.packets = p = self.packets + 1
        self.bytes = b = self.bytes + nbytes
        if p >= self._pmark or b >= self._bmark or seq >= self._seq_max:
            self._post_send(seq, now)
        return _new(Result, (out, None))

    def _post_send(self, seq: int, now: float | None) -> None:
        if self.packets >= self._pmark or self.bytes >= self._bmark:
            self._lifetime_crossed(now)
        if seq >= self._seq_max:
            self._exhausted(now)

    # ----------------------------------------------------------------- inbound
    def _in_any(self, pkt: bytes, now: float | None = None) -> Result:
        """Inbound, any family/mode: outer header → (UDP) → ESP → inner packet."""
        if pkt.__class__ is not bytes:
            pkt = as_packet(pkt)
        if self._slow:
            reason, now = self._gate(now)
            if reason is not None:
                return self._drop(reason)
        try:
            vihl, tos, tlen, _id, ff, _ttl, proto, _c, s1, s2, d1, d2 = _V4W.unpack_from(pkt)
        except struct.error:
            return self._drop(DropReason.TRUNCATED)
        version = vihl >> 4
        if version == 4 and not self._v6:
            ihl = (vihl & 15) << 2
            if ihl < 20 or tlen < ihl or tlen > len(pkt):
                return self._drop(DropReason.MALFORMED)
            # The header checksum, from the fields already unpacked (sums to 0xFFFF if good).
            s = ((vihl << 8) + tos + tlen + _id + ff + (_ttl << 8) + proto + _c
                 + s1 + s2 + d1 + d2 + (ones_sum(pkt[20:ihl]) if ihl > 20 else 0))
            s = (s & 0xFFFF) + (s >> 16)
            if (s & 0xFFFF) + (s >> 16) != 0xFFFF:
                return self._drop(DropReason.BAD_CHECKSUM)
            if ff & 0x3FFF:
                return self._reassemble(pkt, now)
            outer_ecn = tos & 3
            off = ihl
            end = tlen
        elif version == 6 and self._v6:
            try:
                ch = parse_ipv6_chain(pkt, stop_at_ipsec=True)
            except MalformedPacket as exc:
                return self._drop(exc.reason)
            if ch.fragment is not None:
                return self._reassemble(pkt, now)
            proto = ch.upper_protocol
            off = ch.upper_offset
            end = 40 + ch.payload_length
            outer_ecn = ch.traffic_class & 3
        else:
            return self._drop(DropReason.WRONG_PROTOCOL if version in (4, 6)
                              else DropReason.MALFORMED)
        esp_off = off
        if self._encap is not None:
            if proto != PROTO_UDP:
                return self._drop(DropReason.WRONG_PROTOCOL)
            if end - off < 8:
                return self._drop(DropReason.TRUNCATED)
            ulen = pkt[off + 4] << 8 | pkt[off + 5]
            if ulen < 8 or off + ulen > end:
                return self._drop(DropReason.BAD_UDP)
            end = off + ulen
            if version == 6 and (pkt[off + 6:off + 8] == b"\x00\x00" or udp_checksum(
                    ch.src, ch.dst, pkt[off:end]) != (pkt[off + 6] << 8 | pkt[off + 7])):
                # RFC 8200 §8.1: over IPv6 the UDP checksum is mandatory and a zero one is
                # discarded. (Over IPv4 RFC 3948 §2.1 sends zero and the ICV protects.)
                return self._drop(DropReason.BAD_UDP)
            kind = classify_udp_payload(pkt[off + 8:end])
            if kind is not UdpKind.ESP:
                return self._drop(DropReason.NATT_KEEPALIVE if kind is UdpKind.KEEPALIVE
                                  else DropReason.NON_ESP_MARKER if kind is UdpKind.IKE
                                  else DropReason.TRUNCATED)
            esp_off = off + 8
        elif proto != PROTO_ESP:
            return self._drop(DropReason.WRONG_PROTOCOL)
        # --- ESP proper
        if end - esp_off < self._min_esp:
            return self._drop(DropReason.TRUNCATED)
        spi, seq_lo = _SPI_SEQ.unpack_from(pkt, esp_off)
        if spi != self.spi:
            return self._drop(DropReason.BAD_SPI)
        seq = self._window.check(seq_lo)
        if seq is None:
            return self._drop(DropReason.REPLAY)
        ct_off = esp_off + ESP_HEADER_LEN + self._ivlen
        if self._check_blocks and (end - ct_off - self._icvlen) % self._block:
            return self._drop(DropReason.BAD_LENGTH)
        if self._nic is None:
            plain = self._open(pkt[esp_off:esp_off + ESP_HEADER_LEN],
                               seq, pkt[esp_off + ESP_HEADER_LEN:ct_off], pkt[ct_off:end])
        else:
            plain = self._nic.open(pkt, esp_off, ct_off, end, seq)
        if plain is None:
            return self._drop(DropReason.ICV_FAILURE)
        if not self._window.commit(seq):
            return self._drop(DropReason.REPLAY)
        padlen = plain[-2]
        next_header = plain[-1]
        dlen = len(plain) - 2 - padlen
        if dlen < 0 or plain[dlen:-2] != PAD[padlen]:
            return self._drop(DropReason.BAD_PADDING)
        if next_header == PROTO_NONE:
            return self._drop(DropReason.DUMMY_PACKET)
        if self.mode == "tunnel":
            return self._deliver_tunnel(plain, dlen, next_header, outer_ecn, now)
        # --- transport: rebuild the packet around the payload
        hdr, _src, _dst = self._rebuild_transport(pkt, off, dlen, next_header,
                                                  ch if version == 6 else None)
        out = hdr + plain[:dlen]
        if (self._encap is not None or self._selectors
                or (version == 6 and next_header in _V6_EXT_AFTER_ESP)):
            checked = self._transport_checks(out, len(hdr), next_header)
            if isinstance(checked, DropReason):
                return self._drop(checked)
            out = checked
        self.packets = p = self.packets + 1
        self.bytes = b = self.bytes + len(hdr) + dlen
        if p >= self._pmark or b >= self._bmark:
            self._lifetime_crossed(now)
        return _new(Result, (out, None))

    def _transport_checks(self, out: bytes, hlen: int, next_header: int) -> bytes | DropReason:
        """Transport mode, inbound, after the header ``out[:hlen]`` was rebuilt around the
        payload: extension headers after ESP, the NAT checksum fix-up and the selectors.
        Returns the packet to deliver or why it is refused. (The native engine calls this too.)
        """
        version = out[0] >> 4
        upper, l4_off = next_header, hlen
        if version == 6 and next_header in _V6_EXT_AFTER_ESP:
            # RFC 4303 §3.1.1: destination options may follow ESP; the selectors and the
            # checksum fix-up concern the upper layer behind them.
            try:
                upper_ch = parse_ipv6_chain(out, stop_at_ipsec=False)
            except MalformedPacket as exc:
                return exc.reason
            upper, l4_off = upper_ch.upper_protocol, upper_ch.upper_offset
        src, dst = (out[12:16], out[16:20]) if version == 4 else (out[8:24], out[24:40])
        if self._encap is not None and upper in (PROTO_TCP, PROTO_UDP):
            # RFC 3948 §3.1.2: a NAT changed the addresses the transport checksum covered.
            out = out[:l4_off] + fix_l4_checksum(src, dst, upper, out[l4_off:])
        if self._selectors and not self._selectors_ok(version, src, dst, upper, out, l4_off):
            return DropReason.SELECTOR_MISMATCH
        return out

__all__ = ["DROPPED", "HELD", "PAD", "EspSA", "NicStep"]
