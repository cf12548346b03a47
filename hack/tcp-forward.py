#!/usr/bin/env python3
"""tcp-forward.py LISTEN_HOST:PORT TARGET_HOST:PORT — a plain TCP relay (bytes only, TLS passes through).

hack/local-node.sh runs it as 10.88.0.1:16443 -> 127.0.0.1:16443 so pods on the real node reach the
kube-apiserver (which listens on loopback only) without kube-proxy, iptables rules or sysctl changes.
"""
import asyncio
import sys


def split(addr):
    host, _, port = addr.rpartition(":")
    return host, int(port)


async def pipe(reader, writer):
    """Copies one direction; passes a half-close on (the other direction keeps flowing)."""
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError):
        pass


async def main(listen, target):
    async def handle(client_r, client_w):
        try:
            up_r, up_w = await asyncio.open_connection(*target)
        except OSError as err:
            print(f"connect {target}: {err}", file=sys.stderr, flush=True)
            client_w.close()
            return
        await asyncio.gather(pipe(client_r, up_w), pipe(up_r, client_w))
        for w in (up_w, client_w):
            w.close()

    server = await asyncio.start_server(handle, *listen, reuse_address=True)
    print(f"forwarding {listen[0]}:{listen[1]} -> {target[0]}:{target[1]}", file=sys.stderr, flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    asyncio.run(main(split(sys.argv[1]), split(sys.argv[2])))
