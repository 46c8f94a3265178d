"""NDIS IPsec task offload v1 values (OIDs, NDIS_STATUS, algorithm and flag numbers).

Specification constants only: every number here is a Windows header value, as listed in
``shared/spec/windows-layouts-x64.json`` (reference sections A.2-A.10, A.12) and checked against
that file by ``tests/ndis/test_layouts.py``.

Naming. Each enum groups one Windows family and drops the family's common prefix:
``Oid.TCP_TASK_IPSEC_ADD_SA`` is ``OID_TCP_TASK_IPSEC_ADD_SA``, ``NdisStatus.INVALID_LENGTH`` is
``NDIS_STATUS_INVALID_LENGTH``. :func:`windows_name` gives the exact Windows spelling of any
member and :data:`BY_WINDOWS_NAME` maps every Windows name back to its value, so nothing is
spelled twice. Where a Windows suffix is not a Python identifier (``OFFLOAD_IPSEC_CONF_3_DES``)
the member is spelled out (``OffloadConf.THREE_DES``).

Values are unsigned 32-bit numbers, as the reference writes them: ``NdisStatus.INVALID_LENGTH ==
0xC0010014``. NDIS_STATUS is a signed ``int`` in C; use :meth:`NdisStatus.signed` for that form.
"""

from __future__ import annotations

import enum

__all__ = [
    "BY_WINDOWS_NAME",
    "NOT_IN_LAYOUTS_JSON",
    "OFFLOAD_MAX_SAS",
    "CryptoStatus",
    "IpsecOffloadV2Authentication",
    "IpsecOffloadV2Encryption",
    "NdisEncapsulation",
    "NdisStatus",
    "OffloadConf",
    "OffloadIntegrity",
    "OffloadOperation",
    "OffloadParametersIpsecV1",
    "OffloadParametersIpsecV2",
    "OffloadSaFlags",
    "OffloadSupport",
    "Oid",
    "UdpEncapType",
    "UdpEspCapability",
    "windows_name",
]

#: Entries in OFFLOAD_IPSEC_ADD_SA.SecAssoc (``OFFLOAD_MAX_SAS``); requests use 1 or 2 (A.3).
OFFLOAD_MAX_SAS = 3


@enum.unique
class Oid(enum.IntEnum):
    """OIDs of NDIS IPsec offload (A.2, A.9, A.12). All IPsec SA OIDs are *set* requests."""

    #: NDIS 5.x capability query / enable (NDIS_TASK_OFFLOAD_HEADER + NDIS_TASK_IPSEC).
    TCP_TASK_OFFLOAD = 0xFC010201
    TCP_TASK_IPSEC_ADD_SA = 0xFC010202
    TCP_TASK_IPSEC_DELETE_SA = 0xFC010203
    TCP_SAN_SUPPORT = 0xFC010204
    TCP_TASK_IPSEC_ADD_UDPESP_SA = 0xFC010205
    TCP_TASK_IPSEC_DELETE_UDPESP_SA = 0xFC010206
    #: NDIS 6: answered by NDIS itself from the miniport's reported NDIS_OFFLOAD.
    TCP_OFFLOAD_CURRENT_CONFIG = 0xFC01020B
    #: NDIS 6: enable/disable offloads; field IPsecV1 takes :class:`OffloadParametersIpsecV1`.
    TCP_OFFLOAD_PARAMETERS = 0xFC01020C
    TCP_OFFLOAD_HARDWARE_CAPABILITIES = 0xFC01020D
    OFFLOAD_ENCAPSULATION = 0x0101010A
    # IPsec offload v2 (NDIS 6.1+), for reference only (A.12).
    TCP_TASK_IPSEC_OFFLOAD_V2_ADD_SA = 0xFC030202
    TCP_TASK_IPSEC_OFFLOAD_V2_DELETE_SA = 0xFC030203
    TCP_TASK_IPSEC_OFFLOAD_V2_UPDATE_SA = 0xFC030204
    TCP_TASK_IPSEC_OFFLOAD_V2_ADD_SA_EX = 0xFC030205


@enum.unique
class NdisStatus(enum.IntEnum):
    """NDIS_STATUS values an IPsec OID request can complete with (A.8), unsigned."""

    SUCCESS = 0x00000000
    PENDING = 0x00000103
    NOT_ACCEPTED = 0x00010003
    FAILURE = 0xC0000001
    INVALID_PARAMETER = 0xC000000D
    RESOURCES = 0xC000009A
    NOT_SUPPORTED = 0xC00000BB
    REQUEST_ABORTED = 0xC001000C
    INVALID_LENGTH = 0xC0010014
    INVALID_DATA = 0xC0010015
    BUFFER_TOO_SHORT = 0xC0010016
    INVALID_OID = 0xC0010017
    #: Status *indication* (not a completion code): the offload configuration changed (A.9).
    TASK_OFFLOAD_CURRENT_CONFIG = 0x40020006

    @property
    def signed(self) -> int:
        """The value as C's signed 32-bit ``NDIS_STATUS``."""
        return self.value - (1 << 32) if self.value & 0x80000000 else self.value


@enum.unique
class OffloadOperation(enum.IntEnum):
    """OFFLOAD_OPERATION_E: what one OFFLOAD_SECURITY_ASSOCIATION entry does (A.4)."""

    AUTHENTICATE = 1  # AH
    ENCRYPT = 2  # ESP


@enum.unique
class OffloadConf(enum.IntEnum):
    """OFFLOAD_CONF_ALGO: ConfAlgo.algoIdentifier (A.5)."""

    NONE = 0
    DES = 1
    RESERVED = 2
    THREE_DES = 3  # OFFLOAD_IPSEC_CONF_3_DES
    MAX = 4


@enum.unique
class OffloadIntegrity(enum.IntEnum):
    """OFFLOAD_INTEGRITY_ALGO: IntegrityAlgo.algoIdentifier (A.5)."""

    NONE = 0
    MD5 = 1
    SHA = 2
    MAX = 3


class OffloadSaFlags(enum.IntFlag):
    """OFFLOAD_IPSEC_ADD_SA.Flags: exactly one direction per request (A.3)."""

    INBOUND_SA = 0x1
    OUTBOUND_SA = 0x2


@enum.unique
class UdpEncapType(enum.IntEnum):
    """UDP_ENCAP_TYPE of OFFLOAD_IPSEC_UDPESP_ENCAPTYPE_ENTRY (A.7)."""

    IKE = 0  # reserved
    OTHER = 1  # the normal port-4500 encapsulation


class UdpEspCapability(enum.IntFlag):
    """NDIS_IPSEC_OFFLOAD_V1.Supported.Flags: UDP-ESP subtypes the NIC parses (A.9).

    The ``*_IKE`` bits are "reserved for internal use"; the ``*_OTHER`` bits are the four
    subtypes of A.7.
    """

    TPT_UDPESP_ENCAPTYPE_IKE = 0x01
    TUN_UDPESP_ENCAPTYPE_IKE = 0x02
    TPTOVERTUN_UDPESP_ENCAPTYPE_IKE = 0x04
    TPT_UDPESP_OVER_PURE_TUN_ENCAPTYPE_IKE = 0x08
    TPT_UDPESP_ENCAPTYPE_OTHER = 0x10
    TUN_UDPESP_ENCAPTYPE_OTHER = 0x20
    TPTOVERTUN_UDPESP_ENCAPTYPE_OTHER = 0x40
    TPT_UDPESP_OVER_PURE_TUN_ENCAPTYPE_OTHER = 0x80


@enum.unique
class CryptoStatus(enum.IntEnum):
    """Receive-side CryptoStatus of NDIS_IPSEC_OFFLOAD_V1_NET_BUFFER_LIST_INFO (A.10).

    Numbers, not bits (Linux ``xfrm_offload`` reuses the names with other values: never mix).
    ``SUCCESS`` is also what a NIC reports for a packet it did not process.
    """

    SUCCESS = 0
    GENERIC_ERROR = 1
    TRANSPORT_AH_AUTH_FAILED = 2
    TRANSPORT_ESP_AUTH_FAILED = 3
    TUNNEL_AH_AUTH_FAILED = 4
    TUNNEL_ESP_AUTH_FAILED = 5
    INVALID_PACKET_SYNTAX = 6
    INVALID_PROTOCOL = 7


class NdisEncapsulation(enum.IntFlag):
    """NDIS_ENCAPSULATION_* bits of Supported.Encapsulation; IEEE_802_3 is mandatory (A.9)."""

    NOT_SUPPORTED = 0x00
    NULL = 0x01
    IEEE_802_3 = 0x02
    IEEE_802_3_P_AND_Q = 0x04
    IEEE_802_3_P_AND_Q_IN_OOB = 0x08
    IEEE_LLC_SNAP_ROUTED = 0x10


@enum.unique
class OffloadSupport(enum.IntEnum):
    """NDIS_OFFLOAD_SUPPORTED / NOT_SUPPORTED, the values of the 2-bit capability bitfields."""

    NOT_SUPPORTED = 0
    SUPPORTED = 1


@enum.unique
class OffloadParametersIpsecV1(enum.IntEnum):
    """NDIS_OFFLOAD_PARAMETERS.IPsecV1 for OID_TCP_OFFLOAD_PARAMETERS (A.9)."""

    #: NDIS_OFFLOAD_PARAMETERS_NO_CHANGE (reference A.9, HDR; not in the layouts JSON).
    NO_CHANGE = 0
    DISABLED = 1
    AH_ENABLED = 2
    ESP_ENABLED = 3
    AH_AND_ESP_ENABLED = 4


@enum.unique
class OffloadParametersIpsecV2(enum.IntEnum):
    """NDIS_OFFLOAD_PARAMETERS.IPsecV2 (offload v2, reference only)."""

    NO_CHANGE = 0  # NDIS_OFFLOAD_PARAMETERS_NO_CHANGE, as for v1
    DISABLED = 1
    AH_ENABLED = 2
    ESP_ENABLED = 3
    AH_AND_ESP_ENABLED = 4


class IpsecOffloadV2Authentication(enum.IntFlag):
    """NDIS_IPSEC_OFFLOAD_V2.AuthenticationAlgorithms bits (offload v2, reference only)."""

    MD5 = 0x01
    SHA_1 = 0x02
    SHA_256 = 0x04
    AES_GCM_128 = 0x08
    AES_GCM_192 = 0x10
    AES_GCM_256 = 0x20


class IpsecOffloadV2Encryption(enum.IntFlag):
    """NDIS_IPSEC_OFFLOAD_V2.EncryptionAlgorithms bits (offload v2, reference only)."""

    NONE = 0x001
    DES_CBC = 0x002
    THREE_DES_CBC = 0x004  # IPSEC_OFFLOAD_V2_ENCRYPTION_3_DES_CBC
    AES_GCM_128 = 0x008
    AES_GCM_192 = 0x010
    AES_GCM_256 = 0x020
    AES_CBC_128 = 0x040
    AES_CBC_192 = 0x080
    AES_CBC_256 = 0x100


# --- Windows spellings ---------------------------------------------------------------------------

_PREFIX: dict[type[enum.Enum], str] = {
    Oid: "OID_",
    NdisStatus: "NDIS_STATUS_",
    OffloadOperation: "",
    OffloadConf: "OFFLOAD_IPSEC_CONF_",
    OffloadIntegrity: "OFFLOAD_IPSEC_INTEGRITY_",
    OffloadSaFlags: "OFFLOAD_",
    UdpEncapType: "OFFLOAD_IPSEC_UDPESP_ENCAPTYPE_",
    UdpEspCapability: "IPSEC_",
    CryptoStatus: "CRYPTO_",
    NdisEncapsulation: "NDIS_ENCAPSULATION_",
    OffloadSupport: "NDIS_OFFLOAD_",
    OffloadParametersIpsecV1: "NDIS_OFFLOAD_PARAMETERS_IPSECV1_",
    OffloadParametersIpsecV2: "NDIS_OFFLOAD_PARAMETERS_IPSECV2_",
    IpsecOffloadV2Authentication: "IPSEC_OFFLOAD_V2_AUTHENTICATION_",
    IpsecOffloadV2Encryption: "IPSEC_OFFLOAD_V2_ENCRYPTION_",
}

# Keyed by (family, member name): members of different IntEnums compare (and hash) as equal ints.
_SPELLED: dict[tuple[type[enum.Enum], str], str] = {
    (OffloadConf, "THREE_DES"): "OFFLOAD_IPSEC_CONF_3_DES",
    (IpsecOffloadV2Encryption, "THREE_DES_CBC"): "IPSEC_OFFLOAD_V2_ENCRYPTION_3_DES_CBC",
    (OffloadParametersIpsecV1, "NO_CHANGE"): "NDIS_OFFLOAD_PARAMETERS_NO_CHANGE",
    (OffloadParametersIpsecV2, "NO_CHANGE"): "NDIS_OFFLOAD_PARAMETERS_NO_CHANGE",
}

#: Windows names whose values come from the reference (HDR) but are absent from the layouts JSON.
NOT_IN_LAYOUTS_JSON = frozenset({"NDIS_OFFLOAD_PARAMETERS_NO_CHANGE"})


def windows_name(member: enum.Enum) -> str:
    """The Windows header name of ``member`` (``Oid.TCP_TASK_IPSEC_ADD_SA`` → ``"OID_TCP_…"``)."""
    name = member.name
    assert name is not None
    return _SPELLED.get((type(member), name)) or _PREFIX[type(member)] + name


def _by_windows_name() -> dict[str, int]:
    names: dict[str, int] = {"OFFLOAD_MAX_SAS": OFFLOAD_MAX_SAS}
    for family in _PREFIX:
        # __members__, not iteration: Flag iteration skips zero-valued members (NOT_SUPPORTED).
        for member in family.__members__.values():
            assert isinstance(member, int)  # every family is an IntEnum or IntFlag
            names[windows_name(member)] = member  # NO_CHANGE appears twice with the same value
    return names


#: Every Windows name this module knows, mapped to its value (an enum member where there is one).
BY_WINDOWS_NAME: dict[str, int] = _by_windows_name()
