"""Build of the optional native ESP fast path (``ipsecsa._fastesp``, C over OpenSSL EVP) and of
the capture tools' record loops (``ipsecsa._capio``) and of the durable store's JSON writer
(``ipsecsa._storejson``) and of the WFP structures' copier (``ipsecsa._structcopy``).

Everything else about the package is in ``pyproject.toml``. The extension is ``optional``: if it
cannot be built (no compiler, no ``libssl-dev``), the package still installs and runs on the
pure-Python data path, and ``ipsecsa.info()`` says why the fast path is off.

``IPSECSA_SANITIZE=1`` builds it with AddressSanitizer and UndefinedBehaviorSanitizer (used by
``scripts/sanitize.sh``; the interpreter must then run with libasan preloaded).
"""

import os

from setuptools import Extension, setup

_cflags = ["-O2", "-std=c11", "-Wall", "-Wextra", "-Wno-unused-parameter",
           "-Wno-missing-field-initializers", "-Wno-cast-function-type"]
_ldflags: list[str] = []
if os.environ.get("IPSECSA_SANITIZE") == "1":
    _san = ["-fsanitize=address,undefined", "-fno-sanitize-recover=undefined",
            "-fno-omit-frame-pointer", "-g", "-O1"]
    _cflags += _san
    _ldflags += _san

setup(
    ext_modules=[
        Extension(
            "ipsecsa._fastesp",
            ["src/ipsecsa/_fastesp.c"],
            libraries=["crypto"],
            extra_compile_args=_cflags,
            extra_link_args=_ldflags,
            optional=True,
        ),
        # The record loops of the offline capture tools (ipsecsa.io.pcapbatch has the Python
        # reference); no library needed.
        Extension(
            "ipsecsa._capio",
            ["src/ipsecsa/_capio.c"],
            extra_compile_args=_cflags,
            extra_link_args=_ldflags,
            optional=True,
        ),
        # The durable store's JSON writer (ipsecsa.store.codec has the Python reference).
        Extension(
            "ipsecsa._storejson",
            ["src/ipsecsa/_storejson.c"],
            extra_compile_args=_cflags,
            extra_link_args=_ldflags,
            optional=True,
        ),
        # The WFP structures' copier (ipsecsa.wfp._structbase has the Python reference).
        Extension(
            "ipsecsa._structcopy",
            ["src/ipsecsa/_structcopy.c"],
            extra_compile_args=_cflags,
            extra_link_args=_ldflags,
            optional=True,
        ),
    ]
)
