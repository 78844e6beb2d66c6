#!/usr/bin/python3
"""WebSocket ends for idemproxy's Upgrade tests (Debian's python3-websockets).

  ws_echo.py server               an echo server on a free loopback port; says
                                  "listening http=127.0.0.1:PORT admin=off"
                                  (the harness waits for it); exits 0 on SIGTERM
  ws_echo.py server CERT KEY CA   the same over TLS, requiring a client
                                  certificate from CA (mTLS)
  ws_echo.py echo URL N [CA]      N messages of growing sizes, each echoed back
  ws_echo.py idle URL MIN MAX [CA]  one echo, then silence: the proxy must close
                                  the connection after MIN to MAX seconds
Exit status 0 when all went as said, 1 otherwise (why on stderr). No pings:
they would keep an idle tunnel busy.
"""
import asyncio
import signal
import ssl
import sys
import time

import websockets


async def echo(ws, path=None):
    try:
        async for message in ws:
            await ws.send(message)
    except websockets.ConnectionClosed:
        pass


async def server(cert=None, key=None, ca=None):
    ctx = None
    if cert:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
        ctx.load_verify_locations(ca)
        ctx.verify_mode = ssl.CERT_REQUIRED
    stop = asyncio.get_running_loop().create_future()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set_result, None)
    async with websockets.serve(echo, "127.0.0.1", 0, ping_interval=None,
                                max_size=None, ssl=ctx) as srv:
        port = srv.sockets[0].getsockname()[1]
        print(f"listening http=127.0.0.1:{port} admin=off", flush=True)
        await stop
    return 0


def connect(url, ca):
    ctx = None
    if ca:
        ctx = ssl.create_default_context(cafile=ca)
    return websockets.connect(url, ssl=ctx, ping_interval=None, max_size=None,
                              open_timeout=10, close_timeout=2)


async def echo_client(url, n, ca=None):
    async with connect(url, ca) as ws:
        for i in range(n):
            msg = f"message {i} " + "x" * (i * i * 1000)
            await ws.send(msg)
            got = await asyncio.wait_for(ws.recv(), 10)
            if got != msg:
                print(f"message {i}: echo differs ({len(got)} of {len(msg)} bytes)",
                      file=sys.stderr)
                return 1
        big = "y" * (2 << 20)  # past the proxy's buffers: backpressure
        await ws.send(big)
        if await asyncio.wait_for(ws.recv(), 20) != big:
            print("2 MiB message: echo differs", file=sys.stderr)
            return 1
        await ws.send(b"\x00\x01binary\xff")
        if await asyncio.wait_for(ws.recv(), 10) != b"\x00\x01binary\xff":
            print("binary message: echo differs", file=sys.stderr)
            return 1
    return 0


async def idle_client(url, low, high, ca=None):
    async with connect(url, ca) as ws:
        await ws.send("ping")
        if await asyncio.wait_for(ws.recv(), 10) != "ping":
            print("no echo", file=sys.stderr)
            return 1
        start = time.monotonic()
        try:
            await asyncio.wait_for(ws.recv(), high + 5)
            print("a message came instead of the close", file=sys.stderr)
            return 1
        except websockets.ConnectionClosed:
            pass
        except asyncio.TimeoutError:
            print("the tunnel stayed open", file=sys.stderr)
            return 1
        took = time.monotonic() - start
        if not low <= took <= high:
            print(f"closed after {took:.2f} s, not in {low}..{high}", file=sys.stderr)
            return 1
    return 0


def main(argv):
    if argv[1:2] == ["server"] and len(argv) in (2, 5):
        return asyncio.run(server(*argv[2:]))
    if argv[1:2] == ["echo"] and len(argv) in (4, 5):
        return asyncio.run(echo_client(argv[2], int(argv[3]), *argv[4:]))
    if argv[1:2] == ["idle"] and len(argv) in (5, 6):
        return asyncio.run(idle_client(argv[2], float(argv[3]), float(argv[4]),
                                       *argv[5:]))
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
