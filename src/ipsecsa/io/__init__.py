"""I/O at the edges of the engine: capture files and Wireshark configuration.

The core (``packet``, ``crypto``, ``datapath``) is sans-IO; this package reads and writes files
around it:

* :mod:`ipsecsa.io.pcap` — dependency-free pcap/pcapng reader and pcap writer
  (:func:`read_packets`, :class:`PcapWriter`, :class:`PcapError`);
* :mod:`ipsecsa.io.wireshark` — Wireshark's ESP SA table (``esp_sa``) for our SAs, so that
  Wireshark/tshark decrypts the traffic they protect (:func:`esp_sa_lines`,
  :func:`write_esp_sa_file`).
"""

from ipsecsa.io.pcap import (
    LINKTYPE_ETHERNET,
    LINKTYPE_RAW,
    Packet,
    PcapError,
    PcapReader,
    PcapWriter,
    read_packets,
)
from ipsecsa.io.wireshark import esp_sa_lines, write_esp_sa_file

__all__ = [
    "LINKTYPE_ETHERNET",
    "LINKTYPE_RAW",
    "Packet",
    "PcapError",
    "PcapReader",
    "PcapWriter",
    "esp_sa_lines",
    "read_packets",
    "write_esp_sa_file",
]
