"""Offline tools built on the engine: capture rewriting and diagnosis, no service needed.

* :mod:`ipsecsa.tools.offline` — SAs matched by SPI and destination in either direction;
* :mod:`ipsecsa.tools.pcapops` — ``pcap unprotect`` / ``pcap protect``;
* :mod:`ipsecsa.tools.inspect` — ``pcap inspect``: per-SPI statistics and failure diagnosis.

The command line (:mod:`ipsecsa.cli`) is a thin layer over these.
"""
