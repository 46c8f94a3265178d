"""Type stub of the durable store's JSON writer (src/ipsecsa/_storejson.c); see
ipsecsa.store.codec, which holds its Python reference (``dumps_py``) and its ``describe``."""

from collections.abc import Callable
from typing import Any

PYTHON: int
STRUCT: int
UUID: int
BYTES: int
ENUM: int
LIST: int
PLAIN: int
MAX_DEPTH: int
BY_DICT: int
BY_DICT_ATTR: int
BY_ATTR: int

class Encoder:
    def __init__(self, describe: Callable[[type], tuple[Any, ...]],
                 cycle_error: type[BaseException], float_text: Callable[[float], bytes]) -> None: ...
    def dumps(self, value: Any, /) -> str | None: ...

def journal_body(lsn: int, ops: Any, /) -> bytes | None: ...
