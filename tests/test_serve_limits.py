"""bitfit-serve under hostile clients: a real server process, real sockets on 127.0.0.1. Half-sent requests (slow
loris) are answered 408 and closed after --request-timeout, connections beyond --max-connections get 503 at once,
and the server's file descriptors drop back while /health and /predict go on answering."""

import os
import select
import socket
import subprocess
import time
from contextlib import contextmanager

import pytest
from test_serve import fake_run, start_server

TIMEOUT_S, CAP = 2.5, 20  # --request-timeout, --max-connections of the server under test
SST2 = {"task": "sst2", "text": "a gem of a film, warm and funny"}


@contextmanager
def bitfit_serve(*args: str):
    """(url, pid) of a real bitfit-serve process on a free local port, stopped afterwards."""
    proc, url = start_server(list(args), wait_s=120)
    try:
        yield url, proc.pid
    finally:
        proc.terminate()
        try:
            output = proc.communicate(timeout=30)[0]
        except subprocess.TimeoutExpired:  # still waiting for connections to close: that is a failure too
            proc.kill()
            output = proc.communicate()[0] + "\nTraceback: bitfit-serve did not stop within 30 s of SIGTERM"
    assert "Traceback" not in output, output  # a client that was closed on is not the server's error


@pytest.fixture(scope="module")
def limited(tmp_path_factory, tiny_bert_dir, glue_dir):
    """(url, pid) of bitfit-serve serving one sst2 patch with a short --request-timeout and a small
    --max-connections."""
    run = fake_run(tmp_path_factory.mktemp("limit-runs"), tiny_bert_dir, "sst2", "bq", 1)
    with bitfit_serve(str(run), "--request-timeout", str(TIMEOUT_S), "--max-connections", str(CAP)) as served:
        yield served


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def connect(port: int, first: bytes) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    if first:
        s.sendall(first)
    return s


def read_all(s: socket.socket) -> bytes:
    """What the server sends until it closes the connection (a reset after its answer counts as the close)."""
    data = b""
    try:
        while chunk := s.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass
    return data


def healthy(url: str) -> None:
    import httpx

    assert httpx.get(f"{url}/health", timeout=10).status_code == 200
    answer = httpx.post(f"{url}/predict", json=SST2, timeout=30)
    assert answer.status_code == 200 and answer.json()["predictions"][0]["task"] == "sst2", answer.text


def wait_for_closes(socks: dict[str, socket.socket], trickle: set[str], limit_s: float) -> dict[str, tuple]:
    """name -> (time.monotonic() when the server closed it, what it sent) for each socket, waiting at most
    `limit_s`; the sockets in `trickle` send one more header byte every 0.4 s until answered (a slow loris)."""
    start, done, got, last_trickle = time.monotonic(), {}, {name: b"" for name in socks}, 0.0
    while len(done) < len(socks) and time.monotonic() - start < limit_s:
        live = {s: name for name, s in socks.items() if name not in done}
        readable, _, _ = select.select(list(live), [], [], 0.1)
        for s in readable:
            name = live[s]
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                chunk = b""
            got[name] += chunk
            if not chunk:
                done[name] = (time.monotonic(), got[name])
        if time.monotonic() - last_trickle > 0.4:
            last_trickle = time.monotonic()
            for name in trickle - set(done) - {live[s] for s in readable}:
                try:
                    socks[name].sendall(b"x")
                except OSError:
                    pass
    return done


def refused_answer(port: int) -> bytes:
    """What a new connection that asks for /health gets, read until the server closes it."""
    with connect(port, b"GET /health HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n") as s:
        return read_all(s)


def test_slow_clients_are_timed_out_and_excess_connections_refused(limited):
    import httpx

    url, pid = limited
    port = int(url.rsplit(":", 1)[1])
    healthy(url)  # warm: what a first request opens stays open
    base = open_fds(pid)
    head = b"POST /predict HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
    half_body = head + b"content-length: 100\r\n\r\n" + b'{"task": "sst2", "text": "' + b"x" * 24
    kinds = {"half-body": half_body, "half-headers": head[:30], "trickle": head[:30], "nothing": b""}
    socks, opened = {}, {}
    for i in range(4):  # 16 connections, below the cap
        for kind, first in kinds.items():
            socks[f"{kind}-{i}"], opened[f"{kind}-{i}"] = connect(port, first), time.monotonic()

    healthy(url)  # meanwhile: honest requests are served
    for i in range(4, 8):  # the cap is reached
        socks[f"half-body-{i}"], opened[f"half-body-{i}"] = connect(port, half_body), time.monotonic()
    time.sleep(0.2)
    refused = [refused_answer(port) for _ in range(30)]
    assert all(r.startswith(b"HTTP/1.1 503 ") for r in refused), {r[:40] for r in refused}
    assert refused[0].endswith(b'{"error": "the server has 20 connections open (--max-connections); retry later"}')
    busy = httpx.get(f"{url}/health", timeout=10)
    assert busy.status_code == 503 and "--max-connections" in busy.json()["error"]
    time.sleep(0.2)
    assert open_fds(pid) <= base + CAP + 3  # the refused ones hold no file descriptor

    closes = wait_for_closes(socks, {n for n in socks if n.startswith("trickle")}, TIMEOUT_S + 5)
    assert set(closes) == set(socks), f"never closed: {set(socks) - set(closes)}"
    for name, (closed, sent) in closes.items():
        # closed by the deadline: not sooner, and not later for trickling
        assert TIMEOUT_S - 0.1 < closed - opened[name] < TIMEOUT_S + 2, (name, closed - opened[name])
        if name.startswith("nothing"):
            assert sent == b"", (name, sent)  # nothing came: closed without an answer
        elif not name.startswith("trickle") or sent:  # a trickled byte may race the close into a reset
            assert sent.startswith(b"HTTP/1.1 408 "), (name, sent)
            assert sent.endswith(b'{"error": "the request did not arrive within 2.5 s (--request-timeout)"}'), sent
    for s in socks.values():
        s.close()

    time.sleep(0.3)
    assert open_fds(pid) <= base + 1
    healthy(url)


def test_an_idle_keep_alive_connection_is_closed(limited):
    url, _ = limited
    start = time.monotonic()
    with connect(int(url.rsplit(":", 1)[1]), b"GET /health HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n") as s:
        s.settimeout(TIMEOUT_S + 5)
        answer = read_all(s)  # the answer, then the close
    assert answer.startswith(b"HTTP/1.1 200 ") and answer.count(b"HTTP/1.1") == 1, answer
    assert time.monotonic() - start < TIMEOUT_S + 1  # min(5 s, --request-timeout), not uvicorn's 5 s


@pytest.mark.parametrize("flag, value, reason", [
    ("--request-timeout", "0", "--request-timeout=0; give a positive number of seconds"),
    ("--request-timeout", "nan", "--request-timeout=nan; give a positive number of seconds"),
    ("--max-connections", "-3", "--max-connections=-3; give a positive number"),
    ("--max-body-mb", "nan", "--max-body-mb=nan; give a positive size"),
    ("--max-items", "0", "--max-items=0; give a positive number"),
    ("--window-ms", "-1", "--window-ms=-1; give 0 (no waiting) or a positive number of milliseconds"),
    ("--window-ms", "nan", "--window-ms=nan; give 0 (no waiting) or a positive number of milliseconds"),
    ("--max-chars", "-5", "--max-chars=-5; give 0 (no limit) or a positive count"),
    ("--port", "70000", "--port=70000; give a port number from 0 to 65535")])
def test_limit_flags_must_be_positive(flag, value, reason, tmp_path, capsys):
    from bitfit_exp.commands.serve import main

    assert main([str(tmp_path / "no-such-run"), flag, value]) == 2  # refused before the patches are looked at
    assert capsys.readouterr().err == f"error: {reason}\n"
