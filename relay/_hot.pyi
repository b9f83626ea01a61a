"""Types of the compiled relay hot loop (relay/_hot.c; relay/hot.py is its Python side)."""

from collections.abc import Callable

RECV_SLOTS: int

Addr = tuple[str, int]

class Route:
    """A room's prebuilt sendmmsg headers for both delivery formats."""

    def __init__(self, generation: int, plain: list[Addr], framed: list[Addr],
                 reliable: list[Addr] | None = None) -> None: ...
    @property
    def generation(self) -> int: ...

class Hot:
    """The compiled hot loop of one relay worker."""

    def __init__(self, *, fd: int, core: object, routes: dict[str, Route],
                 route_for: Callable[[object], Route],
                 slow: Callable[[bytes, Addr, float], None],
                 send_failed: Callable[[Addr, float], None],
                 warn: Callable[[str, int], None], clock: Callable[[], float] | None,
                 after: Callable[[], None], member_type: type, room_type: type,
                 chat_kind: int, max_datagram: int, max_delivery: int, exit_max: int,
                 max_batch: int) -> None: ...
    def serve(self, now: float) -> tuple[int, int]:
        """(datagrams read, relayed in C)."""
    def on_readable(self) -> None:
        """The reader callback: serve(clock()), count in the core, after() if needed."""
    def counters(self) -> dict[str, int]: ...

def utf8_valid(data: bytes) -> bool: ...
