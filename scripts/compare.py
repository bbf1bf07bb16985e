#!/usr/bin/env python3
"""Side-by-side benchmark: echo-server against the peer servers.

Builds everything, then for every scenario runs each server in turn (fresh
process, alternating order each round), drives it with `echo-bench`, and
takes medians over the rounds. Writes a markdown table to
bench-out/results.md and, with --update-readme, between the bench markers in
README.md. Only 127.0.0.1 is used; every run is bounded in time.

    python3 scripts/compare.py                 # full comparison (~10 min)
    python3 scripts/compare.py --rounds 1 --quick --only ours,tokio
"""

import argparse
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
OUT = ROOT / "bench-out"
PEERS = OUT / "peers"


def sh(cmd, **kw):
    print("+", " ".join(map(str, cmd)), file=sys.stderr)
    subprocess.run(cmd, check=True, **kw)


def build(skip):
    if skip:
        return
    sh(["cargo", "build", "--release", "--locked", "--quiet"], cwd=ROOT)
    sh(["cargo", "build", "--release", "--quiet", "--manifest-path", str(ROOT / "bench/Cargo.toml")])
    sh(["sh", str(SHARED / "peers/build.sh"), str(PEERS)])
    if shutil.which("socat") is None:
        # Debian's package; skipped in the table if it cannot be installed.
        subprocess.run(["apt-get", "update", "-qq"], capture_output=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", "socat"], capture_output=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# name -> (command for a port, scenarios it takes part in or None for all)
def servers(bulk_buf):
    ours = str(ROOT / "target/release/echo-server")
    return {
        "ours": lambda p: [ours, "-q", "--max-connections", "20000", str(p)],
        "tokio": lambda p: [str(PEERS / "tokio-echo"), "--buf", str(bulk_buf), str(p)],
        "epoll-c": lambda p: [str(PEERS / "epoll-c"), str(p)],
        "seed-c": lambda p: [str(PEERS / "seed-c"), str(p)],
        "socat": lambda p: ["socat", f"TCP-LISTEN:{p},bind=127.0.0.1,fork,reuseaddr,backlog=1024", "PIPE"],
    }


def wait_listening(port, proc, deadline=10.0):
    end = time.time() + deadline
    while time.time() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("server did not start listening")


def rss_kib(pid):
    """Resident memory of a process and all its children (socat forks)."""
    total = 0
    pids = [pid]
    try:
        out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
        pids += [int(x) for x in out.split()]
    except OSError:
        pass
    for p in pids:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total


def run_one(server_cmd, bench_args, measure_rss):
    port = free_port()
    env = dict(os.environ)
    proc = subprocess.Popen(server_cmd(port), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=env, start_new_session=True)
    try:
        wait_listening(port, proc)
        time.sleep(0.2)
        base = rss_kib(proc.pid)
        bench = subprocess.Popen([str(ROOT / "bench/target/release/echo-bench"), *bench_args,
                                  "--addr", f"127.0.0.1:{port}", "--json"],
                                 stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        peak = base
        while bench.poll() is None:
            if measure_rss:
                peak = max(peak, rss_kib(proc.pid))
            time.sleep(0.1)
        out = bench.stdout.read().strip().splitlines()
        result = json.loads(out[-1]) if out else {"errors": -1}
        result["rss_base_kib"] = base
        result["rss_peak_kib"] = peak
        return result
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
        time.sleep(0.3)  # let TIME_WAIT and the port settle


# (label, echo-bench args, metric key, higher is better, peers to compare, target text)
def scenarios(duration, quick):
    conn_hold = 2000 if quick else 10000
    bulk_bytes = str(256 << 20 if quick else 1 << 30)
    d = str(duration)
    return [
        ("pingpong 1 conn 64 B", ["pingpong", "--connections", "1", "--size", "64", "--duration", d],
         "round_trips_per_sec", "round trips/s", None, ">= 1.0 vs every peer"),
        ("pingpong 100 conns 64 B", ["pingpong", "--connections", "100", "--size", "64", "--duration", d],
         "round_trips_per_sec", "round trips/s", None, ">= 0.85 vs tokio"),
        ("pingpong 1000 conns 512 B", ["pingpong", "--connections", "1000", "--size", "512", "--duration", d],
         "round_trips_per_sec", "round trips/s", ["tokio", "epoll-c", "seed-c"], ">= 0.7 vs tokio"),
        ("bulk 1 conn", ["bulk", "--connections", "1", "--bytes", bulk_bytes, "--duration", str(duration * 4)],
         "mib_per_sec", "MiB/s", None, ">= 1.2 vs best"),
        ("bulk 50 conns", ["bulk", "--connections", "50", "--bytes", str(64 << 20), "--duration", d],
         "mib_per_sec", "MiB/s", ["tokio", "epoll-c", "seed-c"], ">= 1.0 vs best"),
        ("connrate 50 parallel", ["connrate", "--parallel", "50", "--duration", d],
         "connections_per_sec", "conns/s", None, ">= 1.0 vs tokio"),
        (f"hold {conn_hold} conns", ["hold", "--connections", str(conn_hold), "--duration", d, "--threads", "2"],
         "rss_per_conn_kib", "KiB RSS/conn", ["tokio", "epoll-c", "seed-c"], "<= 8 KiB/conn"),
    ]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=float, default=3.0)
    ap.add_argument("--only", default="", help="comma-separated servers")
    ap.add_argument("--scenarios", default="", help="comma-separated scenario numbers (1-7)")
    ap.add_argument("--quick", action="store_true", help="smaller bulk and hold sizes")
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--update-readme", action="store_true")
    args = ap.parse_args()

    OUT.mkdir(exist_ok=True)
    build(args.no_build)
    table = {}
    chosen = [int(x) for x in args.scenarios.split(",") if x]
    for idx, (label, bench_args, key, unit, peers, target) in enumerate(scenarios(args.duration, args.quick), 1):
        if chosen and idx not in chosen:
            continue
        bulk_buf = 65536 if bench_args[0] == "bulk" else 4096
        names = [n for n in servers(bulk_buf) if (peers is None or n == "ours" or n in peers)]
        names = [n for n in names if shutil.which(servers(bulk_buf)[n](0)[0])]
        if args.only:
            names = [n for n in names if n in args.only.split(",")]
        samples = {n: [] for n in names}
        p99 = {n: [] for n in names}
        for r in range(args.rounds):
            order = names if r % 2 == 0 else list(reversed(names))
            for name in order:
                res = run_one(servers(bulk_buf)[name], bench_args, key == "rss_per_conn_kib")
                if key == "rss_per_conn_kib":
                    held = res.get("held") or 0
                    value = (res["rss_peak_kib"] - res["rss_base_kib"]) / held if held else None
                else:
                    value = res.get(key)
                ok = res.get("errors", 1) == 0 and value is not None
                print(f"[{label}] round {r + 1} {name}: {value} {unit}"
                      f"{'' if ok else '  (errors: ' + str(res.get('errors')) + ')'}", file=sys.stderr)
                if ok:
                    samples[name].append(value)
                    if res.get("p99_us") is not None:
                        p99[name].append(res["p99_us"])
        table[label] = (unit, target, {n: (statistics.median(v) if v else None) for n, v in samples.items()},
                        {n: (statistics.median(v) if v else None) for n, v in p99.items()}, key)
    write(table, args)


def fmt(v):
    if v is None:
        return "–"
    return f"{v:,.1f}" if v < 100 else f"{v:,.0f}"


def write(table, args):
    servers_seen = []
    for _, _, med, _, _ in table.values():
        for n in med:
            if n not in servers_seen:
                servers_seen.append(n)
    lines = [
        f"Medians of {args.rounds} alternating rounds, {args.duration:g} s each, on "
        f"{os.cpu_count()} cores ({platform.machine()}, Linux {platform.release()}); "
        "client and server share the cores. Ratio = ours / the peer the target names (tokio, "
        "or else the best peer). p99 latency in µs in brackets.",
        "",
        "| scenario | unit | " + " | ".join(servers_seen) + " | ratio | target |",
        "|---|---|" + "---|" * len(servers_seen) + "---|---|",
    ]
    for label, (unit, target, med, p99, key) in table.items():
        cells = []
        for n in servers_seen:
            v = med.get(n)
            cell = fmt(v)
            if p99.get(n) is not None:
                cell += f" ({fmt(p99[n])})"
            cells.append(cell)
        # The ratio the target names: against tokio, or against the best peer;
        # memory has an absolute target instead.
        against = "tokio" if "vs tokio" in target else None
        peers = [v for n, v in med.items()
                 if n != "ours" and v is not None and (against is None or n == against)]
        ours = med.get("ours")
        ratio = "–"
        if ours is not None and peers and key != "rss_per_conn_kib":
            ratio = f"{ours / max(peers):.2f}"
        lines.append(f"| {label} | {unit} | " + " | ".join(cells) + f" | {ratio} | {target} |")
    lines += ["", "Command: `python3 scripts/compare.py " + " ".join(sys.argv[1:]) + "`"]
    text = "\n".join(lines) + "\n"
    (OUT / "results.md").write_text(text)
    print(text)
    if args.update_readme:
        readme = ROOT / "README.md"
        s = readme.read_text()
        start, end = "<!-- bench:start -->", "<!-- bench:end -->"
        if start in s and end in s:
            s = s[: s.index(start) + len(start)] + "\n" + text + s[s.index(end):]
            readme.write_text(s)


if __name__ == "__main__":
    main()
