# The optional C extension built from _account.c (setup.py); loadgen/fastpath.py uses it.
BATCH_BYTES: int
"""Size of the batch descriptor the C code expects (``ctypes.sizeof(fastpath._Batch)``)."""

def account(descriptor: object, /) -> int:
    """Account one receive batch described by ``descriptor`` (a writable buffer); return the
    deliveries accounted. Raises ``ValueError`` if the descriptor has the wrong size."""
