#!/usr/bin/env python3
"""Regenerates the README's configuration reference from the binary's
directive table (build/slipstream --help-config-markdown).

    python3 scripts/readme.py [--check]
"""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BEGIN, END = "<!-- BEGIN CONFIG REFERENCE -->", "<!-- END CONFIG REFERENCE -->"


def main():
    ref = subprocess.run([os.path.join(ROOT, "build", "slipstream"), "--help-config-markdown"],
                         check=True, capture_output=True, text=True).stdout
    path = os.path.join(ROOT, "README.md")
    text = open(path).read()
    a, b = text.index(BEGIN) + len(BEGIN), text.index(END)
    new = text[:a] + "\n" + ref.rstrip("\n") + "\n" + text[b:]
    if "--check" in sys.argv:
        if new != text:
            sys.exit("README.md's configuration reference is stale: run python3 scripts/readme.py")
        return
    open(path, "w").write(new)


if __name__ == "__main__":
    main()
