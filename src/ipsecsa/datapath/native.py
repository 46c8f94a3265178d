"""The native ESP fast path (``ipsecsa._fastesp``, C over OpenSSL EVP): whether it is on, why
not, and which SAs it takes.

The Python data path (:mod:`ipsecsa.datapath.esp`) is the reference; the native engine mirrors
it for the common case and hands everything else back to it packet by packet (see the C file's
header comment). An SA uses the native engine when all of these hold:

* the extension was built and loads (libcrypto >= 3.0), and ``IPSECSA_PURE_PYTHON`` is not
  ``1`` in the environment when ``ipsecsa`` is imported;
* the SA is ESP with AES-GCM (8/12/16-byte ICV), ChaCha20-Poly1305, AES-GMAC (``null-aes-gmac``)
  or AES-CBC with HMAC-SHA-1-96 / SHA-256-128 / SHA-384-192 / SHA-512-256; every other
  algorithm (CCM, CTR, 3DES, DES, null encryption, encryption-only ESP, XCBC, CMAC, MD5) stays
  on the Python path;
* ``native=False`` was not passed when the SA was built.

Everything is decided once per SA (practice 3): the per-packet calls are the C methods
themselves. The state (sequence numbers, window, counters, lifetimes, events) is the SA's own
and is shared by both paths, so an SA may be driven through either.

If the extension cannot be loaded the package says so once, as a ``RuntimeWarning`` when
``ipsecsa`` is imported and in :func:`ipsecsa.info`; a deliberate ``IPSECSA_PURE_PYTHON=1`` is
reported by ``info()`` only.
"""

from __future__ import annotations

import os
import threading
import warnings
from types import ModuleType
from typing import Any

#: The environment variable that forces the pure-Python data path.
PURE_PYTHON_ENV = "IPSECSA_PURE_PYTHON"

_module: ModuleType | None = None
_why_off: str | None = None

if os.environ.get(PURE_PYTHON_ENV) == "1":
    _why_off = f"{PURE_PYTHON_ENV}=1 is set"
else:
    try:
        from ipsecsa import _fastesp as _loaded
    except ImportError as exc:  # not built (no compiler or libssl-dev), or libcrypto < 3.0
        _why_off = f"the native extension ipsecsa._fastesp is not available ({exc})"
        warnings.warn(f"ipsecsa: native ESP fast path off: {_why_off}; using the pure-Python "
                      "data path", RuntimeWarning, stacklevel=2)
    else:
        _module = _loaded

_ready = False
#: What ``native=None`` means when an SA is built: None = "on where possible"; tests set
#: False/True through :func:`set_default` to run the same code on either path.
_default: bool | None = None

#: Encryption algorithm name -> native algorithm id (AEADs: the key ends with a 4-byte salt).
_AEAD = {"aes-gcm-8": "ALG_GCM", "aes-gcm-12": "ALG_GCM", "aes-gcm-16": "ALG_GCM",
         "chacha20-poly1305": "ALG_CHACHA", "null-aes-gmac": "ALG_GMAC"}
#: Integrity algorithm name -> OpenSSL digest name, for AES-CBC + HMAC.
_HMAC = {"hmac-sha1-96": "SHA1", "hmac-sha256-128": "SHA256", "hmac-sha384-192": "SHA384",
         "hmac-sha512-256": "SHA512"}


def available() -> bool:
    """Whether the native fast path is on for SAs built from now on."""
    return _module is not None


def why_off() -> str | None:
    """Why the native fast path is off, or None when it is on."""
    return _why_off


def set_default(choice: bool | None) -> bool | None:
    """Set what SAs built with ``native=None`` use (None: the native path where possible;
    False: the Python path; True: require the native path). Returns the previous setting.
    For test fixtures that run one test body on both paths."""
    global _default
    old, _default = _default, choice
    return old


def default() -> bool | None:
    """The current :func:`set_default` choice."""
    return _default


def module() -> ModuleType | None:
    """The extension module, bound to the Python data path (first call), or None."""
    global _ready
    if _module is None:
        return None
    if not _ready:
        from ipsecsa.datapath.esp import EspSA
        from ipsecsa.datapath.result import DROPPED, Result
        from ipsecsa.datapath.state import SaState
        from ipsecsa.errors import DropReason

        reasons = tuple(DropReason[name] for name in _module.REASONS)
        _module.setup(EspSA, Result, reasons, DROPPED, SaState.MATURE, SaState.DYING)
        _ready = True
    return _module


def supports(config: Any) -> bool:
    """Whether the native engine implements this SA's algorithms."""
    enc = config.encryption.name
    if enc in _AEAD:
        return True
    integ = config.integrity
    return enc == "aes-cbc" and integ is not None and integ.name in _HMAC


def engine_for(sa: Any, unsafe_iv_source: Any, iv_mask: int) -> Any:
    """The native engine of an ESP SA (``_fastesp.Esp``), or None for the Python path.

    Counter IVs are ``seq ^ iv_mask``; the engine keeps the mask (``iv_mask``) and the IV source
    (``iv_source``), and the SA's Python transform, if ever built, takes them from it, so both
    paths of one SA never repeat an IV. ``unsafe_iv_source`` (known-answer tests only) is called back by
    the engine for every IV, as the Python transform would, so deterministic tests run the
    native crypto too; CBC IVs otherwise come from OpenSSL's ``RAND_bytes``."""
    mod = module()
    c = sa.config
    if mod is None or not supports(c):
        return None
    key = bytes(c.encryption_key.bytes)
    enc = c.encryption.name
    if enc in _AEAD:
        alg, cipher_key, salt, ikey, md = getattr(mod, _AEAD[enc]), key[:-4], key[-4:], b"", ""
    else:
        alg, cipher_key, salt = mod.ALG_CBC_HMAC, key, b""
        ikey, md = bytes(c.integrity_key.bytes), _HMAC[c.integrity.name]
    return mod.Esp(
        sa, alg, cipher_key, salt, ikey, md, sa._icvlen, sa._ivlen, sa._block,
        sa.mode == "tunnel", sa._v6, sa._encap is not None, sa._sport, sa._dport,
        c.src.packed, c.dst.packed, sa._ttl, -1 if sa._dscp is None else sa._dscp,
        -1 if sa._df_fixed is None else sa._df_fixed, sa._tfc, sa.esn,
        sa._window if getattr(sa, "_window", None) is not None else None,
        iv_mask, unsafe_iv_source)


def new_window(size: int, esn: bool, top: int) -> Any:
    """The C anti-replay window (same API as ReplayWindow), or None without the extension."""
    if _module is None:
        return None
    return _module.Replay(size, esn, top)


def new_lock() -> Any:
    """A lock with :class:`threading.Lock`'s API that native code can take directly
    (``_fastesp.Lock``: an SA context's lock, see :mod:`ipsecsa.wfp.engine`), or a
    ``threading.Lock`` without the extension."""
    if _module is None:
        return threading.Lock()
    return _module.Lock()


def new_flows(**callbacks: Any) -> Any:
    """The SA-context engine's native outbound route table (``_fastesp.Flows``), or None
    without the extension (the engine's Python path then carries every packet)."""
    mod = module()
    if mod is None:
        return None
    return mod.Flows(**callbacks)


def new_route(sa: Any, ctx: Any, limited: bool) -> Any:
    """The native outbound route of an SA context whose outbound bundle is the one ESP SA
    ``sa``: None when ``sa`` is not on the native path (or the context's lock is not the
    native one)."""
    mod = module()
    nat = getattr(sa, "_nat", None)
    if mod is None or nat is None or type(ctx.lock) is not mod.Lock:
        return None
    return mod.Route(nat, ctx, ctx.lock, limited)


def info() -> dict[str, Any]:
    """What :func:`ipsecsa.info` reports about the fast path."""
    out: dict[str, Any] = {"native": _module is not None, "why_off": _why_off}
    if _module is not None:
        out["openssl"] = _module.openssl_version()
    return out


__all__ = ["PURE_PYTHON_ENV", "available", "default", "engine_for", "info", "module",
           "new_flows", "new_lock", "new_route", "new_window", "set_default", "supports",
           "why_off"]
