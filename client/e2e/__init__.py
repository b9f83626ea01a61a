"""End-to-end encryption for encrypted rooms (docs/e2e.md): identity keys, sender chains,
and the sans-IO engine of one room. Uses ``cryptography`` for every primitive."""
