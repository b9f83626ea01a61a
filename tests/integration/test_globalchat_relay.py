"""``GlobalChatRelay`` on a real uvloop loop with real sockets on 127.0.0.1.

A fan-out larger than one turn's budget is spread over many loop turns, other callbacks
run between its chunks, and every remembered address gets exactly one copy.
"""

from __future__ import annotations

import asyncio
import socket

import uvloop

from relay.core import GlobalChat
from relay.globalchat import GlobalChatRelay
from wire.stage1 import encode_stage1

H = "127.0.0.1"
CLIENTS = 300
TIMEOUT_S = 30.0


def test_a_fan_out_is_spread_over_loop_turns_and_reaches_everyone_once() -> None:
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind((H, 0))
    dest = server.getsockname()
    clients = []
    for _ in range(CLIENTS):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((H, 0))
        s.setblocking(False)
        clients.append(s)
    chat = GlobalChat(max_clients=CLIENTS, max_per_ip=CLIENTS)

    async def run() -> tuple[int, list[int]]:
        loop = asyncio.get_running_loop()
        relay = GlobalChatRelay(server, chat, loop, sends_per_s=2_000, sends_per_turn=32)
        relay.start()
        for k, s in enumerate(clients):
            s.sendto(encode_stage1("u", ""), dest)  # remembered
            while k % 50 == 49 and len(chat.clients) <= k:  # within the receive buffer
                await asyncio.sleep(0.005)
        while len(chat.clients) < CLIENTS:
            await asyncio.sleep(0.005)
        turns = 0

        def tick() -> None:  # counts loop turns while the fan-out is in progress
            nonlocal turns
            turns += 1
            if not done.is_set():
                loop.call_soon(tick)

        done = asyncio.Event()
        got = [0] * CLIENTS
        message = encode_stage1("u", "to everyone")

        def on_readable(i: int) -> None:
            while True:
                try:
                    data = clients[i].recv(4096)
                except BlockingIOError:
                    return
                assert data == message
                got[i] += 1
                if sum(1 for n in got if n) == CLIENTS - 1:
                    done.set()

        for i, s in enumerate(clients):
            loop.add_reader(s.fileno(), on_readable, i)
        loop.call_soon(tick)
        clients[0].sendto(message, dest)
        await asyncio.wait_for(done.wait(), TIMEOUT_S)
        await asyncio.sleep(0.2)  # any duplicate would arrive now
        for s in clients:
            loop.remove_reader(s.fileno())
        return turns, got

    try:
        turns, got = uvloop.run(asyncio.wait_for(run(), TIMEOUT_S))
    finally:
        server.close()
        for s in clients:
            s.close()
    assert got[0] == 0 and got[1:] == [1] * (CLIENTS - 1)  # once each, never the sender
    # 299 sends at 32 per turn need at least 10 turns; at 2,000/s, ~0.15 s of them.
    assert turns >= (CLIENTS - 1) // 32
