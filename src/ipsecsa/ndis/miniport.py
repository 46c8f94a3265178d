"""A model NIC for NDIS IPsec task offload v1: the miniport side of the OIDs and of the data path.

:class:`Miniport` keeps the SA table the way reference A.1 puts it ("the NIC keeps the SA table";
keys never travel with packets), answers the four v1 set-OIDs with exact NDIS_STATUS values,
reports an NDIS_IPSEC_OFFLOAD_V1 capability structure, and does the per-packet crypto step:
on send it encrypts ESP and computes the ESP and AH ICVs of a packet the transport has built; on
receive it verifies and decrypts in place and reports the NDIS_IPSEC_OFFLOAD_V1 receive flags
(CryptoDone, NextCryptoDone, SaDeleteReq, CryptoStatus). Everything else (headers, padding,
sequence numbers, replay checks, policy) is the transport's job (A.1), e.g.
:mod:`ipsecsa.ndis.transport`.

Windows facts used here are tagged in ``shared/spec/windows-ipsec-reference.md`` (A.*). Where
Windows documents nothing, the behaviour below is **our choice** (ipsecsa's, reference section
F or this module), not a statement about Windows. The choices, in one place:

* **KeyMat layout (F.1).** For each SecAssoc entry in array order (ESP first), the confidentiality
  key (if ConfAlgo is not NONE) then the integrity key (if IntegrityAlgo is not NONE).
  ``keymat_order="integrity-first"`` reads integrity then confidentiality inside each entry (the
  ALGO_INFO page's reading). ``KeyLen`` must equal the sum of the used ``algoKeylen``.
* **Unknown OIDs (A.8).** An OID value outside the :class:`~ipsecsa.ndis.constants.Oid` enum
  (the OIDs ipsecsa knows) is INVALID_OID, even one NDIS defines; a value in the enum other than
  the four v1 SA OIDs is NOT_SUPPORTED.
* **Validation and statuses (F.1, F.2).** Checks run in this order and the first failure decides:
  buffer length (INVALID_LENGTH, with BytesNeeded, for a buffer shorter than the fixed part,
  ``offsetof(KeyMat)`` for ADD and ``sizeof`` for DELETE, and for one shorter than
  ``offsetof(KeyMat) + KeyLen``: F.1 names INVALID_LENGTH for a short set buffer, so the codec's
  BUFFER_TOO_SHORT is mapped to it); Flags (unknown bits, both or neither direction); NumSAs in {1, 2}; per entry: Operation, algorithm identifiers
  (CONF_RESERVED and values at or above *_MAX are unknown), AH with a non-zero ConfAlgo (any of
  its three members), ESP that neither encrypts nor authenticates, SPI below 256 (reserved by
  RFC 4303 §2.1), RFC key lengths (DES 8, 3DES 24, MD5 16, SHA 20, NONE 0); two entries not
  ENCRYPT-then-AUTHENTICATE; no authentication in any entry (A.1); ``KeyLen != Σ algoKeylen``;
  exactly one of SrcTunnelAddr/DestTunnelAddr set; UDP-ESP specifics (below). All of these are
  NDIS_STATUS_INVALID_DATA. Then capabilities (a valid choice this miniport does not advertise:
  NOT_SUPPORTED), then duplicates (INVALID_DATA), then capacity (RESOURCES). Unused SecAssoc
  entries beyond NumSAs, the ``Reserved`` ALGO_INFO and ``algoRounds`` are not inspected.
  The crypto objects are built during validation, so nothing is committed before every check
  passed: a failed request leaves every table, the handle counter and the buffer unchanged.
* **OID results.** :meth:`Miniport.oid_request` returns ``(status, buffer)`` only;
  :attr:`Miniport.last_request` (an :class:`OidRequestInfo`) then holds the status, NDIS's
  BytesNeeded (for INVALID_LENGTH: the length that would have sufficed) and the reason.
* **Destination matching.** A.3: a zero field is a wildcard, so DestAddr 0 is any destination
  whatever DestMask says. A non-zero DestAddr with DestMask 0 is left open by Windows; ipsecsa
  treats it as a *host* match (mask all-ones), the same choice as the SA database's classifier
  (whose ``_effective_mask`` this module reuses), since "any" is already DestAddr 0. Otherwise a
  packet's destination matches when ``(dst & DestMask) == (DestAddr & DestMask)``.
* **Duplicates.** Two live SAs clash when they have the same direction, IPsec protocol (ESP for
  UDP-ESP as well), SPI and lookup destination. Including the protocol is our choice, following
  A.1's "SPIs unique per destination and IPsec protocol". The lookup destination is
  DestTunnelAddr for a tunnel SA, else DestAddr when the effective DestMask (above) is all-ones,
  else the wildcard 0.0.0.0 (then the destination match above is checked per packet).
* **Handles (F.3).** SA and parser-entry handles come from one 64-bit counter (the width of
  HANDLE on x64) starting at 1: opaque, never zero, unique among live objects, and not reused
  before 2**64 - 1 further allocations (so certainly not before 2**32). On wrap-around the
  counter skips 0 and handles still live. Sharing the counter means an entry handle is never
  accepted as an SA handle. DELETE of an unknown or zero handle: NDIS_STATUS_INVALID_DATA.
  DELETE_SA also accepts an SA added with ADD_UDPESP_SA (it then deletes only the SA).
* **Send on a dead handle (F.3).** Packets naming an unknown or deleted handle, an inbound SA's
  handle, or not shaped like the SA (protocol, SPI, lengths, a fragment) are returned unprocessed
  and counted in :attr:`Miniport.stats` (``send_errors``; ``send_unknown_handle`` for the
  handle case).
* **UDP-ESP (A.7).** ``UdpEncapType`` must be OTHER (1); IKE (0) is reserved and refused with
  INVALID_DATA, as is an inbound entry with DstEncapPort 0. ADD_UDPESP_SA carries exactly one
  ENCRYPT entry (AH cannot be UDP-encapsulated): anything else is INVALID_DATA. Inbound with a
  NULL EncapTypeEntryOffldHandle: find-or-create the entry (type, port) and return its handle;
  with a non-NULL handle the handle decides (EncapTypeEntry is then ignored) and an unknown
  handle is INVALID_DATA; outbound: both fields are ignored and left as they were.
  DELETE_UDPESP_SA with a non-NULL entry handle deletes the SA and the entry, and is refused
  (INVALID_DATA, nothing deleted) if the entry is unknown or another live SA still uses it, since
  the transport's reference count and ours then disagree. With a NULL entry handle only the SA
  goes; an entry no SA uses stays until a DELETE_UDPESP_SA names it.
* **ADD_UDPESP_SA Protocol** is a filter field like ADD_SA's; the reference's "should be UDP"
  is not enforced. A.7's "DELETE the miniport cannot perform now" never arises here: every
  request completes synchronously (no NDIS_STATUS_PENDING), under the lock.
* **Receive (A.10).** A packet is looked up by (IPsec protocol, SPI, destination) in O(1): first
  the exact destination, then the wildcard bucket (Destination matching above; the source,
  protocol and port fields of the filter are stored but not checked per packet). The NIC
  processes the payload the lookup hits (never both a tunnel and a transport payload:
  NextCryptoDone is always 0, and we advertise no TransportTunnelCombined). A 2-entry SA expects ``[IP][AH][ESP]``; a packet whose IPsec headers
  differ from the SA's entries (or UDP encapsulation that differs from the SA's) gets
  CRYPTO_INVALID_PROTOCOL; lengths that cannot be right (IP total length beyond the buffer, AH
  length not the SA's, ESP shorter than header + IV + one block + ICV, ciphertext not block
  aligned, UDP length) get CRYPTO_INVALID_PACKET_SYNTAX. The AH ICV is verified first, then ESP.
  Failing packets are returned as they were. Non-IPv4, fragments, IKE (non-ESP marker) and
  keepalive packets, UDP on ports of no live parser entry and packets of no offloaded inbound SA
  are returned untouched with CryptoDone = NextCryptoDone = 0, CryptoStatus = SUCCESS.
* **SaDeleteReq (F.3).** Trigger: an ADD refused with RESOURCES asks for room once. While such a
  request is pending and the table is still full, the next packet received on an inbound SA that
  was never asked before carries SaDeleteReq = 1 (whatever its CryptoStatus), which satisfies
  that request; any DELETE that frees a slot cancels it. At most once per SA; the SA stays
  installed until the transport deletes it (A.11 rule 2).
* **Tunnel addresses.** On send, an outer header whose addresses differ from SrcTunnelAddr /
  DestTunnelAddr is rewritten to them (checksum updated) before any ICV, as A.3 says the NIC
  writes them.
* **Capabilities (A.9).** IPv4AH.Md5/Sha_1 describe the integrity algorithms for AH and ESP alike
  (A.9: "AH payload, ESP payload, or both"), so they follow ``integrity_algorithms`` even when AH
  is not offered. UDP-ESP: the two subtypes this model parses, TPT ``*_OTHER`` (0x10) only when
  transport mode is offered and TUN ``*_OTHER`` (0x20) only when tunnel mode is; none of the
  combined transport-over-tunnel subtypes. IPv4Options is reported: headers
  with options are handled (AH mutable options zeroed as RFC 4302 §3.3.3.1.1 says).
* **Threads.** One lock serialises OID requests, send and receive (A.7: a DELETE must not overtake
  its ADD).
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal, NamedTuple

from ipsecsa.crypto.algorithms import ENCRYPTION, INTEGRITY
from ipsecsa.crypto.transforms import (
    AhIntegrity,
    EspTransform,
    make_ah_integrity,
    make_esp_transform,
)
from ipsecsa.errors import IpsecsaError, MalformedPacket, as_packet
from ipsecsa.ndis.constants import (
    CryptoStatus,
    NdisEncapsulation,
    NdisStatus,
    OffloadConf,
    OffloadIntegrity,
    OffloadOperation,
    OffloadSaFlags,
    OffloadSupport,
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
    IpsecOffloadV1,
    IpsecOffloadV1Ah,
    IpsecOffloadV1Esp,
    IpsecOffloadV1Supported,
    NblInfoReceive,
    StructError,
    decode_add_sa,
    decode_add_udpesp_sa,
    decode_delete_sa,
    decode_delete_udpesp_sa,
    encode_ipsec_offload_v1,
)
from ipsecsa.packet.ipv4 import (
    ipv4_ah_zero_fixed,
    ipv4_ah_zero_mutable,
    ipv4_source_route_final,
)
from ipsecsa.sad.classifier import _effective_mask

__all__ = [
    "RFC_KEY_LENGTHS",
    "Miniport",
    "MiniportStats",
    "OffloadedSa",
    "OidRequestInfo",
    "ParserEntry",
]

# --- specification constants -------------------------------------------------------------
PROTO_UDP = 17
PROTO_ESP = 50
PROTO_AH = 51
ESP_HEADER_LEN = 8
AH_FIXED_LEN = 12
UDP_HEADER_LEN = 8
IPV4_MIN_HEADER_LEN = 20
#: RFC 4303 §2.1: SPI values 1-255 are reserved by IANA, 0 is local-use only.
MIN_SPI = 256
#: RFC key sizes of the v1 algorithms (A.5): DES (RFC 2405), 3DES (RFC 2451), HMAC-MD5-96
#: (RFC 2403), HMAC-SHA1-96 (RFC 2404); NONE takes no key.
RFC_KEY_LENGTHS: dict[tuple[str, int], int] = {
    ("conf", OffloadConf.NONE): 0,
    ("conf", OffloadConf.DES): 8,
    ("conf", OffloadConf.THREE_DES): 24,
    ("integrity", OffloadIntegrity.NONE): 0,
    ("integrity", OffloadIntegrity.MD5): 16,
    ("integrity", OffloadIntegrity.SHA): 20,
}
_HANDLE_WIDTH_BITS = 64  # HANDLE is 8 bytes on x64 (see the module docstring)

# --- implementation constants ----------------------------------------------------------------
DEFAULT_CAPACITY = 1024

_CONF_ALG = {OffloadConf.NONE: "null", OffloadConf.DES: "des-cbc",
             OffloadConf.THREE_DES: "3des-cbc"}
_INTEG_ALG = {OffloadIntegrity.MD5: "hmac-md5-96", OffloadIntegrity.SHA: "hmac-sha1-96"}
_KNOWN_CONF = frozenset(_CONF_ALG)
_KNOWN_INTEG = frozenset({OffloadIntegrity.NONE, *_INTEG_ALG})
_ALL_FLAGS = OffloadSaFlags.INBOUND_SA | OffloadSaFlags.OUTBOUND_SA
#: Every OID value ipsecsa knows (the :class:`Oid` enum: reference A.2, A.9, A.12). Any other
#: value answers INVALID_OID, a known one this model does not implement NOT_SUPPORTED.
_KNOWN_OIDS = frozenset(int(o) for o in Oid)

_V4 = struct.Struct("!BBHHHBBH4s4s")
_SPI_SEQ = struct.Struct("!II")
_U32 = struct.Struct("!I")
_AH_HEAD = struct.Struct("!BBHII")
_UDP = struct.Struct("!HHHH")
_H = struct.Struct("!H")
_HANDLE = struct.Struct("<Q")
_ANY = b"\x00\x00\x00\x00"
_HOST_MASK = b"\xff\xff\xff\xff"

_DONE_OK = NblInfoReceive(CryptoDone=1, CryptoStatus=CryptoStatus.SUCCESS)
_NOT_DONE = NblInfoReceive()


class _Refused(Exception):
    """Internal: an OID request fails with ``status`` (nothing has been committed)."""

    def __init__(self, status: NdisStatus, why: str) -> None:
        self.status = status
        self.why = why
        super().__init__(f"{status.name}: {why}")


class OidRequestInfo(NamedTuple):
    """What :meth:`Miniport.oid_request` reports beside its ``(status, buffer)`` result.

    ``status``: the NDIS_STATUS returned (plain int). ``bytes_needed``: NDIS's BytesNeeded, the
    buffer length that would have sufficed, for an INVALID_LENGTH answer (0 otherwise).
    ``reason``: why the request was refused, naming the member where there is one ("" on
    SUCCESS). Never contains key material.
    """

    status: int
    bytes_needed: int
    reason: str


@dataclass(frozen=True, slots=True)
class _Op:
    """One prepared SecAssoc entry: its protocol, SPI and the crypto object built at ADD time."""

    protocol: int  # PROTO_ESP or PROTO_AH
    spi: int
    conf: int
    integrity: int
    esp: EspTransform | None = None
    ah: AhIntegrity | None = None
    #: ESP: IV, ICV and padding block lengths; AH: ICV length and whole AH header length.
    iv_len: int = 0
    icv_len: int = 0
    block: int = 4
    ah_len: int = 0


@dataclass(frozen=True, slots=True)
class ParserEntry:
    """A UDP-ESP parser entry (A.7): encapsulation type and destination port, with its handle."""

    handle: int
    encap_type: int
    port: int


@dataclass(frozen=True, slots=True)
class OffloadedSa:
    """One offloaded SA as the miniport keeps it (no keys: those live in the crypto objects).

    ``lookup_dst`` is the destination the SA is found under (module docstring, Duplicates);
    ``dst_match_mask`` the effective DestMask a packet's destination is matched with in the
    wildcard bucket (0 for DestAddr 0, all-ones for a non-zero DestAddr with DestMask 0: module
    docstring, Destination matching); ``entry`` the parser entry handle of an inbound UDP-ESP SA
    (0 otherwise).
    """

    handle: int
    inbound: bool
    ops: tuple[_Op, ...]
    src: bytes
    src_mask: bytes
    dst: bytes
    dst_mask: bytes
    protocol: int
    sport: int
    dport: int
    tunnel_src: bytes
    tunnel_dst: bytes
    udp: bool
    entry: int
    lookup_dst: bytes
    dst_match_mask: bytes

    @property
    def tunnel(self) -> bool:
        return self.tunnel_dst != _ANY

    @property
    def keys(self) -> tuple[tuple[bool, int, int, bytes], ...]:
        """Duplicate/lookup keys: (inbound, protocol, SPI, lookup destination) per entry."""
        return tuple((self.inbound, op.protocol, op.spi, self.lookup_dst) for op in self.ops)

    def summary(self) -> tuple:
        """A comparable description without crypto objects (for snapshots)."""
        return (self.handle, self.inbound, tuple((o.protocol, o.spi, o.conf, o.integrity)
                                                 for o in self.ops),
                self.src, self.src_mask, self.dst, self.dst_mask, self.protocol, self.sport,
                self.dport, self.tunnel_src, self.tunnel_dst, self.udp, self.entry)


@dataclass(slots=True)
class MiniportStats:
    """Counters of the data path (mutable; read them, do not rely on identity)."""

    #: Packets processed on send.
    sent: int = 0
    #: Packets returned unprocessed on send (every reason, F.3 "counted as errors").
    send_errors: int = 0
    #: Of those: the handle was unknown, deleted or not an outbound SA's.
    send_unknown_handle: int = 0
    #: Packets received and verified with CRYPTO_SUCCESS.
    received: int = 0
    #: Packets received for an offloaded SA with a failing CryptoStatus.
    receive_failures: int = 0
    #: Packets passed up untouched (CryptoDone = 0).
    passed_up: int = 0
    #: SaDeleteReq flags raised.
    delete_requests: int = 0


IvSource = Callable[[int], bytes]


class Miniport:
    """The NIC side of NDIS IPsec offload v1 (see the module docstring for every choice).

    Constructor options choose what the NIC advertises (reference A.9) and accepts:
    ``conf_algorithms`` (OffloadConf values; NONE is null-ESP), ``integrity_algorithms``
    (OffloadIntegrity values), ``ah``/``esp`` (operations), ``transport``/``tunnel`` (modes),
    ``udp_esp`` (the UDP-ESP OIDs and subtypes), ``ah_esp_combined`` (2-entry SAs).
    ``keymat_order`` is the F.1 compatibility flag. ``unsafe_iv_source(seq) -> bytes`` makes CBC
    IVs deterministic -- known-answer tests only; by default the NIC generates them (A.1: a NIC
    offering DES generates the IV itself).
    """

    def __init__(self, *, capacity: int = DEFAULT_CAPACITY,
                 conf_algorithms: Iterable[int] = (OffloadConf.NONE, OffloadConf.DES,
                                                   OffloadConf.THREE_DES),
                 integrity_algorithms: Iterable[int] = (OffloadIntegrity.MD5,
                                                        OffloadIntegrity.SHA),
                 ah: bool = True, esp: bool = True, transport: bool = True, tunnel: bool = True,
                 udp_esp: bool = True, ah_esp_combined: bool = True,
                 keymat_order: Literal["conf-first", "integrity-first"] = "conf-first",
                 unsafe_iv_source: IvSource | None = None) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        if keymat_order not in ("conf-first", "integrity-first"):
            raise ValueError('keymat_order must be "conf-first" or "integrity-first"')
        self.capacity = capacity
        self.conf_algorithms = frozenset(OffloadConf(a) for a in conf_algorithms)
        self.integrity_algorithms = frozenset(OffloadIntegrity(a) for a in integrity_algorithms)
        if not self.conf_algorithms <= _KNOWN_CONF:
            raise ValueError("conf_algorithms: only NONE, DES and THREE_DES exist in v1")
        if not self.integrity_algorithms <= set(_INTEG_ALG):
            raise ValueError("integrity_algorithms: only MD5 and SHA exist in v1")
        self.ah, self.esp = bool(ah), bool(esp)
        self.transport, self.tunnel = bool(transport), bool(tunnel)
        self.udp_esp = bool(udp_esp)
        self.ah_esp_combined = bool(ah_esp_combined)
        self.keymat_order = keymat_order
        self._unsafe_iv_source = unsafe_iv_source
        self.stats = MiniportStats()
        self._lock = threading.Lock()
        self._sas: dict[int, OffloadedSa] = {}
        #: (inbound, protocol, SPI, lookup destination) -> SA, for every entry of every SA.
        self._by_key: dict[tuple[bool, int, int, bytes], OffloadedSa] = {}
        self._entries: dict[int, ParserEntry] = {}
        self._entry_by_spec: dict[tuple[int, int], ParserEntry] = {}
        #: UDP destination port -> number of live parser entries on it.
        self._ports: dict[int, int] = {}
        self._next_handle = 1
        self._want_room = False
        self._asked: set[int] = set()
        #: Status, BytesNeeded and reason of the last completed :meth:`oid_request` (None
        #: before the first). Set under the lock; with several threads issuing requests, read
        #: it only where the requests are serialised by the caller.
        self.last_request: OidRequestInfo | None = None

    # ================================================================ capabilities
    def capabilities(self) -> bytes:
        """NDIS_IPSEC_OFFLOAD_V1 reflecting the constructor options (encoded, 28 bytes)."""
        return encode_ipsec_offload_v1(self.capability_struct())

    def capability_struct(self) -> IpsecOffloadV1:
        s = OffloadSupport.SUPPORTED
        n = OffloadSupport.NOT_SUPPORTED

        def bit(flag: bool) -> int:
            return int(s if flag else n)

        supported = IpsecOffloadV1Supported(
            Encapsulation=int(NdisEncapsulation.IEEE_802_3),
            AhEspCombined=int(self.ah and self.esp and self.ah_esp_combined),
            TransportTunnelCombined=0,
            IPv4Options=1,
            Flags=self._udpesp_flags(),
        )
        ah = IpsecOffloadV1Ah(
            Md5=bit(OffloadIntegrity.MD5 in self.integrity_algorithms),
            Sha_1=bit(OffloadIntegrity.SHA in self.integrity_algorithms),
            Transport=bit(self.ah and self.transport), Tunnel=bit(self.ah and self.tunnel),
            Send=bit(self.ah), Receive=bit(self.ah))
        esp = IpsecOffloadV1Esp(
            Des=bit(self.esp and OffloadConf.DES in self.conf_algorithms), Reserved=0,
            TripleDes=bit(self.esp and OffloadConf.THREE_DES in self.conf_algorithms),
            NullEsp=bit(self.esp and OffloadConf.NONE in self.conf_algorithms),
            Transport=bit(self.esp and self.transport), Tunnel=bit(self.esp and self.tunnel),
            Send=bit(self.esp), Receive=bit(self.esp))
        return IpsecOffloadV1(Supported=supported, IPv4AH=ah, IPv4ESP=esp)

    def _udpesp_flags(self) -> int:
        """Supported.Flags: the UDP-ESP subtypes parsed, each only with its mode offered."""
        if not (self.udp_esp and self.esp):
            return 0
        flags = 0
        if self.transport:
            flags |= UdpEspCapability.TPT_UDPESP_ENCAPTYPE_OTHER
        if self.tunnel:
            flags |= UdpEspCapability.TUN_UDPESP_ENCAPTYPE_OTHER
        return int(flags)

    # ================================================================ introspection
    def sa_handles(self) -> tuple[int, ...]:
        with self._lock:
            return tuple(sorted(self._sas))

    def sa(self, handle: int) -> OffloadedSa | None:
        with self._lock:
            return self._sas.get(handle)

    def parser_entries(self) -> tuple[ParserEntry, ...]:
        with self._lock:
            return tuple(sorted(self._entries.values(), key=lambda e: e.handle))

    def snapshot(self) -> tuple:
        """The SA table, lookup keys, parser entries and handle counter, comparable with ``==``
        (tests: a failed request changes none of them). The SaDeleteReq bookkeeping is not
        included: a RESOURCES refusal deliberately records a request for room."""
        with self._lock:
            return (tuple(sa.summary() for _, sa in sorted(self._sas.items())),
                    tuple(sorted((repr(k), v.handle) for k, v in self._by_key.items())),
                    tuple(sorted((e.handle, e.encap_type, e.port) for e in self._entries.values())),
                    tuple(sorted(self._ports.items())), self._next_handle)

    # ================================================================ OID requests
    def oid_request(self, oid: int, buffer: bytes | bytearray | memoryview) -> tuple[int, bytes]:
        """A set request: ``(NDIS_STATUS as a plain int, the buffer as the miniport leaves it)``.

        On success of an ADD the buffer comes back with OffloadHandle (and, for an inbound UDP-ESP
        SA added with a NULL entry handle, EncapTypeEntryOffldHandle) filled in; on any failure it
        comes back unchanged and no table has changed. BytesNeeded and the reason of a refusal
        are in :attr:`last_request` afterwards (the return shape stays ``(status, buffer)``).
        """
        data = bytes(buffer)
        with self._lock:
            status, out, needed, why = self._request(oid, data)
            self.last_request = OidRequestInfo(int(status), needed, why)
            return int(status), out

    def _request(self, oid: int, data: bytes) -> tuple[NdisStatus, bytes, int, str]:
        """(status, buffer, BytesNeeded, reason) of one set request; called under the lock."""
        ok = NdisStatus.SUCCESS
        try:
            if oid == Oid.TCP_TASK_IPSEC_ADD_SA:
                return ok, self._add(data, udp=False), 0, ""
            if oid == Oid.TCP_TASK_IPSEC_DELETE_SA:
                self._delete(decode_delete_sa(data).OffloadHandle, 0, udp=False)
                return ok, data, 0, ""
            if oid in (Oid.TCP_TASK_IPSEC_ADD_UDPESP_SA, Oid.TCP_TASK_IPSEC_DELETE_UDPESP_SA):
                if not (self.udp_esp and self.esp):
                    raise _Refused(NdisStatus.NOT_SUPPORTED, "UDP-ESP offload not offered")
                if oid == Oid.TCP_TASK_IPSEC_ADD_UDPESP_SA:
                    return ok, self._add(data, udp=True), 0, ""
                req = decode_delete_udpesp_sa(data)
                self._delete(req.OffloadHandle, req.EncapTypeEntryOffldHandle, udp=True)
                return ok, data, 0, ""
            # A.8: a known OID this miniport does not implement answers NOT_SUPPORTED; "known"
            # means in the Oid enum. Every other value (including OIDs NDIS defines but
            # ipsecsa does not list) is INVALID_OID.
            if oid in _KNOWN_OIDS:
                return (NdisStatus.NOT_SUPPORTED, data, 0,
                        f"OID_{Oid(oid).name} is not implemented by this miniport")
            return (NdisStatus.INVALID_OID, data, 0,
                    f"OID {oid:#010x} is not in ipsecsa.ndis.Oid")
        except StructError as exc:
            # F.1: every short set buffer is INVALID_LENGTH (with BytesNeeded), also one too
            # short for the fixed part, which the codec reports as BUFFER_TOO_SHORT.
            status = exc.status
            if status is NdisStatus.BUFFER_TOO_SHORT:
                status = NdisStatus.INVALID_LENGTH
            why = f"{exc.field}: {exc.reason}" if exc.field else exc.reason
            return status, data, exc.bytes_needed or 0, why
        except _Refused as exc:
            if exc.status is NdisStatus.RESOURCES:
                self._want_room = True
            return exc.status, data, 0, exc.why

    # ---------------------------------------------------------------- ADD
    def _add(self, data: bytes, *, udp: bool) -> bytes:
        req: AddSa | AddUdpEspSa = decode_add_udpesp_sa(data) if udp else decode_add_sa(data)
        dst_addr = req.DstAddr if isinstance(req, AddUdpEspSa) else req.DestAddr
        dst_mask = req.DstMask if isinstance(req, AddUdpEspSa) else req.DestMask
        tun_dst = req.DstTunnelAddr if isinstance(req, AddUdpEspSa) else req.DestTunnelAddr
        invalid = NdisStatus.INVALID_DATA
        # --- structure (INVALID_DATA)
        if req.Flags & ~int(_ALL_FLAGS):
            raise _Refused(invalid, f"unknown Flags bits 0x{req.Flags & ~int(_ALL_FLAGS):x}")
        direction = req.Flags & int(_ALL_FLAGS)
        if direction not in (OffloadSaFlags.INBOUND_SA, OffloadSaFlags.OUTBOUND_SA):
            raise _Refused(invalid, "exactly one of OFFLOAD_INBOUND_SA/OFFLOAD_OUTBOUND_SA")
        inbound = direction == OffloadSaFlags.INBOUND_SA
        if req.NumSAs not in (1, 2):
            raise _Refused(invalid, f"NumSAs {req.NumSAs} not 1 or 2")
        entries = req.SecAssoc[:req.NumSAs]
        for i, e in enumerate(entries):
            self._check_entry(i, e)
        if len(entries) == 2 and (entries[0].Operation, entries[1].Operation) != (
                OffloadOperation.ENCRYPT, OffloadOperation.AUTHENTICATE):
            raise _Refused(invalid, "two entries must be ENCRYPT then AUTHENTICATE")
        if not any(e.IntegrityAlgo.algoIdentifier != OffloadIntegrity.NONE for e in entries):
            raise _Refused(invalid, "no authentication in any entry (A.1)")
        total = sum(e.ConfAlgo.algoKeylen + e.IntegrityAlgo.algoKeylen for e in entries)
        if req.KeyLen != total:
            raise _Refused(invalid, f"KeyLen {req.KeyLen} != sum of algoKeylen {total}")
        tun_src = req.SrcTunnelAddr.packed
        tun_dst_b = tun_dst.packed
        if (tun_src == _ANY) != (tun_dst_b == _ANY):
            raise _Refused(invalid, "only one of SrcTunnelAddr/DestTunnelAddr is set")
        tunnel = tun_dst_b != _ANY
        entry_spec: tuple[int, int] | None = None
        entry_handle = 0
        if udp:
            assert isinstance(req, AddUdpEspSa)
            if len(entries) != 1 or entries[0].Operation != OffloadOperation.ENCRYPT:
                raise _Refused(invalid, "ADD_UDPESP_SA carries exactly one ENCRYPT entry")
            if inbound:
                entry_handle = req.EncapTypeEntryOffldHandle
                if entry_handle:
                    if entry_handle not in self._entries:
                        raise _Refused(invalid, "unknown EncapTypeEntryOffldHandle")
                else:
                    et = req.EncapTypeEntry
                    if et.UdpEncapType != UdpEncapType.OTHER:
                        raise _Refused(invalid, f"UdpEncapType {et.UdpEncapType} is not OTHER (1)")
                    if et.DstEncapPort == 0:
                        raise _Refused(invalid, "DstEncapPort 0")
                    entry_spec = (et.UdpEncapType, et.DstEncapPort)
        # --- capabilities (NOT_SUPPORTED)
        self._check_supported(entries, tunnel)
        # --- crypto objects (built once per SA, before anything is committed)
        ops = self._build_ops(entries, req.KeyMat)
        # --- duplicates (INVALID_DATA), capacity (RESOURCES)
        dst_b, mask_b = dst_addr.packed, dst_mask.packed
        # Destination matching (module docstring): DestAddr 0 is any destination whatever the
        # mask; a non-zero DestAddr with DestMask 0 is a host (our choice, as the SAD's).
        match_mask = _effective_mask(int(dst_addr), int(dst_mask), 4).to_bytes(4, "big")
        lookup_dst = tun_dst_b if tunnel else (dst_b if match_mask == _HOST_MASK else _ANY)
        keys = [(inbound, op.protocol, op.spi, lookup_dst) for op in ops]
        for key in keys:
            if key in self._by_key:
                raise _Refused(invalid, f"duplicate SA (SPI 0x{key[2]:08x})")
        new_entry = entry_spec is not None and entry_spec not in self._entry_by_spec
        if len(self._sas) >= self.capacity:
            raise _Refused(NdisStatus.RESOURCES, "SA table full")
        # --- commit
        handle = self._allocate()
        if entry_spec is not None:
            if new_entry:
                e_handle = self._allocate()
                pe = ParserEntry(e_handle, entry_spec[0], entry_spec[1])
                self._entries[e_handle] = pe
                self._entry_by_spec[entry_spec] = pe
                self._ports[pe.port] = self._ports.get(pe.port, 0) + 1
            entry_handle = self._entry_by_spec[entry_spec].handle
        sa = OffloadedSa(
            handle=handle, inbound=inbound, ops=ops, src=req.SrcAddr.packed,
            src_mask=req.SrcMask.packed, dst=dst_b, dst_mask=mask_b, protocol=req.Protocol,
            sport=req.SrcPort,
            dport=req.DstPort if isinstance(req, AddUdpEspSa) else req.DestPort,
            tunnel_src=tun_src, tunnel_dst=tun_dst_b, udp=udp,
            entry=entry_handle if inbound else 0, lookup_dst=lookup_dst,
            dst_match_mask=match_mask)
        self._sas[handle] = sa
        for key in keys:
            self._by_key[key] = sa
        out = bytearray(data)
        _HANDLE.pack_into(out, ADD_UDPESP_SA_OFFLOAD_HANDLE_OFFSET if udp
                          else ADD_SA_OFFLOAD_HANDLE_OFFSET, handle)
        if udp and inbound and entry_spec is not None:
            _HANDLE.pack_into(out, ADD_UDPESP_SA_ENTRY_HANDLE_OFFSET, entry_handle)
        return bytes(out)

    def _check_entry(self, i: int, e: object) -> None:
        invalid = NdisStatus.INVALID_DATA
        op = e.Operation  # type: ignore[attr-defined]
        conf, integ = e.ConfAlgo, e.IntegrityAlgo  # type: ignore[attr-defined]
        where = f"SecAssoc[{i}]"
        if op not in (OffloadOperation.AUTHENTICATE, OffloadOperation.ENCRYPT):
            raise _Refused(invalid, f"{where}.Operation {op} unknown")
        if conf.algoIdentifier not in _KNOWN_CONF:
            raise _Refused(invalid, f"{where}.ConfAlgo {conf.algoIdentifier} unknown")
        if integ.algoIdentifier not in _KNOWN_INTEG:
            raise _Refused(invalid, f"{where}.IntegrityAlgo {integ.algoIdentifier} unknown")
        if op == OffloadOperation.AUTHENTICATE:
            if (conf.algoIdentifier, conf.algoKeylen, conf.algoRounds) != (0, 0, 0):
                raise _Refused(invalid, f"{where}: AH with a ConfAlgo")
            if integ.algoIdentifier == OffloadIntegrity.NONE:
                raise _Refused(invalid, f"{where}: AH without IntegrityAlgo")
        elif (conf.algoIdentifier == OffloadConf.NONE
              and integ.algoIdentifier == OffloadIntegrity.NONE):
            raise _Refused(invalid, f"{where}: ESP that neither encrypts nor authenticates")
        if e.SPI < MIN_SPI:  # type: ignore[attr-defined]
            raise _Refused(invalid, f"{where}.SPI reserved (RFC 4303 §2.1)")
        if conf.algoKeylen != RFC_KEY_LENGTHS[("conf", conf.algoIdentifier)]:
            raise _Refused(invalid, f"{where}.ConfAlgo.algoKeylen {conf.algoKeylen} wrong")
        if integ.algoKeylen != RFC_KEY_LENGTHS[("integrity", integ.algoIdentifier)]:
            raise _Refused(invalid, f"{where}.IntegrityAlgo.algoKeylen {integ.algoKeylen} wrong")

    def _check_supported(self, entries: tuple, tunnel: bool) -> None:
        unsupported = NdisStatus.NOT_SUPPORTED
        if len(entries) == 2 and not (self.ah and self.esp and self.ah_esp_combined):
            raise _Refused(unsupported, "AH+ESP in one SA not offered")
        if not (self.tunnel if tunnel else self.transport):
            raise _Refused(unsupported, f"{'tunnel' if tunnel else 'transport'} mode not offered")
        for e in entries:
            if e.Operation == OffloadOperation.AUTHENTICATE and not self.ah:
                raise _Refused(unsupported, "AH not offered")
            if e.Operation == OffloadOperation.ENCRYPT:
                if not self.esp:
                    raise _Refused(unsupported, "ESP not offered")
                if e.ConfAlgo.algoIdentifier not in self.conf_algorithms:
                    raise _Refused(unsupported, f"ConfAlgo {e.ConfAlgo.algoIdentifier} not offered")
            integ = e.IntegrityAlgo.algoIdentifier
            if integ != OffloadIntegrity.NONE and integ not in self.integrity_algorithms:
                raise _Refused(unsupported, f"IntegrityAlgo {integ} not offered")

    def _build_ops(self, entries: tuple, keymat: bytes) -> tuple[_Op, ...]:
        ops = []
        pos = 0
        conf_first = self.keymat_order == "conf-first"
        for e in entries:
            clen, ilen = e.ConfAlgo.algoKeylen, e.IntegrityAlgo.algoKeylen
            if conf_first:
                ckey, ikey = keymat[pos:pos + clen], keymat[pos + clen:pos + clen + ilen]
            else:
                ikey, ckey = keymat[pos:pos + ilen], keymat[pos + ilen:pos + ilen + clen]
            pos += clen + ilen
            integ_id = e.IntegrityAlgo.algoIdentifier
            integ = INTEGRITY[_INTEG_ALG[integ_id]] if integ_id != OffloadIntegrity.NONE else None
            try:
                if e.Operation == OffloadOperation.ENCRYPT:
                    enc = ENCRYPTION[_CONF_ALG[e.ConfAlgo.algoIdentifier]]
                    t = make_esp_transform(
                        enc, ckey, integ, ikey if integ else None, esn=False,
                        unsafe_iv_source=self._unsafe_iv_source if enc.iv_len else None)
                    ops.append(_Op(PROTO_ESP, e.SPI, e.ConfAlgo.algoIdentifier, integ_id, esp=t,
                                   iv_len=t.iv_len, icv_len=t.icv_len, block=t.block_size))
                else:
                    assert integ is not None
                    a = make_ah_integrity(integ, ikey, esn=False)
                    ah_len = AH_FIXED_LEN + a.icv_len + (-(AH_FIXED_LEN + a.icv_len) % 4)
                    ops.append(_Op(PROTO_AH, e.SPI, 0, integ_id, ah=a, icv_len=a.icv_len,
                                   ah_len=ah_len))
            except IpsecsaError as exc:
                raise _Refused(NdisStatus.INVALID_DATA, f"key material refused: {exc}") from None
        return tuple(ops)

    def _allocate(self) -> int:
        """Next handle from the 64-bit counter: never 0, never a live handle."""
        limit = 1 << _HANDLE_WIDTH_BITS
        h = self._next_handle
        while h == 0 or h in self._sas or h in self._entries:
            h = (h + 1) % limit
        self._next_handle = (h + 1) % limit or 1
        return h

    # ---------------------------------------------------------------- DELETE
    def _delete(self, handle: int, entry_handle: int, *, udp: bool) -> None:
        invalid = NdisStatus.INVALID_DATA
        sa = self._sas.get(handle) if handle else None
        if sa is None:
            raise _Refused(invalid, "unknown OffloadHandle")
        if udp and entry_handle:
            if entry_handle not in self._entries:
                raise _Refused(invalid, "unknown EncapTypeEntryOffldHandle")
            if any(o.entry == entry_handle and o.handle != handle for o in self._sas.values()):
                raise _Refused(invalid, "parser entry still used by another SA")
        # --- commit
        del self._sas[handle]
        for key in sa.keys:
            if self._by_key.get(key) is sa:
                del self._by_key[key]
        self._asked.discard(handle)
        self._want_room = False
        if udp and entry_handle:
            pe = self._entries.pop(entry_handle)
            del self._entry_by_spec[(pe.encap_type, pe.port)]
            left = self._ports[pe.port] - 1
            if left:
                self._ports[pe.port] = left
            else:
                del self._ports[pe.port]

    # ================================================================ send
    def send(self, packet: bytes, offload_handle: int) -> bytes:
        """Encrypt / compute the ICVs of a packet the transport built for ``offload_handle``.

        Returns the wire packet; unprocessed (and counted in ``stats``) when the handle is
        not a live outbound SA's or the packet does not have the SA's shape.
        """
        if packet.__class__ is not bytes:
            packet = as_packet(packet)
        with self._lock:
            sa = self._sas.get(offload_handle)
            if sa is None or sa.inbound:
                self.stats.send_errors += 1
                self.stats.send_unknown_handle += 1
                return packet
            try:
                out = self._send(sa, packet)
            except MalformedPacket:
                out = None
            if out is None:
                self.stats.send_errors += 1
                return packet
            self.stats.sent += 1
            return out

    def _send(self, sa: OffloadedSa, packet: bytes) -> bytes | None:
        if len(packet) < IPV4_MIN_HEADER_LEN:
            return None
        vihl, _tos, tlen, _id, ff, _ttl, proto, _c, src, dst = _V4.unpack_from(packet)
        ihl = (vihl & 15) << 2
        if vihl >> 4 != 4 or ihl < IPV4_MIN_HEADER_LEN or not ihl <= tlen <= len(packet):
            return None
        if ff & 0x3FFF:  # A.1: nothing is offloaded for fragments
            return None
        buf = bytearray(packet[:tlen])
        if sa.tunnel and (src != sa.tunnel_src or dst != sa.tunnel_dst):
            buf[12:16], buf[16:20] = sa.tunnel_src, sa.tunnel_dst
            _rechecksum(buf, ihl)
        off = ihl
        ops = sa.ops
        ah_op = ops[-1] if ops[-1].protocol == PROTO_AH else None
        esp_op = ops[0] if ops[0].protocol == PROTO_ESP else None
        if sa.udp:
            if proto != PROTO_UDP or tlen - off < UDP_HEADER_LEN:
                return None
            off += UDP_HEADER_LEN
        elif proto != (PROTO_AH if ah_op else PROTO_ESP):
            return None
        ah_off = -1
        if ah_op is not None:
            ah_off = off
            if tlen - off < ah_op.ah_len:
                return None
            nh, plen, _r, spi, _seq = _AH_HEAD.unpack_from(buf, off)
            if spi != ah_op.spi or (plen + 2) * 4 != ah_op.ah_len:
                return None
            if esp_op is not None and nh != PROTO_ESP:
                return None
            off += ah_op.ah_len
        if esp_op is not None:
            t = esp_op.esp
            assert t is not None
            ct_off = off + ESP_HEADER_LEN + esp_op.iv_len
            ct_end = tlen - esp_op.icv_len
            if ct_end - ct_off < 2 or (ct_end - ct_off) % esp_op.block:
                return None
            spi, seq = _SPI_SEQ.unpack_from(buf, off)
            if spi != esp_op.spi:
                return None
            esp_hdr = bytes(buf[off:off + ESP_HEADER_LEN])
            iv, body = t.seal(esp_hdr, seq, bytes(buf[ct_off:ct_end]))
            buf[off + ESP_HEADER_LEN:tlen] = iv + body
        if ah_op is not None:
            a = ah_op.ah
            assert a is not None
            seq = _SPI_SEQ.unpack_from(buf, ah_off + 4)[1]
            icv_at = ah_off + AH_FIXED_LEN
            buf[icv_at:ah_off + ah_op.ah_len] = bytes(ah_op.ah_len - AH_FIXED_LEN)
            covered = _ah_covered(buf, ihl, predict_route=True)
            buf[icv_at:icv_at + ah_op.icv_len] = a.compute(covered, seq, icv_at)
        return bytes(buf) + packet[tlen:]

    # ================================================================ receive
    def receive(self, packet: bytes) -> tuple[bytes, NblInfoReceive]:
        """Verify/decrypt a received packet for an offloaded inbound SA (module docstring).

        Returns the packet (plaintext in place of the ciphertext on success, as it was
        otherwise) and the receive view of the NBL info.
        """
        if packet.__class__ is not bytes:
            packet = as_packet(packet)
        with self._lock:
            found = self._lookup(packet)
            if found is None:
                self.stats.passed_up += 1
                return packet, _NOT_DONE
            sa, udp_seen = found
            status, out = self._receive(sa, packet, udp_seen)
            delete_req = 0
            if (self._want_room and sa.handle not in self._asked
                    and len(self._sas) >= self.capacity):
                delete_req = 1
                self._asked.add(sa.handle)
                self._want_room = False
                self.stats.delete_requests += 1
            if status is CryptoStatus.SUCCESS:
                self.stats.received += 1
                if not delete_req:
                    return out, _DONE_OK
            else:
                self.stats.receive_failures += 1
            return out, NblInfoReceive(SaDeleteReq=delete_req, CryptoDone=1,
                                       CryptoStatus=int(status))

    def _lookup(self, packet: bytes) -> tuple[OffloadedSa, bool] | None:
        """The inbound SA a packet is for, and whether it came UDP-encapsulated."""
        n = len(packet)
        if n < IPV4_MIN_HEADER_LEN:
            return None
        vihl, _tos, _tlen, _id, ff, _ttl, proto, _c, _src, dst = _V4.unpack_from(packet)
        ihl = (vihl & 15) << 2
        if vihl >> 4 != 4 or ihl < IPV4_MIN_HEADER_LEN or ff & 0x3FFF:
            return None  # not IPv4, or a fragment (A.1: no offload for reassembly)
        udp = False
        if proto == PROTO_AH:
            if n < ihl + AH_FIXED_LEN:
                return None
            spi = _U32.unpack_from(packet, ihl + 4)[0]
        elif proto == PROTO_ESP:
            if n < ihl + 4:
                return None
            spi = _U32.unpack_from(packet, ihl)[0]
        elif proto == PROTO_UDP and self._ports:
            if n < ihl + UDP_HEADER_LEN + 4:
                return None  # too short for a SPI: keepalive or nothing we parse
            if _H.unpack_from(packet, ihl + 2)[0] not in self._ports:
                return None
            spi = _U32.unpack_from(packet, ihl + UDP_HEADER_LEN)[0]
            if spi == 0:
                return None  # non-ESP marker: IKE, passed up untouched (A.7)
            proto, udp = PROTO_ESP, True
        else:
            return None
        sa = self._by_key.get((True, proto, spi, dst))
        if sa is None:
            sa = self._by_key.get((True, proto, spi, _ANY))
            if sa is None or not _masked_eq(dst, sa.dst, sa.dst_match_mask):
                return None
        return sa, udp

    def _receive(self, sa: OffloadedSa, packet: bytes, udp_seen: bool
                 ) -> tuple[CryptoStatus, bytes]:
        syntax, protocol = CryptoStatus.INVALID_PACKET_SYNTAX, CryptoStatus.INVALID_PROTOCOL
        vihl, _tos, tlen, _id, _ff, _ttl, proto, _c, _src, _dst = _V4.unpack_from(packet)
        ihl = (vihl & 15) << 2
        if not ihl <= tlen <= len(packet):
            return syntax, packet
        if sa.udp != udp_seen:
            return protocol, packet
        ops = sa.ops
        ah_op = ops[-1] if ops[-1].protocol == PROTO_AH else None
        esp_op = ops[0] if ops[0].protocol == PROTO_ESP else None
        off, end = ihl, tlen
        if udp_seen:
            ulen = _H.unpack_from(packet, ihl + 4)[0]
            if ulen < UDP_HEADER_LEN or ihl + ulen > tlen:
                return syntax, packet
            off, end = ihl + UDP_HEADER_LEN, ihl + ulen
        elif proto != (PROTO_AH if ah_op else PROTO_ESP):
            return protocol, packet
        ah_off = -1
        if ah_op is not None:
            ah_off = off
            if end - off < AH_FIXED_LEN:
                return syntax, packet
            nh, plen, _r, spi, _seq = _AH_HEAD.unpack_from(packet, off)
            if spi != ah_op.spi:
                return protocol, packet
            if (plen + 2) * 4 != ah_op.ah_len or end - off < ah_op.ah_len:
                return syntax, packet
            if esp_op is not None:
                if nh != PROTO_ESP:
                    return protocol, packet
                if end - off - ah_op.ah_len < 4:
                    return syntax, packet
                if _U32.unpack_from(packet, off + ah_op.ah_len)[0] != esp_op.spi:
                    return protocol, packet
            off += ah_op.ah_len
        ct_off = ct_end = 0
        if esp_op is not None:
            ct_off = off + ESP_HEADER_LEN + esp_op.iv_len
            ct_end = end - esp_op.icv_len
            clen = ct_end - ct_off
            if clen < max(esp_op.block, 4) or clen % esp_op.block:
                return syntax, packet
        tunnel = sa.tunnel
        if ah_op is not None:
            a = ah_op.ah
            assert a is not None
            icv_at = ah_off + AH_FIXED_LEN
            seq = _SPI_SEQ.unpack_from(packet, ah_off + 4)[1]
            buf = bytearray(packet[:tlen])
            buf[icv_at:icv_at + ah_op.icv_len] = bytes(ah_op.icv_len)
            try:
                covered = _ah_covered(buf, ihl, predict_route=False)
            except MalformedPacket:
                return syntax, packet
            if not a.verify(covered, seq, packet[icv_at:icv_at + ah_op.icv_len], icv_at):
                return (CryptoStatus.TUNNEL_AH_AUTH_FAILED if tunnel
                        else CryptoStatus.TRANSPORT_AH_AUTH_FAILED), packet
        if esp_op is None:
            return CryptoStatus.SUCCESS, packet
        t = esp_op.esp
        assert t is not None
        seq = _SPI_SEQ.unpack_from(packet, off)[1]
        try:
            plain = t.open(packet[off:off + ESP_HEADER_LEN], seq,
                           packet[off + ESP_HEADER_LEN:ct_off], packet[ct_off:end])
        except MalformedPacket:
            return syntax, packet
        if plain is None:
            return (CryptoStatus.TUNNEL_ESP_AUTH_FAILED if tunnel
                    else CryptoStatus.TRANSPORT_ESP_AUTH_FAILED), packet
        return CryptoStatus.SUCCESS, b"".join((packet[:ct_off], plain, packet[ct_end:]))


# --- helpers -------------------------------------------------------------------------------------


def _masked_eq(addr: bytes, net: bytes, mask: bytes) -> bool:
    m = int.from_bytes(mask, "big")
    return int.from_bytes(addr, "big") & m == int.from_bytes(net, "big") & m


def _rechecksum(buf: bytearray, ihl: int) -> None:
    buf[10:12] = b"\x00\x00"
    s = sum(struct.unpack(f"!{ihl // 2}H", bytes(buf[:ihl])))
    s = (s & 0xFFFF) + (s >> 16)
    s = (s & 0xFFFF) + (s >> 16)
    _H.pack_into(buf, 10, ~s & 0xFFFF)


def _ah_covered(buf: bytearray, ihl: int, *, predict_route: bool) -> bytes:
    """The packet as the AH ICV covers it (RFC 4302 §3.3.3.1.1): mutable IPv4 fields zeroed, and
    on send the final destination of a source route in the destination field."""
    if ihl == IPV4_MIN_HEADER_LEN:
        head = ipv4_ah_zero_fixed(buf)
    else:
        head = ipv4_ah_zero_mutable(bytes(buf[:ihl]))
        if predict_route:
            final = ipv4_source_route_final(buf[IPV4_MIN_HEADER_LEN:ihl])
            if final is not None:
                head = head[:16] + final + head[20:]
    return head + bytes(buf[ihl:])

