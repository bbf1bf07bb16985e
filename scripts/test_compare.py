#!/usr/bin/env python3
"""Tests of scripts/compare.py that run nothing heavy: the saved results
file, the SVG chart drawn from it (on made-up numbers in
tests/data/compare-results-sample.json), and how a peer whose binary is
missing is left out. Standard library only; no server is started.

    python3 scripts/test_compare.py          (or: python3 -m unittest scripts/test_compare.py)
"""

import argparse
import contextlib
import io
import json
import subprocess
import sys
import tempfile
import unittest
import xml.dom.minidom
from pathlib import Path
from unittest import mock

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import compare  # noqa: E402  (after the path is set)

SAMPLE = HERE.parent / "tests/data/compare-results-sample.json"


def parse_svg(text):
    """The SVG parsed as XML: raises if it is not well-formed."""
    return xml.dom.minidom.parseString(text)


def bars(dom):
    return [r for r in dom.getElementsByTagName("rect") if r.getAttribute("class") == "bar"]


def texts(dom):
    return [t.lastChild.data for t in dom.getElementsByTagName("text") if t.lastChild is not None]


class Chart(unittest.TestCase):
    def setUp(self):
        self.doc = compare.load_results(SAMPLE)

    def test_groups_compare_each_of_ours_with_the_best_peer(self):
        groups = {g["name"]: g for g in compare.chart_groups(self.doc)}
        # hold has no throughput; connrate has no peer: nothing to compare.
        self.assertEqual(list(groups), ["pp1", "bulk1", "udp64"])
        pp1 = groups["pp1"]
        self.assertEqual(pp1["best"], "epoll-c")  # median 28,500 beats tokio's 27,000
        ratios = {n: r for n, r, _ in pp1["bars"]}
        self.assertAlmostEqual(ratios["ours-threads"], 35000 / 28500)
        self.assertAlmostEqual(ratios["ours-events"], 32000 / 28500)
        # Every run of ours-auto failed in bulk1: no ratio, not a zero.
        self.assertEqual(groups["bulk1"]["best"], "uring-c")
        self.assertIsNone(dict((n, r) for n, r, _ in groups["bulk1"]["bars"])["ours-auto"])
        self.assertEqual(groups["udp64"]["best"], "tokio")
        self.assertEqual([n for n, _, _ in groups["udp64"]["bars"]], ["ours", "ours-ratelimited"])

    def test_svg_is_well_formed_with_bars_line_and_labels(self):
        dom = parse_svg(compare.render_chart(self.doc))
        self.assertEqual(dom.documentElement.tagName, "svg")
        self.assertEqual(len(bars(dom)), 3 + 2 + 2)  # pp1, bulk1 (one failed), udp64
        lines = [l for l in dom.getElementsByTagName("line") if l.getAttribute("class") == "parity"]
        self.assertEqual(len(lines), 1, "one line at 1.0")
        words = texts(dom)
        self.assertIn(f"{35000 / 28500:.2f}", words)  # the ratio on the bar
        self.assertIn("vs epoll-c", words)  # the best peer under its group
        self.assertIn("ours-ratelimited", words)  # the legend
        # A bar reaching up to 1.0 ends exactly on the line.
        y1 = float(lines[0].getAttribute("y1"))
        bottom = max(float(b.getAttribute("y")) + float(b.getAttribute("height")) for b in bars(dom))
        top_of = {round(float(b.getAttribute("height")) / (bottom - y1), 2) for b in bars(dom)}
        self.assertIn(round(35000 / 28500, 2), top_of)

    def test_labels_are_escaped(self):
        self.doc["scenarios"][0]["label"] = "a <b> & \"c\""
        dom = parse_svg(compare.render_chart(self.doc))
        self.assertTrue(any("<b> &" in t for t in texts(dom)))

    def test_nothing_to_compare_still_draws_a_well_formed_chart(self):
        self.doc["scenarios"] = [s for s in self.doc["scenarios"] if s["name"] in ("hold", "connrate")]
        dom = parse_svg(compare.render_chart(self.doc))
        self.assertEqual(bars(dom), [])
        self.assertTrue(any("no throughput workload" in t for t in texts(dom)))


class ResultsFile(unittest.TestCase):
    def test_saved_document_reads_back_and_charts(self):
        scs = [{"id": 1, "name": "pp1", "label": "pingpong 1 conn 64 B", "mode": "pingpong",
                "metrics": [{"key": "rate", "unit": "round trips/s"}]},
               {"id": 7, "name": "hold", "label": "hold", "mode": "hold",
                "metrics": [{"key": "sys_kib", "unit": "KiB/conn"}]}]
        names = {1: ["ours-events", "tokio"], 7: ["ours-events"]}
        results = {(1, "ours-events"): [{"ok": True, "rate": 30000.0, "p99_us": 80}],
                   (1, "tokio"): [{"ok": True, "rate": 20000.0}, {"ok": False, "why": "x"}],
                   (7, "ours-events"): [{"ok": True, "sys_kib": 8.0, "settled": True}]}
        args = argparse.Namespace(rounds=1, duration=1.0)
        doc = compare.results_document(scs, lambda sc: names[sc["id"]], results, args)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "results.json"
            path.write_text(json.dumps(doc))
            back = compare.load_results(path)
        self.assertEqual(back["scenarios"][0]["runs"]["tokio"][1], {"ok": False, "why": "x"})
        self.assertIsNone(back["scenarios"][1]["rate_unit"])
        (group,) = compare.chart_groups(back)
        self.assertEqual((group["best"], group["bars"][0][1]), ("tokio", 1.5))

    def test_other_json_is_refused(self):
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "x.json"
            path.write_text('{"a": 1}')
            with self.assertRaises(ValueError):
                compare.load_results(path)


class CommandLine(unittest.TestCase):
    def run_compare(self, *args):
        return subprocess.run([sys.executable, str(HERE / "compare.py"), *args], capture_output=True,
                              text=True, timeout=60)

    def test_chart_from_runs_nothing_and_writes_the_svg(self):
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "chart.svg"
            p = self.run_compare("--chart-from", str(SAMPLE), "--chart-out", str(out))
            self.assertEqual(p.returncode, 0, p.stderr)
            xml.dom.minidom.parse(str(out))
            self.assertNotIn("+ ", p.stderr, "nothing was built or run")

    def test_chart_from_a_bad_file_fails_with_a_message(self):
        with tempfile.TemporaryDirectory() as tmp:
            bad = Path(tmp) / "bad.json"
            bad.write_text("not json")
            p = self.run_compare("--chart-from", str(bad), "--chart-out", str(Path(tmp) / "c.svg"))
            self.assertNotEqual(p.returncode, 0)
            self.assertIn("--chart-from", p.stderr)
            self.assertFalse((Path(tmp) / "c.svg").exists())


class Peers(unittest.TestCase):
    def test_peers_are_built_from_the_repository(self):
        self.assertEqual(compare.PEER_SRC, compare.ROOT / "bench/peers")
        self.assertTrue((compare.PEER_SRC / "build.sh").is_file())

    def test_a_missing_peer_binary_is_left_out_with_a_note(self):
        args = argparse.Namespace(ours_args="", peer_threads=1)
        err = io.StringIO()
        with tempfile.TemporaryDirectory() as tmp, \
                mock.patch.object(compare, "PEERS", Path(tmp)), \
                mock.patch.object(compare, "OURS_BIN", Path(tmp) / "no-echo-server"), \
                contextlib.redirect_stderr(err):
            tcp = compare.server_table(args)
            udp = compare.udp_table(args)
        for peer in ("tokio", "epoll-c", "uring-c", "go-echo", "seed-c"):
            self.assertNotIn(peer, tcp)
            self.assertIn(f"note: {peer} not found", err.getvalue())
        self.assertNotIn("tokio", udp)
        self.assertIn("note: tokio (UDP) not found", err.getvalue())
        self.assertIn("--rebuild-peers", err.getvalue())
        self.assertFalse(any(compare.is_ours(n) for n in tcp), "no echo-server binary: no rows of ours")


class Tls(unittest.TestCase):
    def test_tls_rows_serve_tls_on_the_port_and_never_use_uring(self):
        args = argparse.Namespace(ours_args="--engine-threads 2", peer_threads=1)
        tls = {"ca": Path("/x/ca.pem"), "cert": Path("/x/cert.pem"), "key": Path("/x/key.pem")}
        with tempfile.TemporaryDirectory() as tmp:
            ours = Path(tmp) / "echo-server"
            # A stand-in binary whose --help names --engine and uring.
            ours.write_text("#!/bin/sh\necho '--engine <threads|events|uring|auto>'\n")
            ours.chmod(0o755)
            tokio = Path(tmp) / "tokio-echo"
            tokio.write_text("")
            tokio.chmod(0o755)
            with mock.patch.object(compare, "OURS_BIN", ours), mock.patch.object(compare, "PEERS", Path(tmp)), \
                    contextlib.redirect_stderr(io.StringIO()):
                table = compare.tls_table(args, tls)
        self.assertEqual([n for n in table if compare.is_ours(n)], ["ours-threads", "ours-events", "ours-auto"])
        cmd = table["ours-events"](7443, False)
        # The port is served as TLS, not as plain TCP: it is not the last word.
        self.assertEqual(cmd[-6:], ["--tls", "7443", "--tls-cert", "/x/cert.pem", "--tls-key", "/x/key.pem"])
        self.assertNotIn("7443", cmd[:-6])
        self.assertIn("--engine-threads", cmd)
        self.assertEqual(table["tokio-rustls"](7443, False)[1:], ["--tls", "/x/cert.pem", "/x/key.pem", "7443"])
        self.assertEqual(compare.tls_table(args, None), {}, "no certificates: no TLS rows")

    def test_tls_scenarios_verify_against_the_runs_ca(self):
        args = argparse.Namespace(duration=1.0, quick=True)
        scs = {sc["name"]: sc for sc in compare.tls_scenarios(args)}
        self.assertEqual(sorted(scs), ["tlsconn", "tlspp100"])
        for sc in scs.values():
            self.assertEqual(sc["proto"], "tls")
            i = sc["args"].index("--tls-ca")
            self.assertEqual(sc["args"][i + 1], str(compare.TLS_DIR / "ca.pem"))


if __name__ == "__main__":
    unittest.main()
