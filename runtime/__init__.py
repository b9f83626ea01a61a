"""Linux and process helpers shared by ``relay``, ``control`` and ``loadgen``.

``mmsg`` (batched UDP I/O: ``SendBatch``, ``RecvBatch``), ``sched`` (``SCHED_FIFO``),
``sockbuf`` (UDP socket buffer sizing) and ``logs`` (one log format for every process).
They depend on the standard library, orjson and ``wire`` only, never on the packages
that use them.
"""
