#!/usr/bin/env python3
"""Size limits of the daemon's code, measured with Universal Ctags.

    scripts/fnlen.py [--max-function 120] [--max-file 900] [DIR ...]

Lists every function longer than --max-function lines and every .cc file
longer than --max-file lines under the module folders (src proxy store
policy conf by default), longest first, and exits 1 when there is any.
Function extents come from

    ctags --c++-kinds=f --fields=+ne --output-format=json -R DIR...

(`line` is the first line of a definition, `end` its last). Tables of data
are exempt: a function is skipped when a line `// fnlen: table` precedes
it directly (say why next to it).
"""
import argparse
import json
import os
import subprocess
import sys

MODULES = ["src", "proxy", "store", "policy", "conf"]


def functions(dirs):
    cmd = ["ctags", "--languages=C++", "--c++-kinds=f", "--fields=+ne",
           "--output-format=json", "-R", "-o", "-"] + dirs
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    for line in out.splitlines():
        tag = json.loads(line)
        if tag.get("_type") != "tag" or "end" not in tag:
            continue
        yield tag["path"], tag.get("scope", ""), tag["name"], tag["line"], tag["end"]


def exempt(path, line, cache={}):
    if path not in cache:
        with open(path, encoding="utf-8", errors="replace") as f:
            cache[path] = f.read().splitlines()
    lines = cache[path]
    return line >= 2 and lines[line - 2].strip() == "// fnlen: table"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--max-function", type=int, default=120)
    ap.add_argument("--max-file", type=int, default=900)
    ap.add_argument("dirs", nargs="*", default=MODULES)
    a = ap.parse_args()
    bad = []
    for path, scope, name, first, last in functions(a.dirs):
        n = last - first + 1
        if n > a.max_function and not exempt(path, first):
            bad.append((n, f"function {path}:{first} {scope + '::' if scope else ''}{name}: {n} lines"))
    for d in a.dirs:
        for root, _, files in os.walk(d):
            for f in files:
                if not f.endswith(".cc"):
                    continue
                p = os.path.join(root, f)
                with open(p, encoding="utf-8", errors="replace") as fh:
                    n = sum(1 for _ in fh)
                if n > a.max_file:
                    bad.append((n, f"file {p}: {n} lines"))
    for _, msg in sorted(bad, reverse=True):
        print(msg)
    print(f"fnlen: {len(bad)} over the limits (functions > {a.max_function} lines, "
          f".cc files > {a.max_file} lines) in {' '.join(a.dirs)}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
