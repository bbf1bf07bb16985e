#!/usr/bin/env python3
"""The server's resident memory (VmRSS in /proc/PID/status, Linux) idle,
holding N idle connections, after some UDP and bulk traffic, and once they
are closed: the figures behind the Kubernetes requests and limits (README,
Containers and Kubernetes).

    cargo build --release && python3 scripts/rss.py [--connections 1000]

Everything is on 127.0.0.1; every socket has a timeout. Kernel socket memory
is not in VmRSS (a pod's memory counts it too; the README says how much).
"""

import argparse
import re
import socket
import subprocess
import time


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--binary", default="target/release/echo-server")
    ap.add_argument("--connections", type=int, default=1000)
    args = ap.parse_args()
    server = subprocess.Popen(
        [args.binary, "--bind", "127.0.0.1", "--udp", "--metrics", "127.0.0.1:0", "0"],
        stderr=subprocess.PIPE, text=True)
    try:
        port = None
        for line in server.stderr:
            m = re.match(r"listening on tcp 127\.0\.0\.1:(\d+)", line)
            if m:
                port = int(m.group(1))
            if line.startswith("metrics on"):
                break
        if port is None:
            raise SystemExit("the server did not start")

        def report(state):
            status = open(f"/proc/{server.pid}/status").read()
            field = lambda k: int(re.search(k + r":\s+(\d+)", status).group(1))
            print(f"{state}: VmRSS {field('VmRSS')} KiB, VmHWM {field('VmHWM')} KiB, "
                  f"threads {field('Threads')}")

        time.sleep(1)
        report("idle")
        conns = []
        for _ in range(args.connections):
            c = socket.create_connection(("127.0.0.1", port), timeout=10)
            c.sendall(b"x")
            assert c.recv(1) == b"x"
            conns.append(c)
        time.sleep(1)
        report(f"{args.connections} idle connections")
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.settimeout(5)
        for _ in range(50):
            udp.sendto(b"y" * 60000, ("127.0.0.1", port))
            udp.recv(65536)
        chunk = b"z" * (1 << 20)
        for c in conns[:8]:
            for _ in range(4):
                c.sendall(chunk)
                got = 0
                while got < len(chunk):
                    n = len(c.recv(1 << 20))
                    if n == 0:
                        raise SystemExit("closed mid-echo")
                    got += n
        time.sleep(0.5)
        report("after 50 UDP datagrams of 60 KB and 8 connections echoing 4 MiB each")
        for c in conns:
            c.close()
        time.sleep(1)
        report("all closed")
    finally:
        server.terminate()
        server.wait(timeout=10)


if __name__ == "__main__":
    main()
