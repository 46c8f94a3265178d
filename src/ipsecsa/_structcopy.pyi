"""Type stub of the WFP structures' copier (src/ipsecsa/_structcopy.c); see
ipsecsa.wfp._structbase, which holds its Python reference (``clone_py``, ``clone_but_py``) and
its ``describe`` (``_native_kind``)."""

from collections.abc import Callable
from typing import Any

SHARED: int
STRUCT: int
LIST: int
MAX_DEPTH: int

class Copier:
    def __init__(self, describe: Callable[[type], Any], clone_py: Callable[[Any], Any],
                 clone_but_py: Callable[..., Any]) -> None: ...
    def clone(self, value: Any, /) -> Any: ...
    def clone_but(self, obj: Any, field: str, value: object, field2: str | None = None,
                  value2: object = None) -> Any: ...
