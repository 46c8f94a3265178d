"""NDIS IPsec task offload v1 structures in their exact Windows x64 binary layout.

Each structure is a frozen dataclass plus a compiled :class:`~ipsecsa.ndis.codec.StructLayout`
named exactly as the Windows type (``OFFLOAD_IPSEC_ADD_SA`` ...). Attribute names are the Windows
member names **verbatim** (``SrcAddr``, ``algoKeylen``, ``Sha_1``), so code reads like the WDK
documentation and the layout tests compare names with ``windows-layouts-x64.json`` directly.
Layouts, sizes and offsets are tested against that file (``tests/ndis/test_layouts.py``).

Representation (reference F.12, CHOICE where Windows is silent):

* ``IPAddr``/``IPMask`` members hold the address in network order as stored in memory; they are
  :class:`ipaddress.IPv4Address` here (``IPv4Address("10.0.0.1")`` is stored as ``0a 00 00 01``).
  Encoding also accepts 4 ``bytes`` in network order.
* Ports, ``SPI``, ``Protocol``, ``DstEncapPort`` and every other integer are host-order numbers,
  little-endian in memory on x64. Enum-typed members (``Operation``, ``UdpEncapType``,
  ``algoIdentifier``) are plain ints on decode, whatever the buffer holds; compare them with the
  enums of :mod:`ipsecsa.ndis.constants`. Judging values (INVALID_DATA) is the OID handler's job.
* HANDLEs are 8-byte unsigned ints (x64).

Variable part of the ADD requests (reference F.1, CHOICE):

* The request is the fixed part up to ``offsetof(KeyMat)`` (x64: 180 for OFFLOAD_IPSEC_ADD_SA, 196
  for OFFLOAD_IPSEC_ADD_UDPESP_SA; :data:`ADD_SA_KEYMAT_OFFSET`, :data:`ADD_UDPESP_SA_KEYMAT_OFFSET`)
  followed by ``KeyLen`` bytes of KeyMat. ``sizeof`` (184/200) counts a ``KeyMat[1]`` placeholder
  and tail padding that carry no data, so it is *not* the minimum: the minimum accepted length is
  ``offsetof(KeyMat) + KeyLen``.
* A buffer too short to hold the fixed part (so ``KeyLen`` cannot even be read) fails with
  ``NDIS_STATUS_BUFFER_TOO_SHORT``; a buffer holding the fixed part but shorter than
  ``offsetof(KeyMat) + KeyLen`` fails with ``NDIS_STATUS_INVALID_LENGTH`` (F.1). Both carry
  ``bytes_needed`` (NDIS's BytesNeeded). An OID layer that prefers the single set-OID convention
  (INVALID_LENGTH for every short set buffer) can map the first to the second.
* Bytes after ``offsetof(KeyMat) + KeyLen`` are ignored (a transport may pass ``sizeof`` or round
  its allocation up).
* :func:`encode_add_sa` emits exactly ``offsetof(KeyMat) + KeyLen`` bytes - the minimum the decoder
  accepts - with no padding up to ``sizeof``: for any real SA (KeyLen >= 16) that is longer than
  ``sizeof`` anyway, and it keeps ``encode(decode(b)) == b``.
* KeyMat is never shown: ``repr(AddSa)`` omits it, errors never quote it.

Decoders (``decode_*``) accept ``bytes``, ``bytearray`` or ``memoryview`` and raise only
:class:`StructError`; encoders raise :class:`StructError` with ``NDIS_STATUS_INVALID_DATA`` for a
value that does not fit its field (naming the field) and ``BUFFER_TOO_SHORT`` for a short output
buffer.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from typing import Any

from ipsecsa.errors import IpsecsaError
from ipsecsa.ndis.codec import (
    BOOLEAN,
    FLEXIBLE,
    HANDLE,
    IPADDR,
    IPMASK,
    NDIS_HANDLE,
    SHORT,
    SPI_TYPE,
    UCHAR,
    ULONG,
    USHORT,
    Buffer,
    CodecError,
    StructLayout,
    UnionLayout,
    bitfields,
    enum_type,
)
from ipsecsa.ndis.constants import OFFLOAD_MAX_SAS, NdisStatus

__all__ = [
    "ADD_SA_KEYMAT_OFFSET",
    "ADD_SA_OFFLOAD_HANDLE_OFFSET",
    "ADD_UDPESP_SA_ENTRY_HANDLE_OFFSET",
    "ADD_UDPESP_SA_KEYMAT_OFFSET",
    "ADD_UDPESP_SA_OFFLOAD_HANDLE_OFFSET",
    "LAYOUTS",
    "AddSa",
    "AddUdpEspSa",
    "AlgoInfo",
    "DeleteSa",
    "DeleteUdpEspSa",
    "IpsecOffloadV1",
    "IpsecOffloadV1Ah",
    "IpsecOffloadV1Esp",
    "IpsecOffloadV1Supported",
    "IpsecOffloadV2",
    "NblInfo",
    "NblInfoReceive",
    "NblInfoTransmit",
    "NdisObjectHeader",
    "SecurityAssociation",
    "StructError",
    "UdpEspEncapTypeEntry",
    "decode",
    "decode_add_sa",
    "decode_add_udpesp_sa",
    "decode_delete_sa",
    "decode_delete_udpesp_sa",
    "decode_ipsec_offload_v1",
    "decode_nbl_info",
    "encode",
    "encode_add_sa",
    "encode_add_udpesp_sa",
    "encode_delete_sa",
    "encode_delete_udpesp_sa",
    "encode_into",
    "encode_ipsec_offload_v1",
    "encode_nbl_info",
    "offset_of",
]


class StructError(IpsecsaError, ValueError):
    """An NDIS structure could not be decoded or encoded.

    ``status`` is the NDIS_STATUS an OID handler completes the request with; ``field`` the dotted
    member path (``"KeyLen"``, ``"SecAssoc[1].SPI"``, ``""`` for the whole buffer);
    ``bytes_needed`` the buffer length that would have sufficed, for short buffers.
    """

    def __init__(self, status: NdisStatus, field: str, message: str,
                 *, bytes_needed: int | None = None) -> None:
        self.status = status
        self.field = field
        self.reason = message
        self.bytes_needed = bytes_needed
        where = f"{field}: " if field else ""
        super().__init__(f"{status.name}: {where}{message}")


def _struct_error(exc: CodecError) -> StructError:
    status = NdisStatus.BUFFER_TOO_SHORT if exc.needed is not None else NdisStatus.INVALID_DATA
    return StructError(status, exc.field, exc.reason, bytes_needed=exc.needed)


_ANY = IPv4Address(0)

# --- OFFLOAD_ALGO_INFO / OFFLOAD_SECURITY_ASSOCIATION (A.4, A.5) ---------------------------------


@dataclass(frozen=True, slots=True)
class AlgoInfo:
    """OFFLOAD_ALGO_INFO. ``algoIdentifier``: OffloadConf or OffloadIntegrity; key length in bytes."""

    algoIdentifier: int = 0
    algoKeylen: int = 0
    algoRounds: int = 0


OFFLOAD_ALGO_INFO = StructLayout("OFFLOAD_ALGO_INFO", AlgoInfo, [
    ("algoIdentifier", ULONG),
    ("algoKeylen", ULONG),
    ("algoRounds", ULONG),
])


@dataclass(frozen=True, slots=True)
class SecurityAssociation:
    """OFFLOAD_SECURITY_ASSOCIATION: one AH (AUTHENTICATE) or ESP (ENCRYPT) operation."""

    Operation: int = 0
    SPI: int = 0
    IntegrityAlgo: AlgoInfo = AlgoInfo()
    ConfAlgo: AlgoInfo = AlgoInfo()
    Reserved: AlgoInfo = AlgoInfo()


OFFLOAD_SECURITY_ASSOCIATION = StructLayout("OFFLOAD_SECURITY_ASSOCIATION", SecurityAssociation, [
    ("Operation", enum_type("OFFLOAD_OPERATION_E")),
    ("SPI", SPI_TYPE),
    ("IntegrityAlgo", OFFLOAD_ALGO_INFO),
    ("ConfAlgo", OFFLOAD_ALGO_INFO),
    ("Reserved", OFFLOAD_ALGO_INFO),
])

_NO_SAS = (SecurityAssociation(),) * OFFLOAD_MAX_SAS

# --- OFFLOAD_IPSEC_ADD_SA / DELETE_SA (A.3, A.6) -------------------------------------------------


@dataclass(frozen=True, slots=True)
class AddSa:
    """OFFLOAD_IPSEC_ADD_SA with its key material (``KeyMat``, hidden from ``repr``).

    ``SecAssoc`` always has OFFLOAD_MAX_SAS (3) entries, the unused ones zero; ``NumSAs`` says how
    many are used. ``len(KeyMat) == KeyLen`` after decoding and is required for encoding.
    """

    SrcAddr: IPv4Address = _ANY
    SrcMask: IPv4Address = _ANY
    DestAddr: IPv4Address = _ANY
    DestMask: IPv4Address = _ANY
    Protocol: int = 0
    SrcPort: int = 0
    DestPort: int = 0
    SrcTunnelAddr: IPv4Address = _ANY
    DestTunnelAddr: IPv4Address = _ANY
    Flags: int = 0
    NumSAs: int = 0
    SecAssoc: tuple[SecurityAssociation, ...] = _NO_SAS
    OffloadHandle: int = 0
    KeyLen: int = 0
    KeyMat: bytes = field(default=b"", repr=False)


OFFLOAD_IPSEC_ADD_SA = StructLayout("OFFLOAD_IPSEC_ADD_SA", AddSa, [
    ("SrcAddr", IPADDR),
    ("SrcMask", IPMASK),
    ("DestAddr", IPADDR),
    ("DestMask", IPMASK),
    ("Protocol", ULONG),
    ("SrcPort", USHORT),
    ("DestPort", USHORT),
    ("SrcTunnelAddr", IPADDR),
    ("DestTunnelAddr", IPADDR),
    ("Flags", USHORT),
    ("NumSAs", SHORT),
    ("SecAssoc", OFFLOAD_SECURITY_ASSOCIATION, OFFLOAD_MAX_SAS),
    ("OffloadHandle", HANDLE),
    ("KeyLen", ULONG),
    ("KeyMat", UCHAR, FLEXIBLE),
])

#: offsetof(OFFLOAD_IPSEC_ADD_SA, KeyMat) on x64 (180): the fixed part of an ADD_SA buffer.
ADD_SA_KEYMAT_OFFSET = OFFLOAD_IPSEC_ADD_SA.fixed_size


def offset_of(layout: StructLayout, member: str) -> int:
    """C's ``offsetof(layout, member)`` for a top-level member of a compiled layout."""
    for f in layout.fields:
        if f.name == member:
            return f.offset
    raise KeyError(f"{layout.name} has no member {member!r}")


#: offsetof(OFFLOAD_IPSEC_ADD_SA, OffloadHandle) on x64 (168): the miniport's out-parameter.
ADD_SA_OFFLOAD_HANDLE_OFFSET = offset_of(OFFLOAD_IPSEC_ADD_SA, "OffloadHandle")


@dataclass(frozen=True, slots=True)
class DeleteSa:
    """OFFLOAD_IPSEC_DELETE_SA: the handle ADD_SA returned."""

    OffloadHandle: int = 0


OFFLOAD_IPSEC_DELETE_SA = StructLayout("OFFLOAD_IPSEC_DELETE_SA", DeleteSa, [
    ("OffloadHandle", HANDLE),
])

# --- UDP-encapsulated ESP (A.7) ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class UdpEspEncapTypeEntry:
    """OFFLOAD_IPSEC_UDPESP_ENCAPTYPE_ENTRY: a parser entry (UdpEncapType, DstEncapPort)."""

    UdpEncapType: int = 0
    DstEncapPort: int = 0


OFFLOAD_IPSEC_UDPESP_ENCAPTYPE_ENTRY = StructLayout(
    "OFFLOAD_IPSEC_UDPESP_ENCAPTYPE_ENTRY", UdpEspEncapTypeEntry, [
        ("UdpEncapType", enum_type("UDP_ENCAP_TYPE")),
        ("DstEncapPort", USHORT),
    ])


@dataclass(frozen=True, slots=True)
class AddUdpEspSa:
    """OFFLOAD_IPSEC_ADD_UDPESP_SA (``Dst*`` spellings, as Windows) with hidden ``KeyMat``."""

    SrcAddr: IPv4Address = _ANY
    SrcMask: IPv4Address = _ANY
    DstAddr: IPv4Address = _ANY
    DstMask: IPv4Address = _ANY
    Protocol: int = 0
    SrcPort: int = 0
    DstPort: int = 0
    SrcTunnelAddr: IPv4Address = _ANY
    DstTunnelAddr: IPv4Address = _ANY
    Flags: int = 0
    NumSAs: int = 0
    SecAssoc: tuple[SecurityAssociation, ...] = _NO_SAS
    OffloadHandle: int = 0
    EncapTypeEntry: UdpEspEncapTypeEntry = UdpEspEncapTypeEntry()
    EncapTypeEntryOffldHandle: int = 0
    KeyLen: int = 0
    KeyMat: bytes = field(default=b"", repr=False)


OFFLOAD_IPSEC_ADD_UDPESP_SA = StructLayout("OFFLOAD_IPSEC_ADD_UDPESP_SA", AddUdpEspSa, [
    ("SrcAddr", IPADDR),
    ("SrcMask", IPMASK),
    ("DstAddr", IPADDR),
    ("DstMask", IPMASK),
    ("Protocol", ULONG),
    ("SrcPort", USHORT),
    ("DstPort", USHORT),
    ("SrcTunnelAddr", IPADDR),
    ("DstTunnelAddr", IPADDR),
    ("Flags", USHORT),
    ("NumSAs", SHORT),
    ("SecAssoc", OFFLOAD_SECURITY_ASSOCIATION, OFFLOAD_MAX_SAS),
    ("OffloadHandle", HANDLE),
    ("EncapTypeEntry", OFFLOAD_IPSEC_UDPESP_ENCAPTYPE_ENTRY),
    ("EncapTypeEntryOffldHandle", HANDLE),
    ("KeyLen", ULONG),
    ("KeyMat", UCHAR, FLEXIBLE),
])

#: offsetof(OFFLOAD_IPSEC_ADD_UDPESP_SA, KeyMat) on x64 (196).
ADD_UDPESP_SA_KEYMAT_OFFSET = OFFLOAD_IPSEC_ADD_UDPESP_SA.fixed_size
#: offsetof(OFFLOAD_IPSEC_ADD_UDPESP_SA, OffloadHandle) on x64 (168).
ADD_UDPESP_SA_OFFLOAD_HANDLE_OFFSET = offset_of(OFFLOAD_IPSEC_ADD_UDPESP_SA, "OffloadHandle")
#: offsetof(OFFLOAD_IPSEC_ADD_UDPESP_SA, EncapTypeEntryOffldHandle) on x64 (184).
ADD_UDPESP_SA_ENTRY_HANDLE_OFFSET = offset_of(OFFLOAD_IPSEC_ADD_UDPESP_SA,
                                              "EncapTypeEntryOffldHandle")


@dataclass(frozen=True, slots=True)
class DeleteUdpEspSa:
    """OFFLOAD_IPSEC_DELETE_UDPESP_SA: SA handle and, when non-zero, the parser entry to drop."""

    OffloadHandle: int = 0
    EncapTypeEntryOffldHandle: int = 0


OFFLOAD_IPSEC_DELETE_UDPESP_SA = StructLayout("OFFLOAD_IPSEC_DELETE_UDPESP_SA", DeleteUdpEspSa, [
    ("OffloadHandle", HANDLE),
    ("EncapTypeEntryOffldHandle", HANDLE),
])

# --- NDIS_IPSEC_OFFLOAD_V1 capabilities (A.9) ----------------------------------------------------


@dataclass(frozen=True, slots=True)
class IpsecOffloadV1Supported:
    """NDIS_IPSEC_OFFLOAD_V1.Supported. ``Encapsulation``: NdisEncapsulation bits; ``Flags``:
    UdpEspCapability bits; the others are non-zero when capable."""

    Encapsulation: int = 0
    AhEspCombined: int = 0
    TransportTunnelCombined: int = 0
    IPv4Options: int = 0
    Flags: int = 0


@dataclass(frozen=True, slots=True)
class IpsecOffloadV1Ah:
    """NDIS_IPSEC_OFFLOAD_V1.IPv4AH: 2-bit fields (OffloadSupport values)."""

    Md5: int = 0
    Sha_1: int = 0
    Transport: int = 0
    Tunnel: int = 0
    Send: int = 0
    Receive: int = 0


@dataclass(frozen=True, slots=True)
class IpsecOffloadV1Esp:
    """NDIS_IPSEC_OFFLOAD_V1.IPv4ESP: 2-bit fields (OffloadSupport values)."""

    Des: int = 0
    Reserved: int = 0
    TripleDes: int = 0
    NullEsp: int = 0
    Transport: int = 0
    Tunnel: int = 0
    Send: int = 0
    Receive: int = 0


@dataclass(frozen=True, slots=True)
class IpsecOffloadV1:
    """NDIS_IPSEC_OFFLOAD_V1 (member IPsecV1 of NDIS_OFFLOAD)."""

    Supported: IpsecOffloadV1Supported = IpsecOffloadV1Supported()
    IPv4AH: IpsecOffloadV1Ah = IpsecOffloadV1Ah()
    IPv4ESP: IpsecOffloadV1Esp = IpsecOffloadV1Esp()


_V1_SUPPORTED = StructLayout("struct {anonymous}", IpsecOffloadV1Supported, [
    ("Encapsulation", ULONG),
    ("AhEspCombined", ULONG),
    ("TransportTunnelCombined", ULONG),
    ("IPv4Options", ULONG),
    ("Flags", ULONG),
])
_V1_AH = StructLayout("struct {anonymous}", IpsecOffloadV1Ah, [
    bitfields(ULONG, Md5=2, Sha_1=2, Transport=2, Tunnel=2, Send=2, Receive=2),
])
_V1_ESP = StructLayout("struct {anonymous}", IpsecOffloadV1Esp, [
    bitfields(ULONG, Des=2, Reserved=2, TripleDes=2, NullEsp=2, Transport=2, Tunnel=2, Send=2,
              Receive=2),
])
NDIS_IPSEC_OFFLOAD_V1 = StructLayout("NDIS_IPSEC_OFFLOAD_V1", IpsecOffloadV1, [
    ("Supported", _V1_SUPPORTED),
    ("IPv4AH", _V1_AH),
    ("IPv4ESP", _V1_ESP),
])

# --- NDIS_IPSEC_OFFLOAD_V1_NET_BUFFER_LIST_INFO (A.10) -------------------------------------------


@dataclass(frozen=True, slots=True)
class NblInfoTransmit:
    """Send view: the outbound SA's OffloadHandle."""

    OffloadHandle: int = 0


@dataclass(frozen=True, slots=True)
class NblInfoReceive:
    """Receive view: 1-bit flags, 13 pad bits, and a CryptoStatus value."""

    SaDeleteReq: int = 0
    CryptoDone: int = 0
    NextCryptoDone: int = 0
    Pad: int = 0
    CryptoStatus: int = 0


@dataclass(frozen=True, slots=True)
class NblInfo:
    """NDIS_IPSEC_OFFLOAD_V1_NET_BUFFER_LIST_INFO: a union of two views of one 8-byte slot.

    Decoding fills both views. To encode, give the view you mean (the other ``None``):
    ``NblInfo(Receive=NblInfoReceive(CryptoDone=1))``; the Receive view leaves bytes 4-7 zero.
    Giving both is accepted only if they describe the same bytes (as a decoded value does).
    """

    Transmit: NblInfoTransmit | None = None
    Receive: NblInfoReceive | None = None


_NBL_TRANSMIT = StructLayout("struct {anonymous}", NblInfoTransmit, [
    ("OffloadHandle", NDIS_HANDLE),
])
_NBL_RECEIVE = StructLayout("struct {anonymous}", NblInfoReceive, [
    bitfields(USHORT, SaDeleteReq=1, CryptoDone=1, NextCryptoDone=1, Pad=13),
    ("CryptoStatus", USHORT),
])
NDIS_IPSEC_OFFLOAD_V1_NET_BUFFER_LIST_INFO = StructLayout(
    "NDIS_IPSEC_OFFLOAD_V1_NET_BUFFER_LIST_INFO", NblInfo, [
        (None, UnionLayout("union {anonymous}", [
            ("Transmit", _NBL_TRANSMIT),
            ("Receive", _NBL_RECEIVE),
        ])),
    ])

# --- offload v2 capability structure (ready for v2; reference A.12) ------------------------------


@dataclass(frozen=True, slots=True)
class NdisObjectHeader:
    """NDIS_OBJECT_HEADER (Type, Revision, Size), heading every NDIS 6 object."""

    Type: int = 0
    Revision: int = 0
    Size: int = 0


NDIS_OBJECT_HEADER = StructLayout("NDIS_OBJECT_HEADER", NdisObjectHeader, [
    ("Type", UCHAR),
    ("Revision", UCHAR),
    ("Size", USHORT),
])


@dataclass(frozen=True, slots=True)
class IpsecOffloadV2:
    """NDIS_IPSEC_OFFLOAD_V2 capabilities. BOOLEAN members are ints (0..255), not bools."""

    Encapsulation: int = 0
    IPv6Supported: int = 0
    IPv4Options: int = 0
    IPv6NonIPsecExtensionHeaders: int = 0
    Ah: int = 0
    Esp: int = 0
    AhEspCombined: int = 0
    Transport: int = 0
    Tunnel: int = 0
    TransportTunnelCombined: int = 0
    LsoSupported: int = 0
    ExtendedSequenceNumbers: int = 0
    UdpEsp: int = 0
    AuthenticationAlgorithms: int = 0
    EncryptionAlgorithms: int = 0
    SaOffloadCapacity: int = 0


NDIS_IPSEC_OFFLOAD_V2 = StructLayout("NDIS_IPSEC_OFFLOAD_V2", IpsecOffloadV2, [
    ("Encapsulation", ULONG),
    ("IPv6Supported", BOOLEAN),
    ("IPv4Options", BOOLEAN),
    ("IPv6NonIPsecExtensionHeaders", BOOLEAN),
    ("Ah", BOOLEAN),
    ("Esp", BOOLEAN),
    ("AhEspCombined", BOOLEAN),
    ("Transport", BOOLEAN),
    ("Tunnel", BOOLEAN),
    ("TransportTunnelCombined", BOOLEAN),
    ("LsoSupported", BOOLEAN),
    ("ExtendedSequenceNumbers", BOOLEAN),
    ("UdpEsp", ULONG),
    ("AuthenticationAlgorithms", ULONG),
    ("EncryptionAlgorithms", ULONG),
    ("SaOffloadCapacity", ULONG),
])

#: Every compiled top-level layout, by Windows type name.
LAYOUTS: dict[str, StructLayout] = {
    layout.name: layout
    for layout in (
        OFFLOAD_ALGO_INFO,
        OFFLOAD_SECURITY_ASSOCIATION,
        OFFLOAD_IPSEC_ADD_SA,
        OFFLOAD_IPSEC_DELETE_SA,
        OFFLOAD_IPSEC_UDPESP_ENCAPTYPE_ENTRY,
        OFFLOAD_IPSEC_ADD_UDPESP_SA,
        OFFLOAD_IPSEC_DELETE_UDPESP_SA,
        NDIS_IPSEC_OFFLOAD_V1,
        NDIS_IPSEC_OFFLOAD_V1_NET_BUFFER_LIST_INFO,
        NDIS_OBJECT_HEADER,
        NDIS_IPSEC_OFFLOAD_V2,
    )
}
_BY_CLASS: dict[type, StructLayout] = {layout.cls: layout for layout in LAYOUTS.values()}

# --- decode / encode -----------------------------------------------------------------------------


def decode(cls: type, buf: Buffer, offset: int = 0) -> Any:
    """Decode the structure ``cls`` (e.g. ``AlgoInfo``) at ``offset``.

    For :class:`AddSa`/:class:`AddUdpEspSa` the KeyLen bytes of KeyMat are read too.
    """
    layout = _layout_of(cls)
    try:
        value = layout.decode(buf, offset)
    except CodecError as exc:
        raise _struct_error(exc) from None
    if layout.flexible is None:
        return value
    view = memoryview(buf).cast("B")
    start = offset + layout.fixed_size
    end = start + value.KeyLen
    if len(view) < end:
        raise StructError(
            NdisStatus.INVALID_LENGTH, "KeyLen",
            f"KeyLen {value.KeyLen} needs a buffer of {end - offset} bytes from the start of "
            f"{layout.name}, got {len(view) - offset}", bytes_needed=end)
    return dataclasses.replace(value, KeyMat=bytes(view[start:end]))


def encode(value: Any) -> bytes:
    """The bytes of ``value``; for ADD requests the fixed part followed by KeyMat."""
    out = bytearray(_encoded_size(value))
    encode_into(out, 0, value)
    return bytes(out)


def encode_into(buf: bytearray | memoryview, offset: int, value: Any) -> None:
    """Write ``value`` at ``offset`` of a preallocated buffer."""
    layout = _layout_of(type(value))
    need = _encoded_size(value)
    if offset < 0 or len(buf) - offset < need:
        raise StructError(NdisStatus.BUFFER_TOO_SHORT, "",
                          f"{layout.name} needs {need} bytes at offset {offset}, "
                          f"buffer has {len(buf)}", bytes_needed=max(offset, 0) + need)
    try:
        layout.encode_into(buf, offset, value)
    except CodecError as exc:
        raise _struct_error(exc) from None
    if layout.flexible is not None:
        start = offset + layout.fixed_size
        buf[start:start + value.KeyLen] = value.KeyMat


def _encoded_size(value: Any) -> int:
    layout = _layout_of(type(value))
    if layout.flexible is None:
        return layout.fixed_size
    if not isinstance(value.KeyMat, (bytes, bytearray)):
        raise StructError(NdisStatus.INVALID_DATA, "KeyMat", "must be bytes")
    if not isinstance(value.KeyLen, int) or value.KeyLen != len(value.KeyMat):
        raise StructError(NdisStatus.INVALID_DATA, "KeyLen",
                          f"KeyLen {value.KeyLen!r} != {len(value.KeyMat)} bytes of KeyMat")
    return layout.fixed_size + value.KeyLen


def _layout_of(cls: type) -> StructLayout:
    try:
        return _BY_CLASS[cls]
    except KeyError:
        raise TypeError(f"{cls.__name__} is not an NDIS structure of ipsecsa.ndis.structs") from None


# Named entry points for OID payloads (the InformationBuffer of the request).


def decode_add_sa(buf: Buffer) -> AddSa:
    """OID_TCP_TASK_IPSEC_ADD_SA payload -> :class:`AddSa` including KeyMat (see module doc)."""
    result: AddSa = decode(AddSa, buf)
    return result


def encode_add_sa(sa: AddSa, keymat: bytes | None = None) -> bytes:
    """Bytes a transport passes with OID_TCP_TASK_IPSEC_ADD_SA: fixed part, then KeyMat.

    ``keymat`` defaults to ``sa.KeyMat``; ``sa.KeyLen`` must equal its length. Exactly
    ``offsetof(KeyMat) + KeyLen`` bytes, no padding to ``sizeof``.
    """
    return encode(sa if keymat is None else dataclasses.replace(sa, KeyMat=bytes(keymat)))


def decode_add_udpesp_sa(buf: Buffer) -> AddUdpEspSa:
    """OID_TCP_TASK_IPSEC_ADD_UDPESP_SA payload -> :class:`AddUdpEspSa` including KeyMat."""
    result: AddUdpEspSa = decode(AddUdpEspSa, buf)
    return result


def encode_add_udpesp_sa(sa: AddUdpEspSa, keymat: bytes | None = None) -> bytes:
    """As :func:`encode_add_sa`, for OID_TCP_TASK_IPSEC_ADD_UDPESP_SA."""
    return encode(sa if keymat is None else dataclasses.replace(sa, KeyMat=bytes(keymat)))


def decode_delete_sa(buf: Buffer) -> DeleteSa:
    """OID_TCP_TASK_IPSEC_DELETE_SA payload (8 bytes on x64)."""
    result: DeleteSa = decode(DeleteSa, buf)
    return result


def encode_delete_sa(value: DeleteSa) -> bytes:
    return encode(value)


def decode_delete_udpesp_sa(buf: Buffer) -> DeleteUdpEspSa:
    """OID_TCP_TASK_IPSEC_DELETE_UDPESP_SA payload (16 bytes on x64)."""
    result: DeleteUdpEspSa = decode(DeleteUdpEspSa, buf)
    return result


def encode_delete_udpesp_sa(value: DeleteUdpEspSa) -> bytes:
    return encode(value)


def decode_ipsec_offload_v1(buf: Buffer, offset: int = 0) -> IpsecOffloadV1:
    """NDIS_IPSEC_OFFLOAD_V1 capabilities (28 bytes)."""
    result: IpsecOffloadV1 = decode(IpsecOffloadV1, buf, offset)
    return result


def encode_ipsec_offload_v1(value: IpsecOffloadV1) -> bytes:
    return encode(value)


def decode_nbl_info(buf: Buffer, offset: int = 0) -> NblInfo:
    """The 8-byte IPsecOffloadV1NetBufferListInfo slot, both views decoded."""
    result: NblInfo = decode(NblInfo, buf, offset)
    return result


def encode_nbl_info(value: NblInfo | NblInfoTransmit | NblInfoReceive) -> bytes:
    """The 8-byte slot for a view (or an :class:`NblInfo` with consistent views)."""
    if isinstance(value, NblInfoTransmit):
        value = NblInfo(Transmit=value)
    elif isinstance(value, NblInfoReceive):
        value = NblInfo(Receive=value)
    return encode(value)
