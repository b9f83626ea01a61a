"""Types of the compiled relay hot loop (relay/_hot.c; relay/hot.py is its Python side)."""

from collections.abc import Callable

Addr = tuple[str, int]

class Route:
    """A room's prebuilt sendmmsg headers for each delivery format (plain, framed, and the
    numbered deliveries of a room's ocm1r members)."""

    def __init__(self, generation: int, plain: list[Addr], framed: list[Addr],
                 numbered: list[Addr] | None = None) -> None: ...

class Hot:
    """The compiled hot loop of one relay worker."""

    def __init__(self, *, fd: int, core: object, routes: dict[str, Route],
                 slow: Callable[[bytes, Addr, float], None],
                 warn: Callable[[str, int], None], clock: Callable[[], float] | None,
                 after: Callable[[], None], member_type: type, room_type: type,
                 history_type: type, reliable_type: type, chat_kind: int,
                 max_datagram: int, max_delivery: int, exit_max: int,
                 max_batch: int) -> None: ...
    def on_readable(self) -> None:
        """The reader callback: read with clock(), count in the core, after() if needed."""
    def counters(self) -> dict[str, int]: ...

def utf8_valid(data: bytes) -> bool: ...

MAC_TRAILER_BYTES: int
MAC_TAG_BYTES: int

def blake2s_mac(key: bytes, data: bytes, size: int) -> bytes:
    """Keyed BLAKE2s with digest length ``size`` (1..32), as the loop checks datagram MACs."""
