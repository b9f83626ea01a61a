# The optional C extension built from _reliable.c (setup.py); loadgen/lossyfast.py uses it.
BATCH_BYTES: int
"""Size of the batch descriptor the C code expects (``ctypes.sizeof(lossyfast._Batch)``)."""

def receive(descriptor: object, /) -> int:
    """One receive batch of the loss engine described by ``descriptor`` (a writable
    buffer); returns the datagrams left to Python. ``ValueError`` for a wrong size."""

def send_batch(fd: int, items: list[tuple[bytes, bytes, bytes, int]], /) -> int:
    """Send each (payload, source IP, destination IP, destination port) with sendmmsg, from
    that source IP (IP_PKTINFO); returns how many could not be sent."""
