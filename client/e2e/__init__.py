"""End-to-end encryption for encrypted rooms (docs/e2e.md), on vodozemac: identities and
prekeys (``identity``), the sans-IO engine of one room with Olm and Megolm (``room``), and
interactive verification (``sas``)."""
