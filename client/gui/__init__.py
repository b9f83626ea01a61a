"""``ocm-gui``: the desktop client on Qt 6 (PySide6), sharing ``client``'s library.

Modules: ``__main__`` (entry point), ``bridge`` (asyncio on Qt via qasync), ``models``
(state without Qt), ``connect`` (connect screen), ``room`` (room window), ``app`` (the
main window that joins and chats). docs/gui.md describes the architecture.
"""
