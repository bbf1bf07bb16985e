#!/usr/bin/env python3
"""Leak soak: run `echo-bench soak` against a fresh echo-server and check
that the server gives back everything the churn took.

    python3 scripts/soak.py                  # 60 s
    python3 scripts/soak.py --duration 600   # a real soak
    python3 scripts/soak.py --server-args='--engine threads'
    python3 scripts/soak.py --duration 300 --churn 400 --churn-rate 4000 \
        --bulk-rate 33554432 --sources 8 --min-connections 1000000 --min-gib 10

Needs `target/release/echo-server` and `bench/target/release/echo-bench`
(`cargo build --release` in the repository and in bench/). Linux only (it
reads /proc/PID).

1. Starts `echo-server --udp 0` (not -q: the shutdown summary is an info
   line) and reads the `listening on tcp|udp ADDR` lines from its stderr.
2. Warms it up (one TCP echo, one datagram), lets it settle and records the
   baseline: open descriptors (/proc/PID/fd), threads (/proc/PID/task) and
   RSS (VmRSS in /proc/PID/status).
3. Runs `echo-bench soak --duration SECS` (churn with plain, reset,
   half-closing and vanishing clients, bulk streams, idle connections,
   datagrams; every echo verified), sampling the server's peaks meanwhile.
4. Waits (up to --settle seconds) for descriptors and threads to come back
   to the baseline exactly; RSS must be within --rss-slack-mib of it, plus
   the fixed buffer pool of each io_uring loop (64 x 64 KiB, resident once
   load has touched it: not a leak, and the same after an hour as after a
   minute).
5. Sends SIGTERM, expects exit 0, and checks the shutdown summary against
   what echo-bench did: accepted == closed + active with active == 0;
   accepted == echo-bench's TCP connections (+ the warm-up); bytes received
   == bytes sent by echo-bench (+ warm-up) == bytes echoed minus datagram
   bytes (the server's "echoed" counts UDP too, "received" only streams);
   datagrams echoed == datagrams echo-bench got answers to; no "closed
   early", "refused" or "datagrams not answered" part. With --min-connections
   or --min-gib, also that the server accepted at least that many connections
   and echoed at least that many GiB.

--churn, --churn-rate, --bulk-streams, --bulk-rate and --sources are passed
to echo-bench (see `echo-bench --help`); without them it runs its default,
moderate mix. The run ends with the figures of record: duration,
connections (and per second), GiB echoed, and the server's RSS, descriptors
and threads at baseline, peak and after.

Prints every number and PASS or FAIL; exits 0 on PASS, 1 on FAIL, 2 if it
could not run. Every step is bounded in time; the server and echo-bench are
killed (by the PIDs this script started) if they overrun.
"""

import argparse
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SERVER = os.path.join(ROOT, "target", "release", "echo-server")
BENCH = os.path.join(ROOT, "bench", "target", "release", "echo-bench")

WARM_TCP = b"soak warm-up tcp"  # 16 bytes
WARM_UDP = b"soak warm-up udp"
START_TIMEOUT = 10.0
SHUTDOWN_TIMEOUT = 15.0
# echo-bench ends by itself within --duration + 10 s; this is the backstop.
BENCH_GRACE = 60.0
# echo-bench soak options this script passes on when given (echo-bench
# validates their ranges; the script only that they are positive).
BENCH_LOAD = (
    ("churn", "churning connections open at once, at most"),
    ("churn-rate", "new churning connections a second, at most"),
    ("bulk-streams", "concurrent bulk streams"),
    ("bulk-rate", "bytes a second per bulk stream"),
    ("sources", "spread connections over N loopback source addresses 127.0.0.1.."),
)
GIB = float(1 << 30)

SUMMARY_RE = re.compile(
    r"shut down: (?P<accepted>\d+) connections accepted, (?P<closed>\d+) closed, "
    r"(?P<active>\d+) active(?: \((?P<on_threads>\d+) on threads, "
    r"(?P<on_loops>\d+) on event loops\))?; (?P<received>\d+) bytes received, "
    r"(?P<echoed>\d+) echoed(?:; (?P<datagrams>\d+) datagrams echoed)?(?P<rest>.*)$"
)


class Server:
    """The echo-server under test, with its stderr collected by a thread."""

    def __init__(self, cmd):
        self.cmd = cmd
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            errors="replace",
        )
        self.pid = self.proc.pid
        self.lines = []
        self.lock = threading.Lock()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.proc.stderr:
            with self.lock:
                self.lines.append(line.rstrip("\n"))

    def log(self):
        with self.lock:
            return list(self.lines)

    def wait_listening(self, timeout):
        """The tcp and udp addresses from the start-up lines."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = {}
            for line in self.log():
                m = re.match(r"listening on (tcp|udp) (\S+)$", line)
                if m:
                    found.setdefault(m.group(1), m.group(2))
            if "tcp" in found and "udp" in found:
                return found["tcp"], found["udp"]
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise RuntimeError(
            "echo-server did not report its tcp and udp addresses within "
            f"{timeout:.0f} s (exit {self.proc.poll()}); stderr: {self.log()}"
        )

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()  # our own child, by its PID
            self.proc.wait(timeout=10)


def split_addr(addr):
    host, _, port = addr.rpartition(":")
    return host.strip("[]"), int(port)


def sample(pid):
    """(open fds, threads, RSS in KiB) of process `pid`."""
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    threads = len(os.listdir(f"/proc/{pid}/task"))
    rss = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
    return fds, threads, rss


# The provided buffers of one io_uring loop (src/engine/uring.rs: BUFFERS x
# BUFFER_SIZE): allocated at start-up, resident once load has used them all.
URING_POOL_KIB = 64 * 64


def uring_loops(pid):
    """How many io_uring loop threads process `pid` runs."""
    count = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/comm") as f:
                count += f.read().strip() == "echo-uring"
        except OSError:
            pass
    return count


def warm_up(tcp, udp):
    """One TCP echo and one datagram, each checked."""
    host, port = split_addr(tcp)
    with socket.create_connection((host, port), timeout=5) as s:
        s.sendall(WARM_TCP)
        got = b""
        while len(got) < len(WARM_TCP):
            chunk = s.recv(len(WARM_TCP) - len(got))
            if not chunk:
                break
            got += chunk
        if got != WARM_TCP:
            raise RuntimeError(f"warm-up TCP echo wrong: {got!r}")
    host, port = split_addr(udp)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as u:
        u.settimeout(2)
        u.connect((host, port))
        for _ in range(3):  # loopback hardly loses one, but do not fail on it
            u.send(WARM_UDP)
            try:
                got = u.recv(1024)
            except socket.timeout:
                continue
            if got != WARM_UDP:
                raise RuntimeError(f"warm-up datagram echoed wrong: {got!r}")
            return 1
        raise RuntimeError("warm-up datagram never answered")


def settle(pid, want=None, timeout=10.0, step=0.1):
    """Samples until fds and threads equal `want` (or, with no `want`, stay
    the same for 5 samples in a row); returns (sample, seconds waited)."""
    start = time.monotonic()
    last, same = None, 0
    while True:
        now = sample(pid)
        waited = time.monotonic() - start
        if want is not None and now[:2] == want[:2]:
            return now, waited
        if want is None:
            same = same + 1 if last is not None and now[:2] == last[:2] else 0
            if same >= 4:
                return now, waited
        if waited >= timeout:
            return now, waited
        last = now
        time.sleep(step)


def mib(kib):
    return kib / 1024.0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=60.0, help="seconds of soak (default 60)")
    ap.add_argument("--settle", type=float, default=10.0,
                    help="seconds to wait for fds and threads to return to baseline (default 10)")
    ap.add_argument("--rss-slack-mib", type=float, default=8.0,
                    help="allowed RSS growth over the baseline, MiB (default 8)")
    ap.add_argument("--server", default=SERVER, help="echo-server binary")
    ap.add_argument("--bench", default=BENCH, help="echo-bench binary")
    ap.add_argument("--server-args", default="",
                    help="extra echo-server arguments, e.g. '--engine threads'")
    load = ap.add_argument_group("echo-bench load (passed on; default: echo-bench's own)")
    for name, what in BENCH_LOAD:
        load.add_argument(f"--{name}", type=int, metavar="N", help=what)
    ap.add_argument("--min-connections", type=int, default=0, metavar="N",
                    help="also check that the server accepted at least N connections")
    ap.add_argument("--min-gib", type=float, default=0.0, metavar="GIB",
                    help="also check that the server echoed at least GIB GiB")
    args = ap.parse_args()
    if not 0 < args.duration <= 7 * 24 * 3600:
        ap.error("--duration must be between 0 and a week")
    for name, _ in BENCH_LOAD:
        value = getattr(args, name.replace("-", "_"))
        if value is not None and value < 1:
            ap.error(f"--{name} must be at least 1")
    if args.min_connections < 0 or args.min_gib < 0:
        ap.error("--min-connections and --min-gib cannot be negative")
    for path, how in ((args.server, "cargo build --release"),
                      (args.bench, "cargo build --release --manifest-path bench/Cargo.toml")):
        if not os.access(path, os.X_OK):
            print(f"soak: {path} missing; build it with `{how}`", file=sys.stderr)
            return 2

    cmd = [args.server, "--udp", *shlex.split(args.server_args), "0"]
    server = Server(cmd)
    children = []
    try:
        return run(args, server, cmd, children)
    except (RuntimeError, OSError) as e:
        print(f"soak: FAIL: {e}")
        return 1
    finally:
        # Only the processes this script started, by their PIDs.
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait(timeout=10)
        server.kill()


def run(args, server, cmd, children):
    checks = []

    def check(ok, what):
        checks.append((bool(ok), what))

    figures = None

    tcp, udp = server.wait_listening(START_TIMEOUT)
    print(f"soak: {' '.join(cmd)} (pid {server.pid}): tcp {tcp}, udp {udp}; "
          f"echo-bench soak for {args.duration:g} s")
    warm_dgrams = warm_up(tcp, udp)
    time.sleep(0.5)
    base, waited = settle(server.pid, timeout=5.0)
    print(f"baseline:  fds {base[0]}, threads {base[1]}, RSS {mib(base[2]):.1f} MiB "
          f"(after a warm-up echo and datagram, settled {waited:.1f} s)")

    bench_cmd = [args.bench, "soak", "--addr", tcp, "--udp-addr", udp,
                 "--duration", f"{args.duration:g}", "--json"]
    for name, _ in BENCH_LOAD:
        value = getattr(args, name.replace("-", "_"))
        if value is not None:
            bench_cmd += [f"--{name}", str(value)]
    print(f"echo-bench: {' '.join(bench_cmd)}")
    started = time.monotonic()
    bench = subprocess.Popen(bench_cmd, stdin=subprocess.DEVNULL,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    children.append(bench)
    out = {"stdout": "", "stderr": ""}

    def collect():
        out["stdout"], out["stderr"] = bench.communicate()

    collector = threading.Thread(target=collect, daemon=True)
    collector.start()
    peak = list(base)
    samples = 0
    bench_deadline = started + args.duration + BENCH_GRACE
    while collector.is_alive() and time.monotonic() < bench_deadline:
        if server.proc.poll() is not None:
            break
        try:
            now = sample(server.pid)
            peak = [max(a, b) for a, b in zip(peak, now)]
            samples += 1
        except OSError:
            pass
        collector.join(timeout=1.0)
    if collector.is_alive():
        bench.kill()  # our own child, by its PID
        collector.join(timeout=10)
        raise RuntimeError(f"echo-bench did not end within {args.duration + BENCH_GRACE:.0f} s; "
                           "killed")
    if server.proc.poll() is not None:
        raise RuntimeError(f"echo-server exited during the soak (status "
                           f"{server.proc.returncode}); log: {server.log()}")
    ran = time.monotonic() - started
    print(f"during:    peak fds {peak[0]}, peak threads {peak[1]}, "
          f"peak RSS {mib(peak[2]):.1f} MiB ({samples} samples, about one a second)")

    lines = out["stdout"].strip().splitlines()
    try:
        report = json.loads(lines[-1])
    except (IndexError, ValueError):
        report = None
    for line in out["stderr"].strip().splitlines():
        print(f"echo-bench: {line}" if not line.startswith("echo-bench") else line)
    if report is None:
        check(False, f"echo-bench printed no JSON report (exit {bench.returncode}): "
                     f"{out['stdout']!r}")
        r = {}
    else:
        r = report
        print(f"echo-bench soak ({ran:.1f} s, exit {bench.returncode}):")
        print(f"  churned   {r['churned']} ({r['churned_per_sec']}/s): "
              f"{r['churn_plain']} plain, {r['churn_reset']} reset, "
              f"{r['churn_half_close']} half-close, {r['churn_vanish']} vanished")
        print(f"  bulk      {r['bulk_streams']} streams done, {r['bulk_bytes']} bytes verified")
        print(f"  idle      {r['idle_held']} of {r['idle_opened']} held to the end")
        print(f"  udp       {r['udp_sent']} sent, {r['udp_answered']} answered, "
              f"{r['udp_lost']} lost, {r['udp_late']} late, {r['udp_bytes']} bytes")
        print(f"  tcp       {r['tcp_connections']} connections, {r['bytes_sent']} bytes sent, "
              f"{r['bytes_echoed']} verified, {r['bytes_abandoned']} abandoned")
        print(f"  errors    {r['errors']}, verify errors {r['verify_errors']}")
        print(f"  load      churn {r.get('load_churn')} at once, at most "
              f"{r.get('load_churn_rate')}/s; {r.get('load_bulk_streams')} bulk streams at "
              f"{r.get('load_bulk_rate')} B/s each; sources {r.get('sources')}")
        check(bench.returncode == 0 and r["errors"] == 0 and r["verify_errors"] == 0,
              f"echo-bench: exit {bench.returncode}, {r['errors']} errors, "
              f"{r['verify_errors']} verify errors")

    after, waited = settle(server.pid, want=base, timeout=args.settle)
    grew = after[2] - base[2]
    print(f"after:     fds {after[0]}, threads {after[1]}, RSS {mib(after[2]):.1f} MiB "
          f"({'+' if grew >= 0 else ''}{mib(grew):.1f} MiB) after {waited:.1f} s")
    check(after[0] == base[0], f"fds back to baseline: {after[0]} vs {base[0]}")
    check(after[1] == base[1], f"threads back to baseline: {after[1]} vs {base[1]}")
    pools = uring_loops(server.pid) * URING_POOL_KIB
    check(grew <= args.rss_slack_mib * 1024 + pools,
          f"RSS within {args.rss_slack_mib:g} MiB of baseline (+ {mib(pools):g} MiB of "
          f"io_uring buffer pools): {mib(grew):+.1f} MiB")

    t = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    try:
        code = server.proc.wait(timeout=SHUTDOWN_TIMEOUT)
    except subprocess.TimeoutExpired:
        server.kill()
        code = None
    server.reader.join(timeout=5)
    took = time.monotonic() - t
    print(f"server:    exit {code} {took:.2f} s after SIGTERM"
          if code is not None else f"server:    still running {SHUTDOWN_TIMEOUT:.0f} s after "
                                   "SIGTERM; killed")
    check(code == 0, f"server exits 0 on SIGTERM: {code}")

    log = server.log()
    summary = next((l for l in reversed(log) if "shut down:" in l), None)
    m = SUMMARY_RE.search(summary) if summary else None
    if summary:
        print(f"summary:   {summary[summary.index('shut down:'):]}")
    if not m:
        check(False, f"shutdown summary found and parsed: {summary!r}")
    else:
        s = {k: int(v) for k, v in m.groupdict().items() if v is not None and k != "rest"}
        s.setdefault("datagrams", 0)
        rest = m.group("rest").strip("; ")
        check(s["active"] == 0 and s["accepted"] == s["closed"] + s["active"],
              f"accepted == closed + active, active == 0: {s['accepted']} == "
              f"{s['closed']} + {s['active']}")
        udp_bytes = r.get("udp_bytes", 0) + len(WARM_UDP) * warm_dgrams
        tcp_echoed = s["echoed"] - udp_bytes
        diff = s["received"] - tcp_echoed
        check(diff == 0,
              f"bytes received == bytes echoed over TCP: {s['received']} == {s['echoed']} - "
              f"{udp_bytes} datagram bytes = {tcp_echoed}"
              + ("" if diff == 0 else
                 f" (difference {diff}; echo-bench abandoned {r.get('bytes_abandoned')})"))
        if r:
            sent = r["bytes_sent"] + len(WARM_TCP)
            check(s["received"] == sent,
                  f"bytes received == bytes echo-bench sent (+ warm-up): {s['received']} == {sent}")
            conns = r["tcp_connections"] + 1
            check(s["accepted"] == conns,
                  f"connections accepted == echo-bench's (+ warm-up): {s['accepted']} == {conns}")
            dgrams = r["udp_answered"] + r["udp_late"] + warm_dgrams
            check(s["datagrams"] == dgrams,
                  f"datagrams echoed == answered at echo-bench (+ warm-up): "
                  f"{s['datagrams']} == {dgrams}")
        if args.min_connections:
            check(s["accepted"] >= args.min_connections,
                  f"at least {args.min_connections} connections accepted: {s['accepted']}")
        if args.min_gib:
            check(s["echoed"] >= args.min_gib * GIB,
                  f"at least {args.min_gib:g} GiB echoed: {s['echoed'] / GIB:.2f} GiB")
        figures = s
        unexpected = [p for p in rest.split("; ") if p and not p.startswith("the connection limit")]
        check(not unexpected, "nothing closed early, refused or unanswered"
              + (f": {'; '.join(unexpected)}" if unexpected else ""))
    others = [l for l in log if not l.startswith("listening on ") and "shut down:" not in l
              and not l.startswith("only this machine can connect")
              and not l.startswith("shutting down: finishing open connections")]
    for line in others:
        print(f"server log: {line}")
    check(not others, f"no warnings or errors in the server log ({len(others)} other lines)")

    if figures:
        f = figures
        print("figures:")
        print(f"  duration     {ran:.1f} s of echo-bench soak (--duration {args.duration:g})")
        print(f"  connections  {f['accepted']} accepted ({f['accepted'] / ran:.0f}/s)")
        print(f"  echoed       {f['echoed']} bytes ({f['echoed'] / GIB:.2f} GiB, "
              f"{f['echoed'] / GIB / ran * 1024:.1f} MiB/s; {f['datagrams']} datagrams)")
        print(f"  server RSS   {mib(base[2]):.1f} -> {mib(peak[2]):.1f} -> {mib(after[2]):.1f} MiB "
              "(baseline -> peak -> after)")
        print(f"  server fds   {base[0]} -> {peak[0]} -> {after[0]}")
        print(f"  threads      {base[1]} -> {peak[1]} -> {after[1]}")
    print("checks:")
    for ok, what in checks:
        print(f"  {'PASS' if ok else 'FAIL'}  {what}")
    failed = [w for ok, w in checks if not ok]
    print(f"soak: {'PASS' if not failed else 'FAIL'} ({len(checks) - len(failed)} of "
          f"{len(checks)} checks passed)")
    return 0 if not failed else 1


if __name__ == "__main__":
    sys.exit(main())
