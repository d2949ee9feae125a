#!/usr/bin/env python3
"""Reads what the VM test's guest reported on its serial console.

The guest's step script runs commands through `run TAG CMD...`, which
prints `CFS-OUT TAG LINE` for each line CMD wrote and `CFS-RC TAG N` for
its exit status.

Usage:
  vm-serial.py get SERIAL TAG EXPR           prints the value of EXPR
  vm-serial.py check SERIAL TAG EXPR WHAT    exits 1 unless EXPR holds
EXPR is a Python expression over `out` (TAG's output, one string), `rc`
(its exit status) and `j` (the output parsed as JSON). A TAG the guest did
not report fails both. `check` says WHAT failed and shows the output.
"""
import json, re, sys

def report(serial, tag):
    lines, rc = [], None
    with open(serial, "rb") as f:
        text = f.read().decode("utf-8", "replace").replace("\r", "")
    for line in text.split("\n"):
        m = re.search(r"CFS-(OUT|RC) (\S+)(?: (.*))?$", line)
        if not m or m.group(2) != tag:
            continue
        if m.group(1) == "OUT":
            lines.append(m.group(3) or "")
        else:
            rc = int(m.group(3))
    if rc is None:
        sys.exit(f"vm-serial: the guest reported no {tag!r} in {serial}")
    return "\n".join(lines), rc

class Lazy(dict):
    def __init__(self, out, rc):
        super().__init__(out=out, rc=rc)
    def __missing__(self, key):
        if key == "j":
            self["j"] = json.loads(self["out"])
            return self["j"]
        raise KeyError(key)

def main():
    mode, serial, tag, expr = sys.argv[1:5]
    out, rc = report(serial, tag)
    scope = Lazy(out, rc)
    try:
        value = eval(expr, {"__builtins__": __builtins__}, scope)
    except Exception as e:
        value, error = None, e
    else:
        error = None
    if mode == "get":
        if error:
            sys.exit(f"vm-serial: {expr} on {tag}: {error}\n{out}")
        print(value)
    elif mode == "check":
        if error or not value:
            what = sys.argv[5]
            sys.exit(f"vm-test: FAILED: {what}\n  ({expr} on {tag!r}, rc {rc}"
                     f"{': ' + str(error) if error else ''})\n  output: {out}")
    else:
        sys.exit(f"vm-serial: unknown mode {mode}")

main()
