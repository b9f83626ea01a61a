"""The build's one job beyond pyproject.toml: the optional C extensions.

Each entry of ``OPTIONAL_EXTENSIONS`` is compiled at install time (``pip install .``, and
in place by ``pip install -e .``). ``optional=True`` makes a failed compile a warning, not
a failed install: without a C compiler or the Python headers the package installs without
the extension, and the code that would use it imports its pure-Python fallback instead (as
python-zeroconf does with its optional Cython modules). ``OCM_PURE_PYTHON=1`` skips every
extension on purpose.

To add an accelerator: put ``<package>/_<name>.c`` next to its Python fallback, add one
``Extension`` here, import it inside ``try``/``except ImportError`` and keep a test that
feeds both paths the same input (tests/unit/test_loadgen_fastpath.py is the example).
README.md ("Development") describes the convention.
"""

from __future__ import annotations

import os

from setuptools import Extension, setup

OPTIONAL_EXTENSIONS = [
    # The loadgen's receive accounting (loadgen/fastpath.py is its Python side).
    Extension("loadgen._account", ["loadgen/_account.c"], optional=True,
              extra_compile_args=["-O2"]),
    # The loss engine's receive path (loadgen/lossyfast.py is its Python side).
    Extension("loadgen._reliable", ["loadgen/_reliable.c"], optional=True,
              extra_compile_args=["-O2"]),
    # The relay worker's hot loop (relay/hot.py is its Python side). No FP contraction:
    # the token bucket must charge exactly as RelayCore._chat does. libcrypto (OpenSSL 3)
    # verifies datagram MACs (wire/dgmac.py); the Makefile installs its headers.
    Extension("relay._hot", ["relay/_hot.c"], optional=True, libraries=["crypto"],
              extra_compile_args=["-O2", "-ffp-contract=off"]),
]

setup(ext_modules=[] if os.environ.get("OCM_PURE_PYTHON") == "1" else OPTIONAL_EXTENSIONS)
