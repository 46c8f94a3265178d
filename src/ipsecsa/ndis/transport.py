"""The transport half of NDIS IPsec task offload v1: push ipsecsa SAs to a (model) NIC.

:class:`OffloadTransport` does what reference A.1/A.3/A.7 give the Windows transport: it builds
the OID_TCP_TASK_IPSEC_ADD_SA (or ADD_UDPESP_SA) buffers for an outbound/inbound SA pair, issues
them to a miniport's ``oid_request``, checks the statuses, keeps the UDP-ESP parser entries
reference-counted, and binds each SA's crypto step to the NIC (``sa._nic``). Headers, padding,
sequence numbers, replay and policy checks stay in the SA (:mod:`ipsecsa.datapath.esp`,
:mod:`ipsecsa.datapath.ah`): only the crypto step moves.

Choices of ours (not Windows behaviour):

* **Filter.** The filter the SA database installs for the SA (:func:`ipsecsa.sad.filters_for`,
  each SA in its own direction), converted field by field from the
  :class:`~ipsecsa.sad.Filter` (same fields, same meaning, A.3). Transport mode: host to host,
  SrcAddr/DestAddr the SA's ``src``/``dst`` with masks 255.255.255.255, plus the protocol and
  ports of the selector when it has one (a selector that leaves out one of the hosts matches
  nothing and is dropped; none left is refused). Tunnel mode: the selector's prefixes (network
  address and mask; absent prefix 0/0), protocol and ports; no selector gives the all-zero
  filter (A.3: every packet). More than one filter cannot be expressed by one v1 request and is
  refused unless ``filter=`` is given. ``filter=`` is a :class:`~ipsecsa.selectors.Selector` as
  seen by the *outbound* SA; the inbound request gets it with source and destination (addresses
  and ports) swapped. Because transport filters name the local address, two SA pairs may use the
  same inbound SPI on different local addresses (SPIs are unique per destination, A.1, F.4).
* **Tunnel addresses** are the SA's outer ``src``/``dst`` for tunnel-mode SAs, zero otherwise.
* **Key material** in the miniport's ``keymat_order`` (F.1: confidentiality key then integrity
  key by default); ``algoRounds`` is 0.
* **UDP-ESP.** ESP SAs with UDP encapsulation use ADD_UDPESP_SA with the entry
  (OFFLOAD_IPSEC_UDPESP_ENCAPTYPE_OTHER, the inbound SA's ``encapsulation.dport``). The first
  inbound SA on a port passes a NULL entry handle and remembers the one returned; later ones pass
  it. :meth:`OffloadTransport.remove` names the entry in DELETE_UDPESP_SA when the last inbound
  SA using it goes (A.7), NULL otherwise. Outbound requests carry the same entry description and
  a NULL handle (the miniport ignores both).
* **What cannot be offloaded under v1** raises :class:`NotOffloadableError` (a ConfigError naming
  the field) and nothing is sent to the NIC: IPv6, ESN, algorithms other than DES/3DES/NULL and
  HMAC-MD5-96/HMAC-SHA1-96, ESP without integrity (it would need an AH entry in the same SA:
  ipsecsa SAs are single-protocol, so bundles are not built here), AH with UDP encapsulation,
  and SAs of the wrong direction. There is no silent software fallback at offload time.
* **Failures.** A status other than SUCCESS raises :class:`OffloadError` carrying the
  :class:`~ipsecsa.ndis.constants.NdisStatus`. If anything fails after the outbound ADD
  succeeded (an OffloadError or any other exception), what was added is deleted again and the
  error still raised. :meth:`OffloadTransport.remove` raises :class:`UnknownHandleError` for a
  handle it does not know, and changes its bookkeeping for a handle only once that handle's
  DELETE succeeded: after a failed DELETE the SA is still bound and may be removed again.
* **Receive results.** CryptoDone = 1 with CRYPTO_SUCCESS: the NIC's plaintext is used. CryptoDone
  = 1 with any other status: the packet is refused (the SA counts it as ICV_FAILURE). CryptoDone
  = 0: the SA's own software transform does the step (the NIC did not process the packet).
* **Send results.** If the NIC hands a packet back unprocessed (its handle vanished in a race
  with :meth:`remove`), the step returns None and the SA runs its own software path
  (``EspSA``'s seal, ``AhSA._sign``), so no half-built packet leaves and no second copy of the
  crypto lives here.
* **SaDeleteReq** is honoured at once: the inbound SA it arrived on and its paired outbound SA are
  removed from the NIC (two DELETE requests, A.10); both SAs carry on in software, with their own
  sequence counter and replay window (the NIC never held either, A.1). A DELETE the NIC refuses
  then is logged and leaves that SA bound (a later :meth:`OffloadTransport.remove` may retry): the
  packet that carried the request is still delivered, nothing escapes the data path.
  ``on_delete_request(handles)``, when set, is called afterwards with the handles removed, outside
  the transport's lock (the WFP engine learns there that a context left the NIC).
* **Capabilities (A.9, A.11 rule 1).** Given ``capabilities`` (the NDIS_IPSEC_OFFLOAD_V1 the
  miniport reports, decoded or as its 28 bytes), :meth:`OffloadTransport.offload` also refuses,
  with :class:`NotOffloadableError` and before any request, an SA whose protocol, direction
  (Send/Receive), mode, algorithms or UDP-ESP subtype the NIC does not advertise. The IPv4AH
  Md5/Sha_1 bits describe the integrity algorithm of AH and ESP alike (A.9). Without it the NIC
  is asked and its NOT_SUPPORTED is an :class:`OffloadError`.
"""

from __future__ import annotations

import logging
import struct
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from ipaddress import IPv4Address
from typing import Protocol

from ipsecsa.datapath.ah import AhSA
from ipsecsa.datapath.esp import EspSA
from ipsecsa.datapath.sa import SecurityAssociation
from ipsecsa.errors import ConfigError, IpsecsaError
from ipsecsa.ndis.constants import (
    CryptoStatus,
    NdisStatus,
    OffloadConf,
    OffloadIntegrity,
    OffloadOperation,
    OffloadSaFlags,
    Oid,
    UdpEncapType,
    UdpEspCapability,
)
from ipsecsa.ndis.structs import (
    ADD_SA_OFFLOAD_HANDLE_OFFSET,
    ADD_UDPESP_SA_ENTRY_HANDLE_OFFSET,
    ADD_UDPESP_SA_OFFLOAD_HANDLE_OFFSET,
    AddSa,
    AddUdpEspSa,
    AlgoInfo,
    DeleteSa,
    DeleteUdpEspSa,
    IpsecOffloadV1,
    NblInfoReceive,
    UdpEspEncapTypeEntry,
    decode_ipsec_offload_v1,
    encode_add_sa,
    encode_add_udpesp_sa,
    encode_delete_sa,
    encode_delete_udpesp_sa,
)
from ipsecsa.ndis.structs import (
    SecurityAssociation as OffloadSecurityAssociation,
)
from ipsecsa.sad.classifier import Filter
from ipsecsa.sad.database import Bundle, SadError, filters_for
from ipsecsa.selectors import Selector

__all__ = [
    "MiniportLike",
    "NotOffloadableError",
    "OffloadError",
    "OffloadTransport",
    "UnknownHandleError",
    "build_add_request",
    "check_capabilities",
]

# --- specification constants -------------------------------------------------------------
#: A.5: v1 algorithm identifiers and their RFC key lengths, by ipsecsa canonical name.
V1_CONF: dict[str, tuple[OffloadConf, int]] = {
    "null": (OffloadConf.NONE, 0),
    "des-cbc": (OffloadConf.DES, 8),
    "3des-cbc": (OffloadConf.THREE_DES, 24),
}
V1_INTEGRITY: dict[str, tuple[OffloadIntegrity, int]] = {
    "hmac-md5-96": (OffloadIntegrity.MD5, 16),
    "hmac-sha1-96": (OffloadIntegrity.SHA, 20),
}
_HANDLE = struct.Struct("<Q")
log = logging.getLogger("ipsecsa.ndis")
_ANY = IPv4Address(0)


class MiniportLike(Protocol):
    """What the transport needs from a miniport (``ipsecsa.ndis.Miniport`` or a real driver)."""

    def oid_request(self, oid: int, buffer: bytes) -> tuple[int, bytes]: ...

    def send(self, packet: bytes, offload_handle: int) -> bytes: ...

    def receive(self, packet: bytes) -> tuple[bytes, NblInfoReceive]: ...


class OffloadError(IpsecsaError):
    """An OID request failed; ``status`` is the NDIS_STATUS the miniport completed it with."""

    def __init__(self, oid: Oid, status: int, message: str = "") -> None:
        try:
            self.status: NdisStatus | int = NdisStatus(status)
        except ValueError:
            self.status = status
        self.oid = oid
        name = self.status.name if isinstance(self.status, NdisStatus) else f"0x{status:08X}"
        super().__init__(f"{oid.name} failed with NDIS_STATUS_{name}"
                         + (f": {message}" if message else ""))


class NotOffloadableError(ConfigError):
    """The SA uses something NDIS IPsec offload v1 cannot carry; ``field`` names it."""


class UnknownHandleError(ConfigError, LookupError):
    """:meth:`OffloadTransport.remove` was given a handle this transport has not offloaded."""


# --- building the requests ---------------------------------------------------------------------


def _v1_algorithms(sa: SecurityAssociation, which: str) -> tuple[OffloadSecurityAssociation,
                                                                 bytes, bytes]:
    """The SecAssoc entry for ``sa`` and its (conf key, integrity key); refuses non-v1 SAs."""
    c = sa.config
    if not isinstance(sa, (EspSA, AhSA)):
        raise NotOffloadableError(f"{which}", f"{type(sa).__name__} is not an ESP or AH SA")
    if c.src.version != 4 or c.dst.version != 4:
        raise NotOffloadableError(f"{which}.src", "IPv6 SAs cannot be offloaded (offload v1 "
                                  "is IPv4-only)")
    if c.esn:
        raise NotOffloadableError(f"{which}.esn", "extended sequence numbers cannot be offloaded "
                                  "under offload v1")
    conf: tuple[OffloadConf, int] | None = None
    if isinstance(sa, EspSA):  # the cipher first: an AEAD has no separate integrity to check
        enc_name = c.encryption.name if c.encryption is not None else "null"
        conf = V1_CONF.get(enc_name)
        if conf is None:
            raise NotOffloadableError(f"{which}.encryption.algorithm",
                                      f"{enc_name} is not an offload v1 algorithm (des-cbc, "
                                      "3des-cbc, null)")
    integ_name = c.integrity.name if c.integrity is not None else "none"
    if integ_name not in V1_INTEGRITY:
        if integ_name == "none":
            raise NotOffloadableError(f"{which}.integrity.algorithm",
                                      "an SA without integrity needs AH in the same offloaded "
                                      "SA (A.1); ESP+AH bundles are not offloaded by ipsecsa")
        raise NotOffloadableError(f"{which}.integrity.algorithm",
                                  f"{integ_name} is not an offload v1 algorithm (hmac-md5-96, "
                                  "hmac-sha1-96)")
    integ_id, integ_len = V1_INTEGRITY[integ_name]
    ikey = c.integrity_key.bytes if c.integrity_key is not None else b""
    if conf is None:  # AH
        if c.encapsulation is not None:
            raise NotOffloadableError(f"{which}.encapsulation", "AH cannot be UDP-encapsulated")
        entry = OffloadSecurityAssociation(
            Operation=OffloadOperation.AUTHENTICATE, SPI=c.spi,
            IntegrityAlgo=AlgoInfo(integ_id, integ_len, 0))
        return entry, b"", ikey
    conf_id, conf_len = conf
    ckey = c.encryption_key.bytes if c.encryption_key is not None else b""
    entry = OffloadSecurityAssociation(
        Operation=OffloadOperation.ENCRYPT, SPI=c.spi,
        IntegrityAlgo=AlgoInfo(integ_id, integ_len, 0), ConfAlgo=AlgoInfo(conf_id, conf_len, 0))
    return entry, ckey, ikey


_NdisFilter = tuple[IPv4Address, IPv4Address, IPv4Address, IPv4Address, int, int, int]


def _ndis_filter(f: Filter) -> _NdisFilter:
    """A :class:`~ipsecsa.sad.Filter` as (SrcAddr, SrcMask, DestAddr, DestMask, Protocol,
    SrcPort, DestPort): the same fields with the same meaning (reference A.3)."""
    return (IPv4Address(f.src), IPv4Address(f.src_mask), IPv4Address(f.dst),
            IPv4Address(f.dst_mask), f.protocol, f.sport, f.dport)


def _filter_of(sa: SecurityAssociation, which: str, given: Selector | None, swap: bool
               ) -> _NdisFilter:
    """(SrcAddr, SrcMask, DestAddr, DestMask, Protocol, SrcPort, DestPort) for one request.

    Without ``given``, the SA's own filter as the SA database installs it
    (:func:`ipsecsa.sad.filters_for`, in the SA's direction): transport mode is host to host
    (the SA's src/dst with all-ones masks, plus the protocol and ports of its one selector),
    tunnel mode is the selector's prefixes (no selector: all zero, A.3 "every packet").
    """
    if given is not None:
        sel = given
        if swap:
            sel = Selector(src=given.dst, dst=given.src, protocol=given.protocol,
                           sport=given.dport, dport=given.sport)
        if sel.version == 6:
            raise NotOffloadableError("filter", "IPv6 selectors cannot be offloaded")
        return _ndis_filter(Filter.from_selector(sel, 4))
    try:
        filters = filters_for(Bundle((sa,)))
    except SadError as exc:
        raise NotOffloadableError(f"{which}.selectors", exc.reason) from None
    v4 = [f for f in filters if f.version == 4]
    if not v4:
        raise NotOffloadableError(f"{which}.selectors", "IPv6 selectors cannot be offloaded")
    if len(v4) > 1:
        raise NotOffloadableError(f"{which}.selectors", "several selectors cannot be "
                                  "expressed by one offload v1 filter; pass filter=")
    return _ndis_filter(v4[0])


def build_add_request(sa: SecurityAssociation, *, inbound: bool,
                      keymat_order: str = "conf-first", filter: Selector | None = None,
                      entry_handle: int = 0) -> tuple[Oid, bytes]:
    """The OID and buffer a Windows-style transport issues to offload ``sa`` (module docs).

    ``filter`` is as seen by the outbound SA (swapped here for ``inbound``). ``entry_handle`` is
    the parser entry handle for an inbound UDP-ESP SA (0: NULL, find-or-create).
    """
    which = "inbound" if inbound else "outbound"
    entry, ckey, ikey = _v1_algorithms(sa, which)
    keymat = ckey + ikey if keymat_order == "conf-first" else ikey + ckey
    src, smask, dst, dmask, proto, sport, dport = _filter_of(sa, which, filter, inbound)
    c = sa.config
    tun_src, tun_dst = (c.src, c.dst) if c.mode == "tunnel" else (_ANY, _ANY)
    flags = OffloadSaFlags.INBOUND_SA if inbound else OffloadSaFlags.OUTBOUND_SA
    sas = (entry, OffloadSecurityAssociation(), OffloadSecurityAssociation())
    if c.encapsulation is None:
        req = AddSa(SrcAddr=src, SrcMask=smask, DestAddr=dst, DestMask=dmask, Protocol=proto,
                    SrcPort=sport, DestPort=dport, SrcTunnelAddr=tun_src, DestTunnelAddr=tun_dst,
                    Flags=int(flags), NumSAs=1, SecAssoc=sas, KeyLen=len(keymat), KeyMat=keymat)
        return Oid.TCP_TASK_IPSEC_ADD_SA, encode_add_sa(req)
    udp = AddUdpEspSa(
        SrcAddr=src, SrcMask=smask, DstAddr=dst, DstMask=dmask, Protocol=proto, SrcPort=sport,
        DstPort=dport, SrcTunnelAddr=tun_src, DstTunnelAddr=tun_dst, Flags=int(flags), NumSAs=1,
        SecAssoc=sas,
        EncapTypeEntry=UdpEspEncapTypeEntry(int(UdpEncapType.OTHER), c.encapsulation.dport),
        EncapTypeEntryOffldHandle=entry_handle if inbound else 0,
        KeyLen=len(keymat), KeyMat=keymat)
    return Oid.TCP_TASK_IPSEC_ADD_UDPESP_SA, encode_add_udpesp_sa(udp)


def check_capabilities(sa: SecurityAssociation, caps: IpsecOffloadV1, *, inbound: bool) -> None:
    """Raise :class:`NotOffloadableError` when the NIC whose NDIS_IPSEC_OFFLOAD_V1 is ``caps``
    does not advertise what ``sa`` needs (A.9); run after :func:`build_add_request` accepted it.

    Checked: the protocol group's Send (outbound) or Receive (inbound), its Transport or Tunnel,
    the cipher (Des, TripleDes, NullEsp), the integrity algorithm (IPv4AH.Md5/Sha_1, which A.9
    gives for AH and ESP payloads alike) and for UDP-encapsulated ESP the ``*_OTHER`` subtype
    of the mode in ``Supported.Flags`` (A.7, A.9).
    """
    which = "inbound" if inbound else "outbound"
    c = sa.config
    esp = isinstance(sa, EspSA)
    group: object = caps.IPv4ESP if esp else caps.IPv4AH
    name = "IPv4ESP" if esp else "IPv4AH"
    wanted = [("Receive" if inbound else "Send", f"{which}.direction"),
              ("Tunnel" if c.mode == "tunnel" else "Transport", f"{which}.mode")]
    if esp:
        enc = c.encryption.name if c.encryption is not None else "null"
        member = {"des-cbc": "Des", "3des-cbc": "TripleDes", "null": "NullEsp"}[enc]
        wanted.append((member, f"{which}.encryption.algorithm"))
    for member, field in wanted:
        if not getattr(group, member):
            raise NotOffloadableError(field, f"the NIC does not advertise {name}.{member}")
    integ = c.integrity.name if c.integrity is not None else "none"
    member = {"hmac-md5-96": "Md5", "hmac-sha1-96": "Sha_1"}[integ]
    if not getattr(caps.IPv4AH, member):
        raise NotOffloadableError(f"{which}.integrity.algorithm",
                                  f"the NIC does not advertise IPv4AH.{member}")
    if esp and c.encapsulation is not None:
        bit = (UdpEspCapability.TUN_UDPESP_ENCAPTYPE_OTHER if c.mode == "tunnel"
               else UdpEspCapability.TPT_UDPESP_ENCAPTYPE_OTHER)
        if not caps.Supported.Flags & bit:
            raise NotOffloadableError(f"{which}.encapsulation",
                                      f"the NIC does not parse UDP-ESP ({bit.name})")


# --- the crypto steps bound to the SAs ---------------------------------------------------------


class _EspNicStep:
    """``EspSA._nic``: the ESP crypto step done by the miniport (``NicStep`` of esp.py)."""

    __slots__ = ("_handle", "_icv_len", "_mp", "_owner", "_sa", "_zero_icv", "_zero_iv", "nbytes")

    def __init__(self, owner: OffloadTransport, sa: EspSA, handle: int) -> None:
        self.nbytes = 0  # bytes of the packets the NIC processed for this SA
        self._owner = owner
        self._mp = owner.miniport
        self._sa = sa
        self._handle = handle
        self._zero_iv = bytes(sa._ivlen)
        self._icv_len = sa._icvlen
        self._zero_icv = bytes(sa._icvlen)

    def send(self, header: bytes, esp_header: bytes, plaintext: bytes) -> bytes | None:
        """The wire packet, or None when the NIC returned it unprocessed (e.g. its handle went
        in a race with ``remove()``): the SA then runs its own software step."""
        prepared = b"".join((header, esp_header, self._zero_iv, plaintext, self._zero_icv))
        out = self._mp.send(prepared, self._handle)
        if out is prepared or out == prepared:
            return None
        self.nbytes += len(out)
        return out

    def open(self, packet: bytes, esp_off: int, ct_off: int, end: int, seq: int) -> bytes | None:
        out, info = self._mp.receive(packet)
        ok = info.CryptoDone and info.CryptoStatus == CryptoStatus.SUCCESS
        if ok:
            self.nbytes += len(packet)
        if info.SaDeleteReq:
            self._owner._delete_requested(self._handle)
        if info.CryptoDone:
            return out[ct_off:end - self._icv_len] if ok else None
        return self._sa.transform.open(packet[esp_off:esp_off + 8], seq,
                                       packet[esp_off + 8:ct_off], packet[ct_off:end])


class _AhNicStep:
    """``AhSA._nic``: the AH ICV computed / verified by the miniport."""

    __slots__ = ("_handle", "_mp", "_owner", "_sa", "nbytes")

    def __init__(self, owner: OffloadTransport, sa: AhSA, handle: int) -> None:
        self.nbytes = 0  # bytes of the packets the NIC processed for this SA
        self._owner = owner
        self._mp = owner.miniport
        self._sa = sa
        self._handle = handle

    def send(self, head: bytes, ah_header: bytes, payload: bytes) -> bytes | None:
        """The wire packet, or None when the NIC returned it unprocessed: the SA then computes
        the ICV in software (``AhSA._sign``), source-route prediction included."""
        prepared = b"".join((head, ah_header, payload))
        out = self._mp.send(prepared, self._handle)
        if out is prepared or out == prepared:
            return None
        self.nbytes += len(out)
        return out

    def verify(self, packet: bytes, seq: int, covered: bytes, icv: bytes) -> bool:
        _out, info = self._mp.receive(packet)
        ok = bool(info.CryptoDone and info.CryptoStatus == CryptoStatus.SUCCESS)
        if ok:
            self.nbytes += len(packet)
        if info.SaDeleteReq:
            self._owner._delete_requested(self._handle)
        if info.CryptoDone:
            return ok
        return bool(self._sa.integrity.verify(covered, seq, icv))


# --- the transport -----------------------------------------------------------------------------


@dataclass(slots=True)
class _Bound:
    sa: SecurityAssociation
    inbound: bool
    udp: bool
    #: (encap type, port) of the parser entry an inbound UDP-ESP SA uses.
    entry_key: tuple[int, int] | None
    peer: int  # the paired SA's handle (0 once it is gone)


class OffloadTransport:
    """Offloads ipsecsa SA pairs to a miniport and binds their crypto step to it."""

    def __init__(self, miniport: MiniportLike, *, keymat_order: str | None = None,
                 capabilities: IpsecOffloadV1 | bytes | None = None) -> None:
        self.miniport = miniport
        #: What the NIC advertised (A.9), checked before every ADD; None: not checked.
        self.capabilities: IpsecOffloadV1 | None = (
            decode_ipsec_offload_v1(capabilities) if isinstance(capabilities, (bytes, bytearray))
            else capabilities)
        self.keymat_order: str = str(keymat_order or getattr(miniport, "keymat_order",
                                                             "conf-first"))
        self._lock = threading.RLock()
        self._bound: dict[int, _Bound] = {}
        #: (encap type, port) -> [entry handle, number of inbound SAs using it]
        self._entries: dict[tuple[int, int], list[int]] = {}
        #: Handles removed because the NIC asked (SaDeleteReq), in order.
        self.delete_requests_honoured: list[int] = []
        #: (outbound, inbound) bytes the NIC processed for SAs no longer bound.
        self._retired_bytes = [0, 0]
        #: Called with the handles removed after a SaDeleteReq, outside the transport's lock.
        self.on_delete_request: Callable[[tuple[int, ...]], None] | None = None

    @property
    def handles(self) -> tuple[int, ...]:
        return tuple(sorted(self._bound))

    def offload(self, sa_out: SecurityAssociation, sa_in: SecurityAssociation, *,
                filter: Selector | None = None) -> tuple[int, int]:
        """Add the pair to the NIC (outbound first) and bind both; returns (out, in) handles.

        Raises :class:`NotOffloadableError` before any request when either SA cannot be carried
        by offload v1 or (with ``capabilities``) is not offered by the NIC, and :class:`OffloadError` (with the NDIS_STATUS) when the NIC refuses.
        Whatever goes wrong once the first ADD succeeded (an OffloadError or any other
        exception), what was added is deleted again before the exception propagates.
        """
        if sa_out.direction != "outbound":
            raise NotOffloadableError("outbound.direction", "sa_out must be an outbound SA")
        if sa_in.direction != "inbound":
            raise NotOffloadableError("inbound.direction", "sa_in must be an inbound SA")
        for sa in (sa_out, sa_in):
            if getattr(sa, "_nic", None) is not None:
                raise NotOffloadableError("", f"SA 0x{sa.spi:08x} is already offloaded")
        with self._lock:
            # Build both requests first: a non-offloadable SA raises before anything is sent.
            oid_out, buf_out = build_add_request(sa_out, inbound=False,
                                                 keymat_order=self.keymat_order, filter=filter)
            encap = sa_in.config.encapsulation
            entry_key = None if encap is None else (int(UdpEncapType.OTHER), encap.dport)
            known = self._entries.get(entry_key) if entry_key is not None else None
            oid_in, buf_in = build_add_request(sa_in, inbound=True,
                                               keymat_order=self.keymat_order, filter=filter,
                                               entry_handle=known[0] if known else 0)
            if self.capabilities is not None:
                check_capabilities(sa_out, self.capabilities, inbound=False)
                check_capabilities(sa_in, self.capabilities, inbound=True)
            udp_out = oid_out == Oid.TCP_TASK_IPSEC_ADD_UDPESP_SA
            udp_in = oid_in == Oid.TCP_TASK_IPSEC_ADD_UDPESP_SA
            added: list[tuple[int, bool, int]] = []  # (handle, udp, entry handle to drop)
            try:
                h_out, _ = self._add(oid_out, buf_out)
                added.append((h_out, udp_out, 0))
                h_in, entry_handle = self._add(oid_in, buf_in)
                added.append((h_in, udp_in, entry_handle if udp_in and not known else 0))
                self._bind(sa_out, h_out)
                self._bind(sa_in, h_in)
            except BaseException:
                sa_out._nic = sa_in._nic = None  # type: ignore[attr-defined]
                self._roll_back(added)
                raise
            if entry_key is not None:
                if known:
                    known[1] += 1
                else:
                    self._entries[entry_key] = [entry_handle, 1]
            self._bound[h_out] = _Bound(sa_out, False, udp_out, None, h_in)
            self._bound[h_in] = _Bound(sa_in, True, udp_in, entry_key, h_out)
            return h_out, h_in

    def remove(self, handles: Iterable[int], *, missing_ok: bool = False) -> None:
        """Delete these SAs from the NIC and unbind them (they carry on in software).

        Raises :class:`UnknownHandleError` before anything is deleted if a handle is not bound
        here, unless ``missing_ok`` (handles already gone, e.g. after a SaDeleteReq raced with
        the caller, are then skipped). Otherwise every handle is processed; the bookkeeping of a handle changes only once
        its DELETE succeeded, so an SA whose DELETE failed stays bound and offloaded exactly as
        before (the caller may retry), and the first failure is raised afterwards as
        :class:`OffloadError`.
        """
        first: OffloadError | None = None
        with self._lock:
            handles = list(dict.fromkeys(handles))
            unknown = [h for h in handles if h not in self._bound]
            if missing_ok:
                handles = [h for h in handles if h in self._bound]
            elif unknown:
                raise UnknownHandleError("handles", f"{unknown} are not offloaded by this "
                                                    "transport")
            for handle in handles:
                b = self._bound[handle]
                ref = self._entries.get(b.entry_key) if b.entry_key is not None else None
                # The last inbound SA using a parser entry names it, so it goes too (A.7).
                entry_handle = ref[0] if ref is not None and ref[1] == 1 else 0
                try:
                    self._delete_on_nic(handle, udp=b.udp, entry_handle=entry_handle)
                except OffloadError as exc:
                    first = first or exc
                    continue
                del self._bound[handle]
                step = getattr(b.sa, "_nic", None)
                if step is not None:
                    self._retired_bytes[b.inbound] += step.nbytes
                b.sa._nic = None  # type: ignore[attr-defined]
                peer = self._bound.get(b.peer)
                if peer is not None:
                    peer.peer = 0
                if ref is not None:
                    ref[1] -= 1
                    if ref[1] == 0:
                        del self._entries[b.entry_key]  # type: ignore[arg-type]
        if first is not None:
            raise first

    def offloaded_bytes(self) -> tuple[int, int]:
        """(outbound, inbound) bytes of the packets the NIC processed for SAs bound here, now or
        before: on send the wire packets it returned, on receive the packets it verified with
        CRYPTO_SUCCESS (a packet handed back unprocessed, or CryptoDone = 0, is not counted)."""
        with self._lock:
            out, inb = self._retired_bytes
            for b in self._bound.values():
                step = getattr(b.sa, "_nic", None)
                if step is not None:
                    if b.inbound:
                        inb += step.nbytes
                    else:
                        out += step.nbytes
            return out, inb

    # ---------------------------------------------------------------- internals
    def _add(self, oid: Oid, buf: bytes) -> tuple[int, int]:
        status, out = self.miniport.oid_request(oid, buf)
        if status != NdisStatus.SUCCESS:
            raise OffloadError(oid, status)
        udp = oid == Oid.TCP_TASK_IPSEC_ADD_UDPESP_SA
        handle = _HANDLE.unpack_from(out, ADD_UDPESP_SA_OFFLOAD_HANDLE_OFFSET if udp
                                     else ADD_SA_OFFLOAD_HANDLE_OFFSET)[0]
        entry = _HANDLE.unpack_from(out, ADD_UDPESP_SA_ENTRY_HANDLE_OFFSET)[0] if udp else 0
        if handle == 0:
            raise OffloadError(oid, status, "the miniport returned a NULL OffloadHandle")
        return handle, entry

    def _roll_back(self, added: list[tuple[int, bool, int]]) -> None:
        """Delete what a failed :meth:`offload` added, newest first; never raises (the error
        that caused the roll-back is the one the caller sees)."""
        for handle, udp, entry in reversed(added):
            try:
                try:
                    self._delete_on_nic(handle, udp=udp, entry_handle=entry)
                except OffloadError:
                    if not entry:
                        raise
                    # The NIC may have reused an entry we did not know (its find-or-create):
                    # delete only the SA.
                    self._delete_on_nic(handle, udp=udp, entry_handle=0)
            except Exception as exc:  # noqa: BLE001 - the original error is what propagates
                log.warning("roll-back of offload handle %d failed: %s", handle, exc)

    def _delete_on_nic(self, handle: int, *, udp: bool, entry_handle: int) -> None:
        if udp:
            oid = Oid.TCP_TASK_IPSEC_DELETE_UDPESP_SA
            buf = encode_delete_udpesp_sa(DeleteUdpEspSa(handle, entry_handle))
        else:
            oid = Oid.TCP_TASK_IPSEC_DELETE_SA
            buf = encode_delete_sa(DeleteSa(handle))
        status, _ = self.miniport.oid_request(oid, buf)
        if status != NdisStatus.SUCCESS:
            raise OffloadError(oid, status)

    def _bind(self, sa: SecurityAssociation, handle: int) -> None:
        if isinstance(sa, EspSA):
            sa._nic = _EspNicStep(self, sa, handle)
        else:
            assert isinstance(sa, AhSA)
            sa._nic = _AhNicStep(self, sa, handle)

    def _delete_requested(self, handle: int) -> None:
        """SaDeleteReq on the inbound SA ``handle``: delete it and its paired outbound SA.

        Runs inside a packet's receive step, so it never raises: a refused DELETE is logged and
        that SA stays bound (module docstring)."""
        with self._lock:
            b = self._bound.get(handle)
            if b is None:
                return
            pair = [handle] + ([b.peer] if b.peer in self._bound else [])
            try:
                self.remove(pair)
            except Exception as exc:  # noqa: BLE001 - inside a packet: log, never raise
                log.warning("SaDeleteReq on offload handle %d: %s; the SA stays on the NIC",
                            handle, exc)
            gone = tuple(h for h in pair if h not in self._bound)
            self.delete_requests_honoured.extend(gone)
        hook = self.on_delete_request
        if hook is not None and gone:
            hook(gone)
