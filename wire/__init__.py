"""Sans-IO wire codecs for OCM (docs/protocol.md): TCRP frames, chat datagrams, Stage 1.

Nothing in this package performs I/O, reads a clock or draws random numbers; every
other package imports it, and it imports nothing from them.
"""
