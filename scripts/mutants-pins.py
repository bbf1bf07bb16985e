#!/usr/bin/env python3
"""Checks .cargo/mutants.toml's exclusions still name the mutants they were
written for. Each `exclude_re` entry is pinned by file and line to one
mutant (or, with a trailing `: ` and no operator, one line's mutants); when
code moves the entry silently matches nothing, or something else. This
lists every mutant without the configuration (`cargo mutants --list
--no-config`) and prints each entry with the mutants it matches: re-pin an
entry that matches none, and look at one that matches more than it says.

    python3 scripts/mutants-pins.py        # exit 1 if an entry matches nothing
"""
import re
import subprocess
import sys
import tomllib

with open(".cargo/mutants.toml", "rb") as f:
    config = tomllib.load(f)
mutants = subprocess.run(
    ["cargo", "mutants", "--list", "--no-config"],
    check=True, capture_output=True, text=True,
).stdout.splitlines()
stale = 0
for pattern in config.get("exclude_re", []):
    hits = [m for m in mutants if re.search(pattern, m)]
    mark = "ok " if hits else "NONE"
    stale += not hits
    print(f"{mark} {pattern}")
    for m in hits:
        print(f"       {m}")
sys.exit(1 if stale else 0)
