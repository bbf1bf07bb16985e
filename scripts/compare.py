#!/usr/bin/env python3
"""Side-by-side benchmark: echo-server against the peer servers.

Builds everything (the peers from their sources in bench/peers, with
bench/peers/build.sh, into bench-out/peers; a peer whose toolchain is
missing is left out with a note), then runs every scenario against each
server in turn (fresh process per run; servers interleaved, their order
reversed every round; rounds outermost so slow drift of a shared machine
hits every scenario alike), drives it with `echo-bench`, and takes medians
over the rounds. Prints the ratio of each of our rows to each peer, writes
bench-out/results.md and, with --update-readme, the same text between the
bench markers in README.md (and the chart to docs/comparison.svg, which the
README shows); bench-out/results.json keeps every run (plain
JSON), and bench-out/chart.svg draws each of our rows' throughput divided
by the best peer's, per workload (--chart-from redraws it from a
results.json without running anything). Only 127.0.0.0/8 is used; every
run is bounded in time (echo-bench ends by itself; this script kills what
overstays).

Our server is a row per engine (`ours-threads`, `ours-events`,
`ours-uring` where the binary has it, `ours-auto`, run with `--engine ENGINE`), or a single `ours` row when
`echo-server --help` does not mention `--engine`. In the UDP scenarios
(the engine does not matter there) it is one row, `ours`
(`echo-server -q --udp --udp-rate 0 --udp-total-rate 0 PORT`), plus
`ours-ratelimited` (both rate limits on, with budgets above the offered load) in udp64; UDP peers are `tokio`
(`tokio-echo --udp PORT`) and `socat` (`UDP-RECVFROM:PORT,fork PIPE`: a
process per datagram; `UDP-LISTEN:PORT PIPE` in udp1, one socket, where it
echoes each datagram whole), and the UDP results get tables of their own.

    python3 scripts/compare.py                       # full comparison, 3 rounds (~15 min)
    python3 scripts/compare.py --rounds 1 --quick --only ours,tokio   # smoke (~1-2 min)
    python3 scripts/compare.py --scenarios hold,holdmax --only ours-threads,epoll-c
    python3 scripts/compare.py --ours-args "--thread-connections 8" --scenarios pp100
    python3 scripts/compare.py --scenarios udp1,udp64,udp16k --only ours,tokio
    python3 scripts/compare.py --chart-from bench-out/results.json   # redraw the chart only

Scenarios (numbers or names for --scenarios):
  1 pp1       pingpong, 1 connection, 64 B: round trips/s and p99
  2 pp100     pingpong, 100 connections, 64 B: round trips/s, p99, server CPU per round trip
  3 pp1000    pingpong, 1000 connections, 512 B: round trips/s, p99 (and server CPU)
  4 bulk1     bulk, 1 connection: MiB/s
  5 bulk50    bulk, 50 connections: MiB/s
  6 connrate  connect/echo/close, 50 parallel: connections/s
  7 hold      10,000 idle connections: system memory per connection, server RSS per connection
  8 holdmax   19,000 connections (the descriptor limit is ~20,000), over 4 source
              addresses: all held and echoing, memory per connection
  9 udp1      UDP, 1 socket, 64 B, 1 in flight (ping-pong): answered/s, p99
 10 udp64     UDP, 64 sockets, 64 B, 4 in flight each: answered/s, server CPU per
              datagram, and what the rate limiter costs (ours-ratelimited)
 11 udp16k    UDP, 8 sockets, 16,000 B, 2 in flight each: answered/s
 12 tlsconn   TLS: connect, full handshake, echo 16 B, close, 50 parallel:
              handshakes/s, server CPU per handshake
 13 tlspp100  TLS: pingpong, 100 connections, 64 B: round trips/s, p99, server CPU
              per round trip

TLS runs use a certificate made for the run (ECDSA P-256, signed by a CA of
its own, both with `openssl`, in bench-out/tls) and a client that verifies
it and never resumes a session, so every connection is a full TLS 1.3
handshake. Our rows are `ours-threads`, `ours-events` and `ours-auto` with
`--tls PORT --tls-cert --tls-key` (TLS connections never go to io_uring);
the peers are `tokio-rustls` (`tokio-echo --tls`: tokio-rustls on the same
rustls and ring provider, so the two differ in the server around TLS, not
in the crypto) and `socat-openssl` (`OPENSSL-LISTEN:PORT,fork PIPE`:
OpenSSL, a process per connection).

UDP runs count lost datagrams (not answered within 200 ms; the client
replaces them and goes on) and bad replies (corrupted, duplicated, wrong
size, for another socket: the run fails); both are shown as the worst
round, and "server drops" are the datagrams the kernel dropped because the
server's socket receive buffer was full (the `drops` column of
/proc/net/udp for the server's port, read when the client is done).

Server CPU is utime+stime from /proc/PID/stat (all threads, plus reaped and
live children, for socat), read just before and just after the client ran.

Memory (hold, holdmax) is counted system-wide, so kernel socket memory,
kernel stacks, page tables and pages no counter names are included, not
just RSS. "Free" is MemFree plus the pages on the per-CPU free lists
(/proc/zoneinfo `count:`, tens of MiB that MemFree and MemAvailable leave
out) plus the page cache (which other processes' file I/O moves; no server
adds to it). It is sampled every 0.1 s until it stops moving (8 samples
within 1 MiB), once before the client starts (server idle) and once while
every connection is open and idle (the client says so on stderr and waits
for a line on stdin before its final echo); the drop is divided by the
connections open. The private memory (RssAnon + page tables) of every
process but the server is counted as free, so neither the client's own
memory nor what other processes on a shared machine allocate or free
meanwhile is charged to the server. The client's end of each loopback
connection (a kernel socket) is included; it is the same for every server.
"""

import argparse
import json
import math
import os
import platform
import resource
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench-out"
# The chart the README shows, committed; written with --update-readme.
README_CHART = ROOT / "docs" / "comparison.svg"
PEER_SRC = ROOT / "bench/peers"  # the peers' sources and their build.sh
PEERS = OUT / "peers"            # where build.sh puts the binaries
PEERS_STAMP = PEERS / ".built"   # written after a build.sh run that compiled everything it could
OURS_BIN = ROOT / "target/release/echo-server"
BENCH_BIN = ROOT / "bench/target/release/echo-bench"
ENGINES = ["threads", "events", "uring", "auto"]
PEER_NAMES = ["tokio", "epoll-c", "uring-c", "go-echo", "seed-c", "socat"]
CLK_TCK = os.sysconf("SC_CLK_TCK")


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def sh(cmd, **kw):
    log("+", " ".join(map(str, cmd)))
    return subprocess.run(cmd, **kw).returncode == 0


def nice(cmd):
    return ["nice", "-n", "10", *cmd] if shutil.which("nice") else cmd


def build(args):
    if args.no_build:
        return
    if not sh(nice(["cargo", "build", "--release", "--locked", "--quiet"]), cwd=ROOT):
        if OURS_BIN.exists():
            log("WARNING: building echo-server failed; using the existing target/release/echo-server")
        else:
            log("WARNING: building echo-server failed and there is no binary; our rows are skipped")
    if not sh(nice(["cargo", "build", "--release", "--locked", "--quiet",
                    "--manifest-path", str(ROOT / "bench/Cargo.toml")])):
        sys.exit("cannot build echo-bench")
    if args.rebuild_peers or peers_stale():
        # build.sh skips a peer whose toolchain is missing (one line, exit 0)
        # and exits 1 only when a peer fails to compile: then the stamp is not
        # written, so the next run tries again; peers that did build are used.
        if sh(nice(["sh", str(PEER_SRC / "build.sh"), str(PEERS)])):
            PEERS_STAMP.touch()
        else:
            log("WARNING: bench/peers/build.sh failed for some peer; the peers it built are used")
    if shutil.which("socat") is None:
        # Debian's package; left out of the table if it cannot be installed.
        subprocess.run(["apt-get", "install", "-y", "-qq", "socat"], capture_output=True)
        if shutil.which("socat") is None:
            subprocess.run(["apt-get", "update", "-qq"], capture_output=True)
            subprocess.run(["apt-get", "install", "-y", "-qq", "socat"], capture_output=True)


def peers_stale():
    """Whether the peers need (re)building: never built, or a source in
    bench/peers changed since. A peer skipped for a missing toolchain does
    not count: --rebuild-peers retries it (after installing the toolchain)."""
    if not PEERS_STAMP.exists():
        return True
    built = PEERS_STAMP.stat().st_mtime
    return any(f.stat().st_mtime > built for f in PEER_SRC.rglob("*")
               if f.is_file() and "target" not in f.relative_to(PEER_SRC).parts)


def missing_peer(name, binary):
    """The one line for a peer that is left out because its binary is missing."""
    hint = (" (bench/peers/build.sh skipped or failed it; install its toolchain and pass --rebuild-peers)"
            if Path(binary).parent == PEERS else "")
    log(f"note: {name} not found ({binary}); left out{hint}")


def present(peers):
    """The peers (name -> function (port, bulk) -> command line) whose
    binary exists; each missing one is left out with a note."""
    found = {}
    for name, cmd in peers.items():
        if shutil.which(cmd(0, False)[0]):
            found[name] = cmd
        else:
            missing_peer(name, cmd(0, False)[0])
    return found


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def our_rows(extra):
    """Our rows: one per engine if the binary knows --engine, else one."""
    if not OURS_BIN.exists():
        return {}
    try:
        help_text = subprocess.run([str(OURS_BIN), "--help"], capture_output=True, text=True,
                                   timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        help_text = ""
    base = [str(OURS_BIN), "-q", "--max-connections", "20000"]
    if "--engine" not in help_text:
        log("note: echo-server --help does not mention --engine; one `ours` row without it")
        return {"ours": lambda p, _b: [*base, *extra, str(p)]}
    # `uring` only where the binary has it (Linux, feature `uring`).
    engines = [e for e in ENGINES if e != "uring" or "uring" in help_text]
    return {f"ours-{e}": (lambda e: lambda p, _b: [*base, "--engine", e, *extra, str(p)])(e)
            for e in engines}


def server_table(args):
    """name -> function (port, bulk) -> command line."""
    t = dict(our_rows(shlex.split(args.ours_args)))
    threads = ["--threads", str(args.peer_threads)] if args.peer_threads > 1 else []
    peers = {
        "tokio": lambda p, bulk: [str(PEERS / "tokio-echo"), "--buf", "65536" if bulk else "4096", str(p)],
        "epoll-c": lambda p, _b: [str(PEERS / "epoll-c"), *threads, str(p)],
        "uring-c": lambda p, _b: [str(PEERS / "uring-c"), *threads, str(p)],
        "go-echo": lambda p, _b: [str(PEERS / "go-echo"), str(p)],
        "seed-c": lambda p, _b: [str(PEERS / "seed-c"), str(p)],
        "socat": lambda p, _b: ["socat", f"TCP-LISTEN:{p},bind=127.0.0.1,fork,reuseaddr,backlog=1024", "PIPE"],
    }
    return t | present(peers)


TLS_DIR = OUT / "tls"


def tls_material():
    """The run's CA, certificate and key (made once, with openssl: a CA of
    its own signs an ECDSA P-256 server certificate for localhost and
    127.0.0.1), as a dict of paths, or None (with a note) if openssl is
    missing and cannot be installed: the TLS scenarios are then left out."""
    files = {k: TLS_DIR / f"{k}.pem" for k in ("ca", "cert", "key")}
    if all(f.exists() for f in files.values()):
        return files
    if shutil.which("openssl") is None:
        subprocess.run(["apt-get", "install", "-y", "-qq", "openssl"], capture_output=True)
    if shutil.which("openssl") is None:
        log("note: openssl not found; the TLS scenarios are left out")
        return None
    TLS_DIR.mkdir(parents=True, exist_ok=True)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    ext = TLS_DIR / "server.ext"
    ext.write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n"
                   "extendedKeyUsage=serverAuth\n")
    steps = [
        ["openssl", "req", "-x509", *ec, "-keyout", TLS_DIR / "ca.key", "-out", files["ca"],
         "-days", "30", "-subj", "/CN=echo-bench CA"],
        ["openssl", "req", *ec, "-keyout", files["key"], "-out", TLS_DIR / "server.csr",
         "-subj", "/CN=localhost"],
        ["openssl", "x509", "-req", "-in", TLS_DIR / "server.csr", "-CA", files["ca"],
         "-CAkey", TLS_DIR / "ca.key", "-CAcreateserial", "-out", files["cert"], "-days", "30",
         "-extfile", ext],
    ]
    for cmd in steps:
        if subprocess.run([str(c) for c in cmd], capture_output=True).returncode != 0:
            log(f"note: {' '.join(map(str, cmd[:3]))} failed; the TLS scenarios are left out")
            for f in files.values():
                f.unlink(missing_ok=True)
            return None
    return files


def tls_table(args, tls):
    """name -> function (port, bulk) -> command line, for TLS scenarios."""
    if tls is None:
        return {}
    cert, key = str(tls["cert"]), str(tls["key"])
    t = {}
    for name, cmd in our_rows(shlex.split(args.ours_args)).items():
        if name == "ours-uring":
            continue  # TLS connections are never put on io_uring
        # Our rows end in the plain port: serve TLS on it instead.
        t[name] = (lambda cmd: lambda p, b: [*cmd(p, b)[:-1], "--tls", str(p), "--tls-cert", cert,
                                             "--tls-key", key])(cmd)
    peers = {
        "tokio-rustls": lambda p, _b: [str(PEERS / "tokio-echo"), "--tls", cert, key, str(p)],
        "socat-openssl": lambda p, _b: [
            "socat", "-lf", "/dev/null",
            f"OPENSSL-LISTEN:{p},bind=127.0.0.1,cert={cert},key={key},verify=0,fork,reuseaddr,backlog=1024",
            "PIPE"],
    }
    return t | present(peers)


def is_ours(name):
    return name == "ours" or name.startswith("ours-")


def udp_table(args):
    """name -> function (port, scenario) -> command line, for UDP scenarios."""
    extra = shlex.split(args.ours_args)
    t = {}
    if OURS_BIN.exists():
        base = [str(OURS_BIN), "-q", "--udp"]
        t["ours"] = lambda p, _sc: [*base, "--udp-rate", "0", "--udp-total-rate", "0", *extra,
                                    str(p)]
        # The limiter on, with a budget above what one loopback source offers
        # here, so every datagram goes through it and is answered: what the
        # limiter itself costs. (The default 1 MiB/s lets one source have
        # about 8k small datagrams/s, by design.)
        t["ours-ratelimited"] = lambda p, _sc: [*base, "--udp-rate", "1G", "--udp-burst", "1G",
                                                "--udp-total-rate", "1G",
                                                "--udp-total-burst", "1G", *extra, str(p)]

    def socat(p, sc):
        # UDP-LISTEN serves one peer from one process: right for a single
        # socket with one datagram in flight (PIPE could merge two queued
        # datagrams into one reply otherwise); UDP-RECVFROM,fork answers each
        # datagram from a process of its own, whole, for any number of peers.
        if sc["sockets"] == 1 and sc["inflight"] == 1:
            addr = f"UDP-LISTEN:{p},bind=127.0.0.1,reuseaddr"
        else:
            addr = f"UDP-RECVFROM:{p},bind=127.0.0.1,fork"
        return ["socat", "-b", "65536", addr, "PIPE"]

    peers = {
        "tokio": lambda p, _sc: [str(PEERS / "tokio-echo"), "--udp", str(p)],
        "socat": socat,
    }
    for name, cmd in peers.items():
        binary = cmd(0, {"sockets": 1, "inflight": 1})[0]
        if shutil.which(binary):
            t[name] = cmd
        else:
            missing_peer(f"{name} (UDP)", binary)
    return t


# ---------------------------------------------------------------- /proc readers

PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024


def pcp_kib():
    """Free pages sitting on the per-CPU lists (/proc/zoneinfo `count:`):
    MemFree leaves them out, and with a high `high` they are tens of MiB
    that come and go as pages are freed and allocated."""
    try:
        return PAGE_KIB * sum(int(line.split()[1]) for line in Path("/proc/zoneinfo").read_text().splitlines()
                              if line.strip().startswith("count:"))
    except (OSError, ValueError, IndexError):
        return 0


def private_kib_except(exclude):
    """Private memory (RssAnon + page tables) of every process but `exclude`:
    what other processes on a shared machine allocate or free meanwhile
    (and the client's own memory) is not the server's."""
    total = 0
    for d in os.listdir("/proc"):
        if d.isdigit() and int(d) not in exclude:
            total += sum(proc_status(d, ["RssAnon", "VmPTE"]).values())
    return total


def read_meminfo(exclude=None):
    out = {}
    for line in Path("/proc/meminfo").read_text().splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts:
            out[key] = int(parts[0])  # KiB
    # Every free page, wherever it waits: the buddy lists and the per-CPU
    # lists; plus the page cache, so that files other processes read or
    # write meanwhile do not count (no server here adds to it).
    out["Free"] = out.get("MemFree", 0) + pcp_kib() + out.get("Cached", 0) + out.get("Buffers", 0)
    if exclude is not None:
        out["Free"] += private_kib_except(exclude)
    return out


def proc_status(pid, keys):
    out = dict.fromkeys(keys, 0)
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in out:
                out[key] = int(rest.split()[0])
    except (OSError, ValueError, IndexError):
        pass
    return out


def children(pid):
    try:
        out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True, timeout=5).stdout
        return [int(x) for x in out.split()]
    except (OSError, subprocess.TimeoutExpired):
        return []


def family(pid):
    return [pid, *children(pid)]


def rss_kib(pid):
    """Resident memory of a process and its children (socat forks)."""
    return sum(proc_status(p, ["VmRSS"])["VmRSS"] for p in family(pid))


def cpu_ticks(pid):
    """utime+stime of every thread of a process, plus its reaped children
    (cutime+cstime) and its live children: socat forks one per connection."""
    total = 0
    for i, p in enumerate(family(pid)):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        # fields[0] is field 3 (state); utime..cstime are fields 14..17.
        total += sum(int(x) for x in fields[11:15 if i == 0 else 13])
    return total


def settle_memory(max_wait, server_pid, interval=0.1, window=8, tol_kib=1024):
    """Samples the memory not used by the server (see read_meminfo and
    private_kib_except) until it stops moving; returns the medians of the
    last window and whether it settled."""
    samples = []
    end = time.time() + max_wait
    stable = False
    exclude = set(family(server_pid))
    while True:
        samples.append(read_meminfo(exclude))
        last = samples[-window:]
        if len(last) == window and all(
                max(s[k] for s in last) - min(s[k] for s in last) <= tol_kib
                for k in ("Free",)):
            stable = True
            break
        if time.time() >= end:
            break
        time.sleep(interval)
    keys = ("Free", "Slab", "KernelStack", "PageTables")
    return {k: statistics.median(s.get(k, 0) for s in last) for k in keys}, stable


# ---------------------------------------------------------------- one run

def raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def udp_bound(port):
    """Whether a UDP socket is bound to `port` (/proc/net/udp, udp6)."""
    return bool(udp_sockets(port))


def udp_sockets(port):
    """The /proc/net/udp{,6} lines of sockets bound to local `port`, split."""
    out = []
    for f in ("/proc/net/udp", "/proc/net/udp6"):
        try:
            lines = Path(f).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            try:
                if len(fields) >= 13 and int(fields[1].rsplit(":", 1)[1], 16) == port:
                    out.append(fields)
            except (ValueError, IndexError):
                pass
    return out


def udp_drops(port):
    """Datagrams dropped at the sockets bound to `port` (receive buffer full)."""
    return sum(int(f[12]) for f in udp_sockets(port) if f[12].isdigit())


def wait_listening(port, proc, deadline=10.0, udp=False):
    end = time.time() + deadline
    while time.time() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        if udp:
            if udp_bound(port):
                return
            time.sleep(0.05)
            continue
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("server did not start listening")


class Server:
    """A server process in its own session, killed (whole group) on exit."""

    def __init__(self, cmd, udp=False):
        self.udp = udp
        self.port = free_port()
        # The soft descriptor limit was raised to the hard one at start (see
        # main), and children inherit it.
        self.proc = subprocess.Popen(cmd(self.port), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True)

    def __enter__(self):
        try:
            wait_listening(self.port, self.proc, udp=self.udp)
        except Exception:
            self.__exit__()
            raise
        time.sleep(0.2)
        return self

    def __exit__(self, *exc):
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()
        time.sleep(0.3)  # let the port and the kernel's socket teardown settle


def bench_cmd(bench_args, port):
    return [str(BENCH_BIN), *bench_args, "--addr", f"127.0.0.1:{port}", "--json"]


def wait_bench(proc, limit):
    """Waits (bounded) for an echo-bench process; returns (exit status, its
    CPU seconds) and kills it if it overstays."""
    if proc.returncode is not None:  # already reaped by Popen.poll
        return proc.returncode, None
    end = time.time() + limit
    while True:
        pid, status, ru = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            return proc.returncode, ru.ru_utime + ru.ru_stime
        if time.time() >= end:
            proc.kill()
            _, status, ru = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
            return None, ru.ru_utime + ru.ru_stime
        time.sleep(0.02)


def parse_json(text):
    lines = [l for l in text.strip().splitlines() if l.startswith("{")]
    try:
        return json.loads(lines[-1]) if lines else None
    except json.JSONDecodeError:
        return None


def run_load(server_cmd, sc, duration):
    """pingpong, bulk, connrate: one client; server CPU before/after."""
    with Server(lambda p: server_cmd(p, sc["mode"] == "bulk")) as srv:
        cpu0 = cpu_ticks(srv.proc.pid)
        t0 = time.time()
        bench = subprocess.Popen(bench_cmd(sc["args"], srv.port), stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)
        code, client_cpu = wait_bench(bench, sc["run_s"] + 15)
        wall = time.time() - t0
        cpu1 = cpu_ticks(srv.proc.pid)
        out, err = bench.communicate()
    res = parse_json(out) or {}
    res["ok"] = code == 0 and res.get("errors", 1) == 0
    if not res["ok"]:
        res["why"] = f"exit {code}, errors {res.get('errors')}: {err.strip()[-200:]}"
    server_s = (cpu1 - cpu0) / CLK_TCK
    res["server_cpu_pct"] = 100 * server_s / wall if wall else None
    res["client_cpu_pct"] = 100 * client_cpu / wall if wall else None
    rt = res.get("round_trips")
    res["cpu_us_per_rt"] = 1e6 * server_s / rt if rt else None
    made = res.get("connections_made")
    res["cpu_us_per_conn"] = 1e6 * server_s / made if made else None
    return res


def run_udp(server_cmd, sc):
    """udp: one client; server CPU before/after, per datagram answered, and
    the datagrams the server's socket dropped."""
    with Server(lambda p: server_cmd(p, sc), udp=True) as srv:
        drops0 = udp_drops(srv.port)
        cpu0 = cpu_ticks(srv.proc.pid)
        t0 = time.time()
        bench = subprocess.Popen(bench_cmd(sc["args"], srv.port), stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)
        code, client_cpu = wait_bench(bench, sc["run_s"] + 15)
        wall = time.time() - t0
        cpu1 = cpu_ticks(srv.proc.pid)
        res_drops = udp_drops(srv.port) - drops0
        out, err = bench.communicate()
    res = parse_json(out) or {}
    res["server_drops"] = res_drops
    keys = ("duplicates", "corrupted", "wrong_size", "crosstalk")
    if all(res.get(k) is not None for k in keys):
        res["bad"] = sum(res[k] for k in keys)
    # Lost datagrams alone do not fail a run (they are a result); bad
    # replies and errors do.
    res["ok"] = code == 0 and res.get("errors", 1) == 0
    if not res["ok"]:
        res["why"] = f"exit {code}, errors {res.get('errors')}, bad {res.get('bad')}: {err.strip()[-200:]}"
    server_s = (cpu1 - cpu0) / CLK_TCK
    res["server_cpu_pct"] = 100 * server_s / wall if wall else None
    res["client_cpu_pct"] = 100 * client_cpu / wall if wall else None
    n = res.get("answered")
    res["cpu_us_per_dgram"] = 1e6 * server_s / n if n else None
    res["rate"] = res.get("answered_per_sec")
    return res


def run_hold(server_cmd, sc, settle_s):
    """hold: baseline memory, open every connection (one or more client
    processes), memory while all are open and idle, then release the final
    echo on every client at once."""
    n = sc["connections"]
    # Each client process needs a descriptor per connection and a few more.
    per_client = max(1, resource.getrlimit(resource.RLIMIT_NOFILE)[1] - 100)
    k = math.ceil(n / per_client)
    shares = [n * (i + 1) // k - n * i // k for i in range(k)]
    res = {"ok": False}
    with Server(lambda p: server_cmd(p, False)) as srv:
        base, base_stable = settle_memory(settle_s, srv.proc.pid)
        base_rss = rss_kib(srv.proc.pid)
        clients = []
        for share in shares:
            args = ["hold", "--connections", str(share), "--threads", "2", "--sources", str(sc["sources"]),
                    "--duration", str(sc["duration"]), "--idle-until-stdin"]
            p = subprocess.Popen(bench_cmd(args, srv.port), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)
            c = {"proc": p, "ready": threading.Event(), "err": [], "out": []}
            c["readers"] = [threading.Thread(target=_drain_err, args=(c,), daemon=True),
                            threading.Thread(target=lambda c=c: c["out"].append(c["proc"].stdout.read()),
                                             daemon=True)]
            for t in c["readers"]:
                t.start()
            clients.append(c)
        end = time.time() + sc["duration"] + 8
        while time.time() < end and not all(c["ready"].is_set() or c["proc"].poll() is not None
                                            for c in clients):
            time.sleep(0.05)
        all_ready = all(c["ready"].is_set() for c in clients)
        if all_ready:
            held, held_stable = settle_memory(settle_s, srv.proc.pid)
            rss = rss_kib(srv.proc.pid)
        for c in clients:  # release the final echo everywhere at once
            try:
                c["proc"].stdin.write("go\n")
                c["proc"].stdin.close()
            except OSError:
                pass
        codes = [wait_bench(c["proc"], sc["duration"] + 15)[0] for c in clients]
        for c in clients:
            for t in c["readers"]:
                t.join(timeout=5)
    outs = [parse_json("".join(c["out"])) or {} for c in clients]
    res["open"] = sum(o.get("open") or 0 for o in outs)
    res["held"] = sum(o.get("held") or 0 for o in outs)
    res["errors"] = sum(o.get("errors", 1) for o in outs)
    res["clients"] = k
    res["ok"] = all_ready and all(c == 0 for c in codes) and res["errors"] == 0 and res["held"] == n
    if not res["ok"]:
        res["why"] = (f"ready {all_ready}, exits {codes}, open {res['open']}, held {res['held']} of {n}, "
                      f"errors {res['errors']}: " + " | ".join(" ".join(c["err"])[-200:] for c in clients))
    if all_ready and res["open"]:
        per = lambda kib: kib / res["open"]
        res["sys_kib"] = per(base["Free"] - held["Free"])
        for key in ("KernelStack", "Slab", "PageTables"):
            res[key.lower() + "_kib"] = per(held[key] - base[key])
        res["rss_kib"] = per(rss - base_rss)
        # What no counter names: e.g. the 32 KiB page fragment that every
        # thread sending on TCP keeps for its lifetime (task_frag).
        res["other_kib"] = res["sys_kib"] - sum(res[k] for k in
                                                ("kernelstack_kib", "slab_kib", "pagetables_kib", "rss_kib"))
        res["settled"] = base_stable and held_stable
    return res


def _drain_err(c):
    for line in c["proc"].stderr:
        c["err"].append(line.strip())
        if "connections open after" in line:
            c["ready"].set()


# ---------------------------------------------------------------- scenarios

def scenarios(args):
    d = args.duration
    quick = args.quick
    ds = f"{d:g}"
    hold_n = 2000 if quick else 10000
    max_n = 4000 if quick else 19000
    bulk1 = 256 << 20 if quick else 1 << 30
    bulk50 = 16 << 20 if quick else 64 << 20
    no_socat = [p for p in PEER_NAMES if p != "socat"]
    tput = lambda unit, target: {"key": "rate", "unit": unit, "higher": True, "target": target, "p99": True}
    cpu = lambda target: {"key": "cpu_us_per_rt", "unit": "µs server CPU/round trip", "higher": False,
                          "target": target, "label": "server CPU"}
    mem = [
        {"key": "sys_kib", "unit": "KiB/conn, system", "higher": False, "target": "<= 1.0 vs tokio",
         "label": "memory"},
        {"key": "rss_kib", "unit": "KiB RSS/conn", "higher": False, "target": "", "label": "server RSS"},
    ]
    return [
        {"id": 1, "name": "pp1", "label": "pingpong 1 conn 64 B", "mode": "pingpong", "run_s": d, "peers": None,
         "args": ["pingpong", "--connections", "1", "--size", "64", "--duration", ds],
         "rate": "round_trips_per_sec",
         "metrics": [tput("round trips/s", ">= 1.0 vs every peer")]},
        {"id": 2, "name": "pp100", "label": "pingpong 100 conns 64 B", "mode": "pingpong", "run_s": d,
         "peers": None, "args": ["pingpong", "--connections", "100", "--size", "64", "--duration", ds],
         "rate": "round_trips_per_sec",
         "metrics": [tput("round trips/s", ">= 1.0 vs tokio,epoll-c,go-echo"),
                     cpu("<= 1.0 vs tokio,epoll-c,go-echo")]},
        {"id": 3, "name": "pp1000", "label": "pingpong 1000 conns 512 B", "mode": "pingpong", "run_s": d,
         "peers": no_socat, "args": ["pingpong", "--connections", "1000", "--size", "512", "--duration", ds],
         "rate": "round_trips_per_sec",
         "metrics": [tput("round trips/s", ">= 1.0 vs tokio"), cpu("")]},
        {"id": 4, "name": "bulk1", "label": "bulk 1 conn", "mode": "bulk", "run_s": d * 4, "peers": None,
         "args": ["bulk", "--connections", "1", "--bytes", str(bulk1), "--duration", f"{d * 4:g}"],
         "rate": "mib_per_sec", "metrics": [tput("MiB/s", ">= 1.2 vs best") | {"p99": False}]},
        {"id": 5, "name": "bulk50", "label": "bulk 50 conns", "mode": "bulk", "run_s": d, "peers": no_socat,
         "args": ["bulk", "--connections", "50", "--bytes", str(bulk50), "--duration", ds],
         "rate": "mib_per_sec", "metrics": [tput("MiB/s", ">= 1.0 vs best") | {"p99": False}]},
        {"id": 6, "name": "connrate", "label": "connrate 50 parallel", "mode": "connrate", "run_s": d,
         "peers": None, "args": ["connrate", "--parallel", "50", "--duration", ds],
         "rate": "connections_per_sec", "metrics": [tput("conns/s", ">= 1.0 vs tokio") | {"p99": False}]},
        {"id": 7, "name": "hold", "label": f"hold {hold_n} conns", "mode": "hold", "peers": no_socat,
         "connections": hold_n, "sources": 1, "duration": 20, "metrics": mem},
        {"id": 8, "name": "holdmax", "label": f"hold {max_n} conns{'' if quick else ' (fd limit)'}, 4 sources", "mode": "hold",
         "peers": ["tokio", "epoll-c"], "connections": max_n, "sources": 4, "duration": 25,
         "metrics": [{"key": "held", "unit": f"held & echoing of {max_n}", "higher": True,
                      "target": f"all {max_n}", "label": "held", "always": True}] + mem},
    ] + udp_scenarios(args) + tls_scenarios(args)


def tls_scenarios(args):
    d = args.duration
    ds = f"{d:g}"
    ca = ["--tls-ca", str(TLS_DIR / "ca.pem")]
    return [
        {"id": 12, "name": "tlsconn", "label": "tls handshakes, 50 parallel", "mode": "connrate",
         "proto": "tls", "run_s": d, "peers": None,
         "args": ["connrate", "--parallel", "50", "--duration", ds, *ca],
         "rate": "connections_per_sec",
         "metrics": [{"key": "rate", "unit": "handshakes/s", "higher": True, "target": ">= 1.0 vs every peer"},
                     {"key": "cpu_us_per_conn", "unit": "µs server CPU/handshake", "higher": False,
                      "target": "<= 1.0 vs tokio-rustls", "label": "server CPU"}]},
        {"id": 13, "name": "tlspp100", "label": "tls pingpong 100 conns 64 B", "mode": "pingpong",
         "proto": "tls", "run_s": d, "peers": None,
         "args": ["pingpong", "--connections", "100", "--size", "64", "--duration", ds, *ca],
         "rate": "round_trips_per_sec",
         "metrics": [{"key": "rate", "unit": "round trips/s", "higher": True, "target": ">= 1.0 vs every peer",
                      "p99": True},
                     {"key": "cpu_us_per_rt", "unit": "µs server CPU/round trip", "higher": False,
                      "target": "<= 1.0 vs tokio-rustls", "label": "server CPU"}]},
    ]


def udp_scenarios(args):
    d = args.duration
    ds = f"{d:g}"
    rate = lambda target: {"key": "rate", "unit": "answered/s", "higher": True, "target": target, "p99": True}
    cpu = lambda target: {"key": "cpu_us_per_dgram", "unit": "µs server CPU/datagram", "higher": False,
                          "target": target, "label": "server CPU"}
    # Worst round, failed ones included: one lost or bad datagram is news.
    lost = {"key": "lost", "unit": "datagrams lost, worst round", "higher": False, "agg": "max",
            "always": True, "target": {"ours": "0"}, "label": "lost"}
    bad = {"key": "bad", "unit": "bad replies, worst round", "higher": False, "agg": "max", "always": True,
           "target": {"ours": "0"}, "label": "corrupted/dup"}
    drops = {"key": "server_drops", "unit": "server rcvbuf drops, worst round", "higher": False, "agg": "max",
             "always": True, "target": "", "label": "server drops"}

    def sc(id_, name, label, sockets, inflight, size, metrics, servers):
        return {"id": id_, "name": name, "label": label, "mode": "udp", "proto": "udp", "run_s": d,
                "servers": servers, "sockets": sockets, "inflight": inflight,
                "args": ["udp", "--sockets", str(sockets), "--inflight", str(inflight), "--size", str(size),
                         "--duration", ds],
                "metrics": metrics + [lost, bad, drops]}

    plain = ["ours", "tokio", "socat"]
    return [
        sc(9, "udp1", "udp 1 socket 64 B", 1, 1, 64,
           [rate({"ours": ">= 1.0 vs best, p99 <= best's"}), cpu("")], plain),
        sc(10, "udp64", "udp 64 sockets 64 B x4", 64, 4, 64,
           [rate({"ours": ">= 1.5 vs tokio", "ours-ratelimited": ">= 0.9 vs ours"}),
            cpu({"ours": "<= 0.5 vs tokio"})],
           ["ours", "ours-ratelimited", "tokio", "socat"]),
        sc(11, "udp16k", "udp 8 sockets 16,000 B x2", 8, 2, 16000,
           [rate({"ours": ">= 1.2 vs tokio"}), cpu("")], plain),
    ]


def run_scenario(sc, server_cmd, args):
    if sc["mode"] == "udp":
        return run_udp(server_cmd, sc)
    if sc["mode"] == "hold":
        return run_hold(server_cmd, sc, settle_s=3.0 if args.quick else 5.0)
    res = run_load(server_cmd, sc, args.duration)
    res["rate"] = res.get(sc["rate"])
    return res


def describe(sc, res):
    if sc["mode"] == "hold":
        s = (f"held {res.get('held')}/{sc['connections']} (open {res.get('open')}, {res.get('clients')} client(s)), "
             f"system {fmt(res.get('sys_kib'))} KiB/conn ("
             f"KernelStack {fmt(res.get('kernelstack_kib'))}, Slab {fmt(res.get('slab_kib'))}, "
             f"PageTables {fmt(res.get('pagetables_kib'))}, other {fmt(res.get('other_kib'))}), "
             f"RSS {fmt(res.get('rss_kib'))} KiB/conn"
             f"{'' if res.get('settled', True) else ', memory NOT settled'}")
    elif sc["mode"] == "udp":
        s = f"{fmt(res.get('rate'))}/s"
        if res.get("p99_us") is not None:
            s += f" p99 {res['p99_us']} µs"
        s += (f", lost {res.get('lost')} of {res.get('sent')} (server drops {res.get('server_drops')}, "
              f"client drops {res.get('client_drops')}), bad {res.get('bad')}")
        if res.get("cpu_us_per_dgram") is not None:
            s += f", server {fmt(res['cpu_us_per_dgram'])} µs CPU/datagram"
        s += f" (server CPU {fmt(res.get('server_cpu_pct'))}%, client {fmt(res.get('client_cpu_pct'))}%)"
    else:
        s = f"{fmt(res.get('rate'))}"
        if res.get("p99_us") is not None:
            s += f" p99 {res['p99_us']} µs"
        if res.get("cpu_us_per_rt") is not None:
            s += f", server {fmt(res['cpu_us_per_rt'])} µs CPU/rt"
        s += f" (server CPU {fmt(res.get('server_cpu_pct'))}%, client {fmt(res.get('client_cpu_pct'))}%)"
    if not res.get("ok"):
        s += f"  FAILED: {res.get('why')}"
    return s


# ---------------------------------------------------------------- output

def fmt(v):
    if v is None:
        return "–"
    if isinstance(v, int) or abs(v) >= 100:
        return f"{v:,.0f}"
    return f"{v:,.1f}" if abs(v) >= 10 else f"{v:,.2f}"


def median(v):
    return statistics.median(v) if v else None


RESULTS_FORMAT = "echo-server compare.py results"


def results_document(scs, names_for, results, args):
    """Everything measured, as plain data: what --chart-from (and anyone
    else) reads back without running anything. Every run of every server is
    kept, not just the medians, so a later reader can aggregate differently."""
    return {
        "format": RESULTS_FORMAT,
        "version": 1,
        "command": "python3 scripts/compare.py " + " ".join(map(shlex.quote, sys.argv[1:])),
        "rounds": args.rounds,
        "duration_s": args.duration,
        "cores": os.cpu_count(),
        "machine": platform.machine(),
        "kernel": platform.release(),
        "scenarios": [
            {"id": sc["id"], "name": sc["name"], "label": sc["label"], "mode": sc["mode"],
             "proto": sc.get("proto", "tcp"),
             # The throughput metric, if the scenario has one (hold has none).
             "rate_unit": next((m["unit"] for m in sc["metrics"] if m["key"] == "rate"), None),
             "servers": names_for(sc),
             "runs": {n: results.get((sc["id"], n), []) for n in names_for(sc)}}
            for sc in scs
        ],
    }


def load_results(path):
    doc = json.loads(Path(path).read_text())
    if not isinstance(doc, dict) or doc.get("format") != RESULTS_FORMAT:
        raise ValueError(f"{path}: not a results file of compare.py (no \"format\": {RESULTS_FORMAT!r})")
    if doc.get("version") != 1:
        raise ValueError(f"{path}: results version {doc.get('version')!r}, this script reads 1")
    return doc


def chart_groups(doc):
    """Per throughput workload: the best peer (highest median rate over its
    successful runs) and each of our rows' median divided by it. Workloads
    without a throughput metric (hold) or without any peer value are left
    out: there is nothing to compare with."""
    groups = []
    for sc in doc["scenarios"]:
        if not sc.get("rate_unit"):
            continue
        medians = {}
        for name in sc["servers"]:
            vals = [r["rate"] for r in sc["runs"].get(name, [])
                    if r.get("ok") and isinstance(r.get("rate"), (int, float))]
            medians[name] = median(vals)
        peers = {n: v for n, v in medians.items() if not is_ours(n) and v}
        ours = [n for n in sc["servers"] if is_ours(n)]
        if not peers or not ours:
            continue
        best = max(peers, key=peers.get)
        groups.append({
            "name": sc["name"], "label": sc["label"], "unit": sc["rate_unit"],
            "best": best, "best_value": peers[best],
            "bars": [(n, None if medians[n] is None else medians[n] / peers[best], medians[n]) for n in ours],
        })
    return groups


def render_chart(doc):
    """The chart as hand-written SVG: grouped bars (one group per workload,
    one bar per row of ours), a line at 1.0 (= the best peer), the ratio on
    each bar and the best peer under each group. No plotting library: the
    script stays standard-library only, and SVG is text a browser shows."""
    from xml.sax.saxutils import escape

    groups = chart_groups(doc)
    rows = []  # our rows in order of first appearance: one colour each
    for g in groups:
        rows += [n for n, _, _ in g["bars"] if n not in rows]
    palette = ["#4e79a7", "#f28e2b", "#59a14f", "#b07aa1", "#76b7b2", "#edc948", "#e15759"]
    colour = {n: palette[i % len(palette)] for i, n in enumerate(rows)}

    bar_w, bar_gap, group_gap = 26, 4, 34
    left, right, top, plot_h = 64, 24, 78, 260
    widths = [len(g["bars"]) * (bar_w + bar_gap) - bar_gap for g in groups]
    legend_w = sum(24 + 7 * len(n) for n in rows) + 130  # + the 1.0 line's entry
    width = max(680, left + legend_w + right, left + sum(widths) + group_gap * max(len(groups), 1) + right)
    # Spread the groups over the width the title and legend need anyway.
    group_gap = max(group_gap, (width - left - right - sum(widths)) / max(len(groups), 1))
    height = top + plot_h + 96
    ratios = [r for g in groups for _, r, _ in g["bars"] if r is not None]
    top_value = max([1.25] + [r * 1.12 for r in ratios])
    step = next(s for s in (0.25, 0.5, 1, 2, 5, 10, 25, 50, 100, 250, 1000) if top_value / s <= 8)
    top_value = math.ceil(top_value / step) * step
    y = lambda v: top + plot_h * (1 - v / top_value)

    def text(x, y_, s, size=11, anchor="middle", extra="", tip=None):
        tip = f"<title>{escape(tip)}</title>" if tip else ""
        return (f'<text x="{x:.1f}" y="{y_:.1f}" font-size="{size}" text-anchor="{anchor}"{extra}>'
                f"{tip}{escape(str(s))}</text>")

    def wrap(label, limit):
        lines, line = [], ""
        for word in label.split():
            if line and len(line) + 1 + len(word) > limit:
                lines.append(line)
                line = word
            else:
                line = f"{line} {word}".strip()
        return lines + [line] if line else lines

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" font-family="sans-serif">',
           f'<rect width="{width}" height="{height}" fill="white"/>',
           text(left, 22, "Throughput of each of our engines / the best peer, per workload", 15, "start",
                ' font-weight="bold"'),
           text(left, 38, f"Medians of {doc.get('rounds', '?')} round(s), {doc.get('duration_s', '?')} s per run, "
                f"{doc.get('cores', '?')} cores, Linux {doc.get('kernel', '?')}; above 1.0 ours beats every peer",
                11, "start")]
    legend_x = left
    for n in rows:
        out.append(f'<rect x="{legend_x}" y="52" width="12" height="12" fill="{colour[n]}"/>')
        out.append(text(legend_x + 16, 62, n, 11, "start"))
        legend_x += 24 + 7 * len(n)
    # The line at 1.0 is explained in the legend, not on the plot, where a
    # label would collide with whichever bar stands at that end.
    out.append(f'<line x1="{legend_x}" x2="{legend_x + 22}" y1="58" y2="58" stroke="#c00" '
               f'stroke-width="1.5" stroke-dasharray="6 4"/>')
    out.append(text(legend_x + 26, 62, "1.0 = the best peer", 11, "start"))
    # Axis, grid and tick labels.
    v = 0.0
    while v <= top_value + 1e-9:
        out.append(f'<line x1="{left}" x2="{width - right}" y1="{y(v):.1f}" y2="{y(v):.1f}" '
                   f'stroke="#ddd" stroke-width="1"/>')
        out.append(text(left - 6, y(v) + 4, f"{v:g}", 10, "end"))
        v += step
    out.append(f'<line x1="{left}" x2="{left}" y1="{top}" y2="{top + plot_h}" stroke="#333"/>')
    out.append(text(16, top + plot_h / 2, "ratio to best peer", 11, "middle",
                    f' transform="rotate(-90 16 {top + plot_h / 2:.1f})"'))
    if not groups:
        out.append(text(width / 2, top + plot_h / 2, "no throughput workload with both ours and a peer", 13))
    x = left + group_gap / 2
    for g, w in zip(groups, widths):
        for i, (name, ratio, value) in enumerate(g["bars"]):
            bx = x + i * (bar_w + bar_gap)
            if ratio is None:  # every run of this row failed: no bar, a mark
                out.append(text(bx + bar_w / 2, y(0) - 4, "–", 11, tip=f"{name}: no successful run"))
                continue
            tip = (f"{g['label']}: {name} {fmt(value)} {g['unit']} / {g['best']} {fmt(g['best_value'])} "
                   f"= {ratio:.2f}")
            out.append(f'<rect class="bar" x="{bx:.1f}" y="{y(ratio):.1f}" width="{bar_w}" '
                       f'height="{y(0) - y(ratio):.1f}" fill="{colour[name]}"><title>{escape(tip)}</title></rect>')
            out.append(text(bx + bar_w / 2, y(ratio) - 3, f"{ratio:.2f}", 9))
        label_y = top + plot_h + 16
        for line in wrap(g["label"], max(12, int(w / 6))):
            out.append(text(x + w / 2, label_y, line, 10))
            label_y += 12
        out.append(text(x + w / 2, label_y + 2, f"vs {g['best']}", 10, "middle", ' fill="#555"'))
        x += w + group_gap
    # The line at 1.0 last, so that it is drawn over the bars.
    out.append(f'<line class="parity" x1="{left}" x2="{width - right}" y1="{y(1):.1f}" y2="{y(1):.1f}" '
               f'stroke="#c00" stroke-width="1.5" stroke-dasharray="6 4"/>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def write_chart(doc, path):
    Path(path).write_text(render_chart(doc))
    log(f"chart: {path}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=float, default=None,
                    help="seconds per load run (default 2.5, or 1 with --quick); bulk 1 conn may take 4x")
    ap.add_argument("--only", default="", help="comma-separated servers (`ours` selects every ours-* row)")
    ap.add_argument("--scenarios", default="", help="comma-separated scenario numbers or names (see above)")
    ap.add_argument("--quick", action="store_true", help="1 s runs, smaller bulk and hold sizes (smoke test)")
    ap.add_argument("--ours-args", default="", help="extra flags for echo-server, e.g. \"--thread-connections 8\"")
    ap.add_argument("--peer-threads", type=int, default=1, help="--threads for epoll-c and uring-c (default 1)")
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--rebuild-peers", action="store_true", help="rebuild peers even if they exist")
    ap.add_argument("--update-readme", action="store_true")
    ap.add_argument("--chart-from", metavar="FILE",
                    help="only redraw the chart from a saved results file (bench-out/results.json); runs nothing")
    ap.add_argument("--chart-out", metavar="FILE", default=str(OUT / "chart.svg"),
                    help="where the chart goes (default bench-out/chart.svg)")
    args = ap.parse_args()
    if args.chart_from:
        try:
            doc = load_results(args.chart_from)
        except (OSError, ValueError) as e:  # JSONDecodeError is a ValueError
            sys.exit(f"--chart-from: {e}")
        Path(args.chart_out).parent.mkdir(parents=True, exist_ok=True)
        write_chart(doc, args.chart_out)
        return
    if args.duration is None:
        args.duration = 1.0 if args.quick else 2.5
    if not (0 < args.duration <= 10) or not (1 <= args.rounds <= 20):
        sys.exit("--duration must be in (0, 10] and --rounds in 1..20: every run stays short")

    OUT.mkdir(exist_ok=True)
    raise_nofile()  # servers and clients inherit it: 19,000 connections need the hard limit
    build(args)
    only = [x for x in args.only.split(",") if x]
    chosen = [x for x in args.scenarios.split(",") if x]
    scs = [s for s in scenarios(args) if not chosen or str(s["id"]) in chosen or s["name"] in chosen]
    tls = tls_material() if any(sc.get("proto") == "tls" for sc in scs) else None
    tables_by_proto = {"tcp": server_table(args), "udp": udp_table(args), "tls": tls_table(args, tls)}
    table, utable = tables_by_proto["tcp"], tables_by_proto["udp"]

    def names_for(sc):
        if sc.get("proto") == "tls":
            names = list(tables_by_proto["tls"])
        elif sc.get("proto") == "udp":
            names = [n for n in sc["servers"] if n in utable]
        else:
            names = [n for n in table if is_ours(n) or sc["peers"] is None or n in sc["peers"]]
        if only:
            names = [n for n in names if n in only or ("ours" in only and is_ours(n))]
        return names

    results = {(sc["id"], n): [] for sc in scs for n in names_for(sc)}
    started = time.time()
    for r in range(args.rounds):
        for sc in scs:
            names = names_for(sc)
            for name in (names if r % 2 == 0 else names[::-1]):
                t0 = time.time()
                try:
                    res = run_scenario(sc, tables_by_proto[sc.get("proto", "tcp")][name], args)
                except Exception as e:  # a server that does not start: a failed sample, not a crash
                    res = {"ok": False, "why": repr(e)}
                results[(sc["id"], name)].append(res)
                log(f"[{sc['label']}] round {r + 1} {name}: {describe(sc, res)}  [{time.time() - t0:.1f} s]")
    log(f"total {time.time() - started:.0f} s")
    text = render(scs, names_for, results, args)
    (OUT / "results.md").write_text(text)
    doc = results_document(scs, names_for, results, args)
    (OUT / "results.json").write_text(json.dumps(doc, indent=1, default=str) + "\n")
    Path(args.chart_out).parent.mkdir(parents=True, exist_ok=True)
    write_chart(doc, args.chart_out)
    print(text)
    if args.update_readme:
        readme = ROOT / "README.md"
        s = readme.read_text()
        start, end = "<!-- bench:start -->", "<!-- bench:end -->"
        if start in s and end in s:
            s = s[: s.index(start) + len(start)] + "\n" + text + s[s.index(end):]
            readme.write_text(s)
        # The README shows this chart: drawn from the same run as its tables.
        write_chart(doc, README_CHART)


def render(scs, names_for, results, args):
    def med(sc, name, key, always=False, agg=None):
        runs = results.get((sc["id"], name), [])
        if key.endswith("_kib") and any(r.get("settled") for r in runs):
            # Memory sampled while another process was busy is noisier:
            # left out whenever a quiet round exists.
            runs = [r for r in runs if r.get("settled") or not r.get("ok")]
        vals = [r[key] for r in runs if (r.get("ok") or always) and r.get(key) is not None]
        failed = sum(1 for r in runs if not r.get("ok"))
        if agg == "max":
            return (max(vals) if vals else None), failed
        return median(vals), failed

    def target_of(m, server):
        t = m["target"]
        return t.get(server, "") if isinstance(t, dict) else t

    def target_text(m):
        t = m["target"]
        if isinstance(t, dict):
            return "; ".join(f"{k}: {v}" for k, v in t.items())
        return t

    def tables(group):
        """The result table and the ratio table of one group of scenarios."""
        servers = []
        for sc in group:
            servers += [n for n in names_for(sc) if n not in servers]
        ours = [n for n in servers if is_ours(n)]
        peers = [n for n in servers if not is_ours(n)]
        servers = ours + peers
        rows = []  # (label, unit, metric, {server: (value, p99, failed)}, sc)
        for sc in group:
            for m in sc["metrics"]:
                cells = {}
                for n in names_for(sc):
                    v, failed = med(sc, n, m["key"], m.get("always", False), m.get("agg"))
                    p99 = med(sc, n, "p99_us")[0] if m.get("p99") else None
                    cells[n] = (v, p99, failed)
                label = sc["label"] + (f": {m['label']}" if m.get("label") and m["key"] != "rate" else "")
                rows.append((label, m["unit"], m, cells, sc))
        lines = ["| scenario | unit | " + " | ".join(servers) + " | target |",
                 "|---|---|" + "---|" * len(servers) + "---|"]
        for label, unit, m, cells, _ in rows:
            out = []
            for n in servers:
                if n not in cells:
                    out.append("")
                    continue
                v, p99, failed = cells[n]
                c = fmt(v)
                if p99 is not None:
                    c += f" ({fmt(p99)})"
                if failed:
                    c += f" !{failed}"
                out.append(c)
            lines.append(f"| {label} | {unit} | " + " | ".join(out) + f" | {target_text(m)} |")

        # Ratios: each of our rows against each peer (and, for a variant of
        # ours such as ours-ratelimited, against plain `ours`).
        versus = peers + (["ours"] if "ours" in ours and len(ours) > 1 else [])
        lines += ["", "Ratio = ours / peer (for CPU, memory, loss lower is better, for the rest higher is better).",
                  "", "| scenario | ours | " + " | ".join(f"vs {p}" for p in versus) + " | target | met |",
                  "|---|---|" + "---|" * len(versus) + "---|---|"]
        for label, unit, m, cells, sc in rows:
            for o in ours:
                if o not in cells or cells[o][0] is None:
                    continue
                t = target_of(m, o)
                counts = m.get("agg") == "max"  # worst-round counts: no ratios
                if counts and not t:
                    continue
                ov = cells[o][0]
                ratios = {} if counts else {p: (ov / cells[p][0]) for p in versus
                                            if p != o and p in cells and cells[p][0]}
                met = target_met(t, o, ratios, sc, cells)
                lines.append(f"| {label} | {o} | " + " | ".join(
                    f"{ratios[p]:.2f}" if p in ratios else "–" for p in versus) + f" | {t} | {met} |")
        return lines

    tcp = [sc for sc in scs if sc.get("proto", "tcp") == "tcp"]
    udp = [sc for sc in scs if sc.get("proto") == "udp"]
    tls = [sc for sc in scs if sc.get("proto") == "tls"]
    unsettled = sum(1 for rs in results.values() for r in rs if r.get("settled") is False)
    hold = [sc for sc in scs if sc["mode"] == "hold"]
    lines = [
        f"Medians of {args.rounds} alternating round(s), {args.duration:g} s per load run, on "
        f"{os.cpu_count()} cores ({platform.machine()}, Linux {platform.release()}); client and server "
        "share the cores. p99 latency in µs in brackets; `!k` = k runs failed (left out of the median)."
        + (" Memory is system-wide: the drop of free memory per open connection (per-CPU free lists included; "
           "other processes' private memory, the client's too, not charged), so kernel sockets, stacks and page "
           "tables count, and so does the client's end of each loopback connection, the same for every server; "
           "RSS is the server's alone." if hold else ""),
        "",
    ]
    if tcp:
        lines += tables(tcp)
    if udp:
        lines += [] if not tcp else [""]
        lines += ["UDP: `ours` is `echo-server --udp --udp-rate 0 --udp-total-rate 0` (one row: the engine does not matter for UDP), "
                  "`ours-ratelimited` the same with both rate limits on (`--udp-rate 1G --udp-burst 1G`, the same server-wide: "
                  "every client socket is on 127.0.0.1, one source, offering less than that budget, so the row "
                  "shows what the limiter costs). Answered/s counts replies within the window; "
                  "a datagram not answered within 200 ms is lost (and replaced); lost, bad replies (corrupted, "
                  "duplicated, wrong size, cross-talk) and server receive-buffer drops are the worst round. "
                  "Server CPU is per datagram answered.",
                  ""]
        lines += tables(udp)
    if tls:
        lines += [] if not (tcp or udp) else [""]
        lines += ["TLS: our rows serve `--tls PORT` with an ECDSA P-256 certificate made for the run; `tokio-rustls` "
                  "is `tokio-echo --tls` (tokio-rustls, the same rustls and ring provider), `socat-openssl` is "
                  "`socat OPENSSL-LISTEN:PORT,fork PIPE` (OpenSSL, a process per connection). The client verifies "
                  "the certificate and never resumes: every connection is a full TLS 1.3 handshake. Server CPU is "
                  "per handshake (connect, handshake, 16 B echoed, reset) or per round trip.",
                  ""]
        lines += tables(tls)

    if hold:
        lines += ["", "Memory per open connection, KiB (medians): system = drop of free memory (MemFree, the "
                  "per-CPU free lists of /proc/zoneinfo and the page cache; every other process's private memory "
                  "counted as free); KernelStack, Slab and PageTables are system-wide deltas (so both ends of "
                  "each connection); RSS is the server's.",
                  "",
                  "Other = system minus the rest: memory no counter names, such as the 32 KiB page fragment "
                  "that every thread that has sent on TCP keeps (task_frag).",
                  "",
                  "| scenario | server | held | system | KernelStack | Slab | PageTables | RSS | other |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for sc in hold:
            for n in names_for(sc):
                vals = [fmt(med(sc, n, k)[0]) for k in
                        ("sys_kib", "kernelstack_kib", "slab_kib", "pagetables_kib", "rss_kib", "other_kib")]
                held = med(sc, n, "held", always=True)[0]
                lines.append(f"| {sc['label']} | {n} | {fmt(held)} | " + " | ".join(vals) + " |")
        if unsettled:
            lines += ["", f"Note: in {unsettled} run(s) free memory did not settle within the sampling time "
                      "(another process was busy); those runs are left out of the memory medians where a "
                      "settled run of the same server exists."]
    lines += ["", "Command: `python3 scripts/compare.py " + " ".join(map(shlex.quote, sys.argv[1:])) + "`"]
    return "\n".join(lines) + "\n"


def target_met(t, o, ratios, sc, cells):
    """'yes'/'no' for target `t` of our row `o`, if this script knows how
    to check it, else ''. `cells`: server -> (value, p99, failed runs)."""
    ours_value, ours_p99, failed = cells[o]
    if not t:
        return ""
    if t == "0":
        return "yes" if ours_value == 0 else "no"
    if t.startswith("all "):
        return "yes" if ours_value == sc["connections"] and not failed else "no"
    if t.startswith("<= ") and t.endswith(" KiB/conn"):
        return "yes" if ours_value <= float(t.split()[1]) else "no"
    if t.startswith(">= ") or t.startswith("<= "):
        # A ratio target: ">= X vs a,b" holds if the ratio to each of a, b is
        # at least X; "<= X vs a,b" (lower is better) if each is at most X.
        # ", p99 <= best's" also wants our p99 no worse than that of the
        # peer with the best value.
        t, _, p99_clause = t.partition(", p99")
        want = float(t.split()[1])
        vs = t.split(" vs ", 1)[1] if " vs " in t else ""
        peer_ratios = {p: r for p, r in ratios.items() if not is_ours(p)}
        if vs in ("best", "every peer"):
            got = list(peer_ratios.values())
        else:
            got = [ratios[p] for p in vs.split(",") if p in ratios]
        if not got:
            return ""
        ok = min(got) >= want if t.startswith(">= ") else max(got) <= want
        if p99_clause and peer_ratios:
            best = min(peer_ratios, key=peer_ratios.get)  # lowest ratio = best peer
            if ours_p99 is None or cells[best][1] is None:
                return ""
            ok = ok and ours_p99 <= cells[best][1]
        return "yes" if ok else "no"
    return ""

if __name__ == "__main__":
    main()
