"""AH (RFC 4302): header insertion, mutable-field zeroing, sequence numbers and replay around the
per-SA ICV computation.

The cryptographic step (``AhIntegrity.compute``/``verify`` from :mod:`ipsecsa.crypto.transforms`)
is kept apart from everything here, as for ESP: the SA calls ``self._compute`` / ``self._verify``,
the transform's bound methods. With ESN the transform appends the 32 high bits of the sequence
number after the data it is given (RFC 4302 §2.5.1, §3.3.3.2.2); the data path passes the full
64-bit number and never appends them itself.

Header layout (RFC 4302 §2): Next Header, Payload Length (AH length in 32-bit words minus 2),
Reserved (zero), SPI, Sequence Number, ICV. The ICV field is padded so that the AH length is a
multiple of 4 bytes under an IPv4 header and 8 bytes under IPv6 (§2.6, §3.3.3.2.1), with no more
padding than that. Every length is fixed per SA (the integrity algorithm fixes the ICV length and
the SA's address family the alignment), so it is computed once, and an inbound AH whose length
field differs is malformed for this SA.

What the ICV covers (§3.3.3): the IP header and the extension headers before AH with the mutable
fields zeroed and the mutable-but-predictable ones set to their values at the destination
(:func:`~ipsecsa.packet.ipv4.ipv4_ah_zero_mutable`,
:func:`~ipsecsa.packet.ipv6.ipv6_ah_zero_mutable`), with total/payload length and protocol/next header already at their post-AH values; the AH header
with the ICV zeroed (explicit padding included as transmitted); everything after AH. Corners:

* IPv4 loose/strict source route (§3.3.3.1.1.1): the destination address is "mutable but
  predictable"; the sender enters the final destination (the route's last address) into the ICV,
  as the receiver sees it. ``ipv4_ah_zero_mutable`` zeroes the option but leaves the address, so
  the prediction is made here (outbound only: inbound the address already is the final one).
* IPv6 options whose "may change en route" bit is set have their data zeroed wherever the header
  carrying them sits (RFC 8200 §4.2, RFC 4302 §3.3.3.1.2.2), including a Destination Options
  header after AH in transport mode. (scapy 2.x zeroes only the headers before AH, and so, as
  far as we know, does Linux's ah6; they agree with us whenever the options after AH are
  immutable, e.g. PadN, Home Address, Tunnel Encapsulation Limit, but not for an option with
  the bit set there, e.g. IOAM, RFC 9486.)
* Reserved (§2.3): sent as zero; on receipt covered by the ICV and otherwise ignored.
* Fragments (§3.4.1): reassembled before AH processing (``_reassemble``, as ESP).
* Implicit packet padding (§3.3.3.2.2): none of the MACs offered (HMAC, AES-XCBC, AES-CMAC)
  needs the ICV input to be a multiple of a block; each pads internally per its own RFC, and so
  does AES-GMAC (GHASH).
* AES-GMAC (RFC 4543 §4): the ICV field is IV ‖ tag (24 bytes: no padding under IPv4, 4 bytes
  under IPv6, errata EID 3643). The IV is an input and stays in the ICV computation; only the
  tag is zeroed. The transform places it, given the field's offset in the covered data.

Outbound (§3.3): transport mode inserts AH after the IPv4 header and its options, or after the
IPv6 extension headers that precede it (``insert_offset`` of the chain, §3.1.1); tunnel mode builds
the outer header of :mod:`ipsecsa.datapath.tunnel` with protocol 51 and covers the whole inner
packet (inner header included, all of it immutable for AH). Inbound (§3.4): SPI, AH length,
replay check before the ICV, constant-time ICV verification, window update after it, then the IP
header rebuilt around the payload (transport) or the inner packet delivered with RFC 6040 ECN
decapsulation (tunnel), and the result checked against the SA's selectors.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

from ipsecsa.crypto.transforms import make_ah_integrity
from ipsecsa.datapath.result import HELD, Result
from ipsecsa.datapath.sa import IvSource, SecurityAssociation
from ipsecsa.datapath.tunnel import OuterV4, OuterV6, inner_info
from ipsecsa.errors import ConfigError, DropReason, MalformedPacket, as_packet
from ipsecsa.packet.checksum import fold16, ones_sum
from ipsecsa.packet.ipv4 import AH as PROTO_AH
from ipsecsa.packet.ipv4 import HEADER_WORDS as _V4W
from ipsecsa.packet.ipv4 import IPV4_MAX_TOTAL_LENGTH as MAX_IPV4_LEN
from ipsecsa.packet.ipv4 import IPV4_MIN_HEADER_LEN as IPV4_HEADER_LEN
from ipsecsa.packet.ipv4 import (
    header_checksum_ok,
    ipv4_ah_zero_fixed,
    ipv4_ah_zero_mutable,
    ipv4_source_route_final,
)
from ipsecsa.packet.ipv6 import DSTOPTS as PROTO_DSTOPTS  # may follow AH in transport mode
from ipsecsa.packet.ipv6 import (
    IPV6_HEADER_LEN,
    MAX_EXTENSION_HEADERS,
    OPT_MAY_CHANGE,
    OPT_PAD1,
    ipv6_ah_zero_fixed,
    ipv6_ah_zero_mutable,
    parse_ipv6_chain,
)
from ipsecsa.packet.ipv6 import MAX_PAYLOAD_LENGTH as MAX_IPV6_PAYLOAD

# --- specification constants -------------------------------------------------------------
#: RFC 4302 §2: Next Header, Payload Length, Reserved, SPI, Sequence Number.
AH_FIXED_LEN = 12
#: RFC 4302 §2.6 / §3.3.3.2.1: the AH length is a multiple of 32 bits (IPv4) or 64 bits (IPv6).
AH_ALIGN_V4 = 4
AH_ALIGN_V6 = 8

# --- precomputed tables -------------------------------------------------------------------
_AH_HEAD = struct.Struct("!BBHII")
_H = struct.Struct("!H")

_new = tuple.__new__


def _after_ah(buf: bytes, start: int, end: int, nh: int) -> tuple[bytes | None, int, int]:
    """Walk the Destination Options headers that follow AH in ``buf[start:end]``.

    Returns ``(covered, protocol, offset)``: ``covered`` is ``buf[start:end]`` with the data of
    options that may change en route zeroed (RFC 8200 §4.2, RFC 4302 §3.3.3.1.2.2), or None when
    no Destination Options header follows (the bytes are covered as they are); ``protocol`` and
    ``offset`` (relative to ``start``) locate the upper-layer header, for selector checks.
    Raises :class:`MalformedPacket` for a header or option that does not fit.
    """
    if nh != PROTO_DSTOPTS:
        return None, nh, 0
    out = bytearray(buf[start:end])
    n = len(out)
    off = 0
    walked = 0
    while nh == PROTO_DSTOPTS:
        walked += 1
        if walked > MAX_EXTENSION_HEADERS:
            raise MalformedPacket(DropReason.MALFORMED, "too many IPv6 extension headers")
        if off + 8 > n:
            raise MalformedPacket(DropReason.TRUNCATED, "destination options beyond payload")
        stop = off + (out[off + 1] + 1) * 8
        if stop > n:
            raise MalformedPacket(DropReason.TRUNCATED, "destination options beyond payload")
        i = off + 2
        while i < stop:
            kind = out[i]
            if kind == OPT_PAD1:
                i += 1
                continue
            if i + 1 >= stop:
                raise MalformedPacket(DropReason.MALFORMED, "IPv6 option without length octet")
            opt_end = i + 2 + out[i + 1]
            if opt_end > stop:
                raise MalformedPacket(DropReason.MALFORMED, "IPv6 option overruns its header")
            if kind & OPT_MAY_CHANGE:
                out[i + 2:opt_end] = bytes(opt_end - i - 2)
            i = opt_end
        nh = out[off]
        off = stop
    return bytes(out), nh, off


class AhSA(SecurityAssociation):
    """An AH SA (RFC 4302): transport or tunnel mode, IPv4 or IPv6 outer header."""

    PROTOCOL = "ah"

    __slots__ = (
        "_ahlen",
        "_compute",
        "_icv_end",
        "_outer4",
        "_outer6",
        "_pad",
        "_plen_field",
        "_v6",
        "_verify",
        "_zero_field",
        "_zero_icv",
        "integrity",
        "protect",
        "unprotect",
    )

    # ----------------------------------------------------------------- per-SA preparation
    def _build(self, unsafe_iv_source: IvSource | None, native: bool = False) -> None:
        c = self.config
        integ = c.integrity
        if integ is None or integ.name == "none" or c.integrity_key is None:
            raise ConfigError("integrity.algorithm", "AH requires an integrity algorithm")
        self.integrity = ai = make_ah_integrity(integ, c.integrity_key.bytes, esn=c.esn,
                                                unsafe_iv_source=unsafe_iv_source)
        #: The crypto step; a NIC model or native engine may replace these two. Called with
        #: the offset of the ICV field in the data as last argument (AES-GMAC carries its IV
        #: there, RFC 4543 §4: IV ‖ tag; the MACs ignore it).
        self._compute: Callable[[bytes, int, int], bytes] = ai.compute
        self._verify: Callable[[bytes, int, bytes, int], bool] = ai.verify
        self._v6 = c.src.version == 6
        icv = ai.icv_len
        align = AH_ALIGN_V6 if self._v6 else AH_ALIGN_V4
        ahlen = AH_FIXED_LEN + icv + (-(AH_FIXED_LEN + icv) % align)
        self._ahlen = ahlen
        #: RFC 4302 §2.2: the Payload Length field, AH length in 32-bit words minus 2.
        self._plen_field = ahlen // 4 - 2
        self._icv_end = AH_FIXED_LEN + icv
        #: Explicit ICV padding as sent (§3.3.3.2.1: content is the sender's choice; zeros).
        self._pad = bytes(ahlen - AH_FIXED_LEN - icv)
        #: The ICV field (padding included) as it enters the sender's computation.
        self._zero_field = bytes(ahlen - AH_FIXED_LEN)
        #: The ICV alone zeroed, for the receiver (padding enters as received).
        self._zero_icv = bytes(icv)
        src, dst = c.src.packed, c.dst.packed
        dscp = None if c.dscp == "copy" else c.dscp
        self._outer4 = (OuterV4(src, dst, PROTO_AH, c.ttl, dscp, c.df, c.spi)
                        if not self._v6 else None)
        self._outer6 = OuterV6(src, dst, PROTO_AH, c.ttl, dscp) if self._v6 else None

    def _select_paths(self) -> tuple[Callable[..., Result], Callable[..., Result]]:
        if self.mode == "tunnel":
            return self._out_tunnel, self._in_any
        return self._out_transport, self._in_any

    # ----------------------------------------------------------------- shared pieces
    def _sign(self, covered_head: bytes, head: bytes, next_header: int, payload: bytes,
              covered_payload: bytes, nbytes: int, now: float | None) -> Result:
        """Number the packet, compute the ICV and assemble ``head ‖ AH ‖ payload``.

        ``covered_head``/``covered_payload`` are ``head``/``payload`` as the ICV covers them.
        Called only once nothing can refuse the packet any more, so a sequence number is never
        consumed by a drop."""
        if self._seq >= self._seq_limit and (refused := self._over_limit()) is not None:
            return self._drop(refused)
        seq = self._seq + 1
        self._seq = seq
        ah = _AH_HEAD.pack(next_header, self._plen_field, 0, self.spi, seq & 0xFFFFFFFF)
        out = None if self._nic is None else self._nic.send(head, ah + self._zero_field, payload)
        if out is None:  # no NIC, or the NIC returned the packet unprocessed: software
            icv = self._compute(b"".join((covered_head, ah, self._zero_field, covered_payload)),
                                seq, len(covered_head) + AH_FIXED_LEN)
            out = b"".join((head, ah, icv, self._pad, payload))
        self.packets = p = self.packets + 1
        self.bytes = b = self.bytes + nbytes
        if p >= self._pmark or b >= self._bmark:
            self._lifetime_crossed(now)
        if seq >= self._seq_max:
            self._exhausted(now)
        return _new(Result, (out, None))

    # ----------------------------------------------------------------- outbound: transport
    def _out_transport(self, pkt: bytes, now: float | None = None) -> Result:
        """Transport mode: AH between the IP header (and IPv6 extension headers) and the
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
        if ff & 0x3FFF:  # AH applies to whole datagrams only (RFC 4302 §3.3.4)
            return self._drop(DropReason.MALFORMED)
        if self._selectors and not self._selectors_ok(4, pkt[12:16], pkt[16:20], proto, pkt, ihl):
            return self._drop(DropReason.SELECTOR_MISMATCH)
        new_len = tlen + self._ahlen
        if new_len > MAX_IPV4_LEN:
            return self._drop(DropReason.TOO_BIG)
        s = (vihl << 8) + tos + new_len + ident + ff + (ttl << 8) + PROTO_AH + s1 + s2 + d1 + d2
        if ihl > IPV4_HEADER_LEN:
            s += ones_sum(pkt[20:ihl])
        hdr = _V4W.pack(vihl, tos, new_len, ident, ff, ttl, PROTO_AH, ~fold16(s) & 0xFFFF,
                        s1, s2, d1, d2)
        if ihl == IPV4_HEADER_LEN:
            covered = _V4W.pack(vihl, 0, new_len, ident, 0, 0, PROTO_AH, 0, s1, s2, d1, d2)
        else:
            options = pkt[20:ihl]
            hdr += options
            try:
                covered = ipv4_ah_zero_mutable(hdr)
            except MalformedPacket as exc:
                return self._drop(exc.reason)
            final = ipv4_source_route_final(options)
            if final is not None:
                covered = covered[:16] + final + covered[20:]
        payload = pkt[ihl:tlen]
        return self._sign(covered, hdr, proto, payload, payload, tlen, now)

    def _out_transport6(self, pkt: bytes, now: float | None) -> Result:
        if not self._v6:
            return self._drop(DropReason.WRONG_PROTOCOL)
        try:
            ch = parse_ipv6_chain(pkt, stop_at_ipsec=False)
        except MalformedPacket as exc:
            return self._drop(exc.reason)
        if ch.fragment is not None:
            return self._drop(DropReason.MALFORMED)
        end = IPV6_HEADER_LEN + ch.payload_length
        ins, nh_off = ch.insert_offset, ch.insert_nh_offset
        next_header = pkt[nh_off]
        if self._selectors and not self._selectors_ok(6, ch.src, ch.dst, ch.upper_protocol,
                                                      pkt[:end], ch.upper_offset):
            return self._drop(DropReason.SELECTOR_MISMATCH)
        plen = ch.payload_length + self._ahlen
        if plen > MAX_IPV6_PAYLOAD:
            return self._drop(DropReason.TOO_BIG)
        head = bytearray(pkt[:ins])
        head[nh_off] = PROTO_AH
        _H.pack_into(head, 4, plen)
        payload = pkt[ins:end]
        try:
            covered = ipv6_ah_zero_mutable(head, ins)
            covered_payload, _, _ = _after_ah(pkt, ins, end, next_header)
        except MalformedPacket as exc:
            return self._drop(exc.reason)
        return self._sign(covered, bytes(head), next_header, payload,
                          payload if covered_payload is None else covered_payload, end, now)

    # ----------------------------------------------------------------- outbound: tunnel
    def _out_tunnel(self, pkt: bytes, now: float | None = None) -> Result:
        """Tunnel mode: a new outer header, AH, then the whole inner packet (IPv4 or IPv6)."""
        if pkt.__class__ is not bytes:
            pkt = as_packet(pkt)
        if self._slow:
            reason, now = self._gate(now)
            if reason is not None:
                return self._drop(reason)
        info = inner_info(pkt)
        if isinstance(info, DropReason):
            return self._drop(info)
        ilen, tos, df, flow, next_header = info
        inner = pkt if ilen == len(pkt) else pkt[:ilen]
        if self._selectors:
            refused = self._inner_policy(inner)
            if refused is not None:
                return self._drop(refused)
        body = self._ahlen + ilen
        if self._outer4 is not None:
            if body + IPV4_HEADER_LEN > MAX_IPV4_LEN:
                return self._drop(DropReason.TOO_BIG)
            hdr = self._outer4.build(body, tos, df)
            covered = ipv4_ah_zero_fixed(hdr)
        else:
            if body > MAX_IPV6_PAYLOAD:
                return self._drop(DropReason.TOO_BIG)
            hdr = self._outer6.build(body, tos, flow)  # type: ignore[union-attr]
            covered = ipv6_ah_zero_fixed(hdr)
        return self._sign(covered, hdr, next_header, inner, inner, ilen, now)

    # ----------------------------------------------------------------- inbound
    def _in_any(self, pkt: bytes, now: float | None = None) -> Result:
        """Inbound, any family/mode: IP header (+ extension headers) → AH → payload."""
        if pkt.__class__ is not bytes:
            pkt = as_packet(pkt)
        if self._slow:
            reason, now = self._gate(now)
            if reason is not None:
                return self._drop(reason)
        try:
            vihl, tos, tlen, _id, ff, _ttl, proto, _c, _s1, _s2, _d1, _d2 = _V4W.unpack_from(pkt)
        except struct.error:
            return self._drop(DropReason.TRUNCATED)
        version = vihl >> 4
        try:
            if version == 4 and not self._v6:
                off = (vihl & 15) << 2
                if off < IPV4_HEADER_LEN or tlen < off or tlen > len(pkt):
                    return self._drop(DropReason.MALFORMED)
                if not header_checksum_ok(pkt, off):
                    return self._drop(DropReason.BAD_CHECKSUM)
                if ff & 0x3FFF:
                    return self._reassemble(pkt, now)
                if proto != PROTO_AH:
                    return self._drop(DropReason.WRONG_PROTOCOL)
                end = tlen
                outer_ecn = tos & 3
            elif version == 6 and self._v6:
                ch = parse_ipv6_chain(pkt, stop_at_ipsec=True)
                if ch.fragment is not None:
                    return self._reassemble(pkt, now)
                if ch.upper_protocol != PROTO_AH:
                    return self._drop(DropReason.WRONG_PROTOCOL)
                off = ch.upper_offset
                end = IPV6_HEADER_LEN + ch.payload_length
                outer_ecn = ch.traffic_class & 3
            else:
                return self._drop(DropReason.WRONG_PROTOCOL if version in (4, 6)
                                  else DropReason.MALFORMED)
            # --- AH proper
            if end - off < AH_FIXED_LEN:
                return self._drop(DropReason.TRUNCATED)
            next_header, plen_field, _reserved, spi, seq_lo = _AH_HEAD.unpack_from(pkt, off)
            if spi != self.spi:
                return self._drop(DropReason.BAD_SPI)
            ahlen = self._ahlen
            if plen_field != self._plen_field:
                return self._drop(DropReason.MALFORMED)
            data_off = off + ahlen
            if data_off > end:
                return self._drop(DropReason.TRUNCATED)
            seq = self._window.check(seq_lo)
            if seq is None:
                return self._drop(DropReason.REPLAY)
            # Only now the copies for the ICV: SPI, length and replay checks are cheaper, and a
            # flood of replays or unknown SPIs must not pay for header copies.
            if version == 4:
                covered = (ipv4_ah_zero_fixed(pkt) if off == IPV4_HEADER_LEN
                           else ipv4_ah_zero_mutable(pkt[:off]))
            else:
                covered = ipv6_ah_zero_mutable(pkt, off)
            covered_payload, upper, upper_off = _after_ah(pkt, data_off, end, next_header)
        except MalformedPacket as exc:
            return self._drop(exc.reason)
        icv_end = off + self._icv_end
        data = b"".join((covered, pkt[off:off + AH_FIXED_LEN], self._zero_icv,
                         pkt[icv_end:data_off],
                         pkt[data_off:end] if covered_payload is None else covered_payload))
        if not (self._verify(data, seq, pkt[off + AH_FIXED_LEN:icv_end],
                             len(covered) + AH_FIXED_LEN) if self._nic is None
                else self._nic.verify(pkt, seq, data, pkt[off + AH_FIXED_LEN:icv_end])):
            return self._drop(DropReason.ICV_FAILURE)
        if not self._window.commit(seq):
            return self._drop(DropReason.REPLAY)
        dlen = end - data_off
        if self.mode == "tunnel":
            return self._deliver_tunnel(pkt[data_off:end], dlen, next_header, outer_ecn, now)
        # --- transport: rebuild the IP header around the payload
        payload = pkt[data_off:end]
        hdr, src, dst = self._rebuild_transport(pkt, off, dlen, next_header,
                                                ch if version == 6 else None)
        if self._selectors and not self._selectors_ok(version, src, dst, upper, payload,
                                                      upper_off):
            return self._drop(DropReason.SELECTOR_MISMATCH)
        self.packets = p = self.packets + 1
        self.bytes = b = self.bytes + len(hdr) + dlen
        if p >= self._pmark or b >= self._bmark:
            self._lifetime_crossed(now)
        return _new(Result, (hdr + payload, None))


__all__ = ["AH_FIXED_LEN", "HELD", "AhSA"]
