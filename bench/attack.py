"""Re-runs the attack recipes of issue 9 against a running gateway, to measure what a hostile
client does to well-behaved ones (BENCHMARKS.md, "Attacks"). Loopback only; every mode is bounded
in sockets and time and stops by itself. The end-to-end tests in tests/attacks/ check the same
behaviour at CI size; this is the full-size version.

    python3 bench/attack.py stalled-bodies PORT STAT_PORT   # 1,024 push bodies stalled after 1 byte
    python3 bench/attack.py trickle PORT STAT_PORT N         # N padded upgrade heads, 1 byte/s, 40 s
    python3 bench/attack.py flood PORT STAT_PORT N           # N concurrent WebSocket set-ups

Run the gateway under the open-file limit the recipe names, e.g.
`bash -c 'ulimit -n 256; exec target/release/ws-gateway --listen 127.0.0.1:5100 --stat-listen
127.0.0.1:6100'`, and this script with a limit above N (`ulimit -n 20000`).
"""
import json
import socket
import sys
import threading
import time
import urllib.request

ADDR = ("127.0.0.1", int(sys.argv[2]))
STAT = ("127.0.0.1", int(sys.argv[3]))
MODE = sys.argv[1]


def push(text="x", timeout=10):
    t = time.time()
    req = urllib.request.Request(f"http://{ADDR[0]}:{ADDR[1]}/push",
                                 data=json.dumps({"app": "a", "text": text}).encode(), method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, time.time() - t
    except urllib.error.HTTPError as e:
        return e.code, time.time() - t
    except Exception as e:
        return type(e).__name__, time.time() - t


def stat(timeout=10):
    t = time.time()
    try:
        with urllib.request.urlopen(f"http://{STAT[0]}:{STAT[1]}/stat", timeout=timeout) as r:
            r.read()
            return r.status, time.time() - t
    except Exception as e:
        return type(e).__name__, time.time() - t


UPGRADE = (b"GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
           b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")


def frame(text):
    payload = text.encode()
    mask = b"\x01\x02\x03\x04"
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes([0x81, 0x80 | len(payload)]) + mask + masked


def connect_client(timeout=10):
    """Upgrade + anonymous auth; returns ('hello', seconds) or the failure."""
    t = time.time()
    try:
        s = socket.create_connection(ADDR, timeout=timeout)
        s.settimeout(max(0.1, timeout - (time.time() - t)))
        s.sendall(UPGRADE + frame('{"member_id":-1,"token":""}'))
        data = b""
        while b"hello stranger" not in data:
            chunk = s.recv(4096)
            if not chunk:
                return ("closed:" + data[:12].decode(errors="replace"), time.time() - t, None)
            data += chunk
        return ("hello", time.time() - t, s)
    except socket.timeout:
        return ("timeout", time.time() - t, None)
    except Exception as e:
        return (type(e).__name__, time.time() - t, None)


if MODE == "stalled-bodies":
    socks = [socket.create_connection(ADDR) for _ in range(1024)]
    for c in socks:
        c.sendall(b"POST /push HTTP/1.1\r\nHost: x\r\nContent-Length: 65536\r\n\r\n{")
    t0 = time.time()
    for at in (0.5, 5, 30):
        time.sleep(max(0, t0 + at - time.time()))
        results = [push() for _ in range(10)]
        print(f"t={at}s pushes:", sorted({str(r[0]) for r in results}), "max %.1f ms" % (1000 * max(r[1] for r in results)))
    answers = {}
    deadline = time.time() + 15  # against a gateway that never answers them
    for c in socks:
        c.settimeout(max(0.01, deadline - time.time()))
        try:
            a = c.recv(64).split(b"\r\n")[0].decode()
        except Exception as e:
            a = type(e).__name__
        answers[a] = answers.get(a, 0) + 1
    print("the stalled senders got:", answers)
elif MODE == "trickle":
    n = int(sys.argv[4])
    pad = b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nX-Pad: " + b"a" * 4000
    socks = []
    for _ in range(n):
        try:
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex(ADDR)
            socks.append(s)
        except OSError as e:
            print("client side:", e); break
    print("trickling sockets:", len(socks))
    stop = time.time() + 40
    pos = 0
    results = []

    def legit():
        while time.time() < stop - 5:
            results.append(connect_client(10)[:2])
            time.sleep(1)
    th = threading.Thread(target=legit); th.start()
    while time.time() < stop:
        for s in socks:
            try:
                s.send(pad[pos:pos + 1])
            except OSError:
                pass
        pos = (pos + 1) % len(pad)
        time.sleep(1)
    th.join()
    ok = [r for r in results if r[0] == "hello"]
    print("legit connect times (ms, in order):", [round(1000 * r[1]) for r in results])
    print(f"legit connects: {len(ok)}/{len(results)} ok; slowest ok %.0f ms; failures: %s" % (
        1000 * max((r[1] for r in ok), default=0), sorted({r[0] for r in results if r[0] != 'hello'})))
elif MODE == "flood":
    n = int(sys.argv[4])
    out = [None] * n

    def one(i):
        out[i] = connect_client(10)
    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    t = time.time()
    for th in threads:
        th.start()
    time.sleep(1)
    print("during: push", push()[0], "stat", stat()[0])
    for th in threads:
        th.join()
    kinds = {}
    for r in out:
        k = r[0] if not r[0].startswith("closed:") else r[0]
        kinds[k] = kinds.get(k, 0) + 1
    print(f"{n} connects in %.1f s:" % (time.time() - t), kinds,
          "slowest answer %.0f ms" % (1000 * max(r[1] for r in out)))
    held = [r[2] for r in out if r[2]]
    for s in held:
        s.close()
    time.sleep(2)
    print("after: push", push()[0], "stat", stat()[0], "new client", connect_client(10)[0])
