"""``bench.proxy``: connections classified by their first bytes, sentinels' and replicas'
black-holed by a partition while clients' flow, and given what was held on the heal."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest

from bench.proxy import CLIENT, REPLICA, SENTINEL, PartitionProxy, classify

SETNAME = b"*3\r\n$6\r\nCLIENT\r\n$7\r\nSETNAME\r\n$21\r\nsentinel-0123abcd-cmd\r\n"
HANDSHAKE = b"*1\r\n$4\r\nPING\r\n*3\r\n$8\r\nREPLCONF\r\n$14\r\nlistening-port\r\n$4\r\n6380\r\n"


def test_classify_by_the_first_command() -> None:
    assert classify(SETNAME) == SENTINEL
    assert classify(HANDSHAKE) == REPLICA
    assert classify(b"*2\r\n$5\r\nPSYNC\r\n") == REPLICA
    assert classify(b"*1\r\n$4\r\nPING\r\n") == CLIENT
    # A value that reads like a command name is not one.
    assert classify(b"*3\r\n$3\r\nSET\r\n$4\r\nsync\r\n$4\r\nSYNC\r\n") == CLIENT


@pytest.fixture
def echo() -> Iterator[int]:
    """A server on 127.0.0.1 that echoes every connection's bytes back."""
    server = socket.create_server(("127.0.0.1", 0))

    def serve(conn: socket.socket) -> None:
        with conn:
            while data := conn.recv(65536):
                conn.sendall(data)

    def accept() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    yield server.getsockname()[1]
    server.close()


def _connect(port: int, first: bytes) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=2)
    sock.sendall(first)
    assert _read(sock, len(first)) == first
    return sock


def _read(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            break
        data += chunk
    return data


def test_a_partition_cuts_sentinels_and_replicas_only(echo: int) -> None:
    proxy = PartitionProxy(echo)
    try:
        client = _connect(proxy.port, b"*1\r\n$4\r\nPING\r\n")
        sentinel = _connect(proxy.port, SETNAME)
        proxy.partition()
        client.sendall(b"*1\r\n$4\r\nPING\r\n")
        assert _read(client, 14) == b"*1\r\n$4\r\nPING\r\n"  # clients still reach it
        sentinel.sendall(b"*1\r\n$4\r\nPING\r\n")
        replica = socket.create_connection(("127.0.0.1", proxy.port), timeout=2)
        replica.sendall(HANDSHAKE[14:])  # a new replica link: cut from its REPLCONF on
        for cut in (sentinel, replica):
            cut.settimeout(0.3)
            with pytest.raises(TimeoutError):
                cut.recv(1)
            cut.settimeout(2)
        assert proxy.open_links() == {CLIENT: 1, SENTINEL: 1, REPLICA: 1}
        assert proxy.client_bytes_while_cut == 14
        proxy.heal()
        assert _read(sentinel, 14) == b"*1\r\n$4\r\nPING\r\n"  # what was held, delivered
        assert _read(replica, len(HANDSHAKE) - 14) == HANDSHAKE[14:]
        for sock in (client, sentinel, replica):
            sock.close()
    finally:
        proxy.stop()
