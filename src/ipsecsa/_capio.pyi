"""Type stub of the capture tools' record loops (src/ipsecsa/_capio.c); see
ipsecsa.io.pcapbatch, which holds the Python reference of both functions."""

from collections.abc import Sequence
from typing import Any

MAX_RECORD: int

def scan(buf: bytes, pos: int, big_endian: bool, linktype: int, /
         ) -> tuple[int, int, bytes, list[bytes], list[tuple[int, int, bytes | None, int]]]: ...
def assemble(buf: bytes, meta: bytes, first: int, count: int,
             results: Sequence[Sequence[Any]] | None, only_matched: bool, big_endian: bool,
             frac: int, linktype: int, /) -> tuple[bytes, int, int, int]: ...
