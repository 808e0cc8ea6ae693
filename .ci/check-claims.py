#!/usr/bin/env python3
"""Checks that every test SPEC.md §11 names exists and passed in this run.

Usage: .ci/check-claims.py [--strict] LOG [LOG ...]

LOG is the output of `cargo test` (libtest's `test NAME ... ok` lines; a name
may be module-qualified, `sqlite::NAME`, and is matched on its last segment).

From SPEC.md §11 it takes:
- the claims table (rows `| 11.N | claim | tests |`): in the tests cell,
  "`path`: `name`, `name`; `path`: `name`", or *no test yet*;
- the subsections 11.1 to 11.15: every backticked snake_case name of at least
  four words (the convention of ../shared/tools/check-spec-claims).

Errors (exit 1): a subsection with no row in the table; a test named in a
subsection but not in the table; a test that is not a `fn` of the file its
row names (or of any Rust file, for a name without a file); a test that did
not run, was ignored or failed in the logs given. A row marked *no test yet*
is listed as a warning (an error with --strict). Python 3 standard library
only.
"""
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROSE_NAME = re.compile(r"`([a-z][a-z0-9]*(?:_[a-z0-9]+){3,})`")
CELL_NAME = re.compile(r"`([a-z][a-z0-9]*(?:_[a-z0-9]+)+)`")
CELL_PATH = re.compile(r"`([A-Za-z0-9_./-]+\.rs)`\s*:")
ROW = re.compile(r"^\|\s*(11\.\d+)\s*\|(.*)\|(.*)\|\s*$")
RESULT = re.compile(r"^test (\S+) \.\.\. (ok|FAILED|ignored)\b", re.M)


def section_11(spec):
    m = re.search(r"^## 11\..*?(?=^## 12\.)", spec, re.S | re.M)
    if not m:
        sys.exit("SPEC.md: no section 11 followed by a section 12")
    return m.group(0)


def parse(sec):
    """Returns (rows, prose): rows = [(sub, claim, [(path or None, name)])],
    prose = {sub: set(names)} for the subsections without table rows."""
    rows, prose = [], {}
    for part in re.split(r"^### ", sec, flags=re.M)[1:]:
        title = part.splitlines()[0].strip()
        sub = title.split()[0]
        in_part = [ROW.match(line) for line in part.splitlines()]
        in_part = [r for r in in_part if r]
        if in_part:
            for r in in_part:
                cell = r.group(3)
                names, path = [], None
                # Walk the cell left to right: a `path`: sets the file for
                # the names after it.
                for tok in re.finditer(r"`[^`]+`\s*:?", cell):
                    p = CELL_PATH.match(tok.group(0))
                    if p:
                        path = p.group(1)
                        continue
                    n = CELL_NAME.fullmatch(tok.group(0).rstrip(": ").strip())
                    if n:
                        names.append((path, n.group(1)))
                rows.append((r.group(1), r.group(2).strip(), names, "no test yet" in cell))
        else:
            prose[sub] = set(PROSE_NAME.findall(part))
    return rows, prose


def rust_files():
    try:
        out = subprocess.run(["git", "ls-files", "*.rs"], cwd=ROOT, capture_output=True,
                             text=True, check=True).stdout.split()
        if out:
            return out
    except (OSError, subprocess.CalledProcessError):
        pass
    found = []
    for d, dirs, files in os.walk(ROOT):
        dirs[:] = [x for x in dirs if x not in ("target", ".git")]
        found += [os.path.relpath(os.path.join(d, f), ROOT) for f in files if f.endswith(".rs")]
    return found


def read(path, cache={}):
    if path not in cache:
        try:
            with open(os.path.join(ROOT, path), encoding="utf-8") as f:
                cache[path] = f.read()
        except OSError:
            cache[path] = None
    return cache[path]


def defines(text, name):
    return text is not None and re.search(r"\bfn " + re.escape(name) + r"\b", text) is not None


def results(logs):
    """{name: set of outcomes} over every log."""
    seen = {}
    for log in logs:
        with open(log, encoding="utf-8", errors="replace") as f:
            for full, outcome in RESULT.findall(f.read()):
                seen.setdefault(full.split("::")[-1], set()).add(outcome)
    return seen


def main(argv):
    strict = "--strict" in argv
    logs = [a for a in argv if a != "--strict"]
    if not logs:
        sys.exit(__doc__)
    with open(os.path.join(ROOT, "SPEC.md"), encoding="utf-8") as f:
        rows, prose = parse(section_11(f.read()))
    if not rows:
        sys.exit("SPEC.md §11: no claims table (rows `| 11.N | claim | tests |`)")
    ran = results(logs)
    errors, warnings = [], []

    covered = {r[0] for r in rows}
    for sub in sorted(covered - set(prose)):
        errors.append(f"claims table: a row for §{sub}, which is not a subsection of §11")
    in_table = {name for _, _, names, _ in rows for _, name in names}
    for sub in sorted(prose, key=lambda s: [int(x) for x in s.split(".")]):
        if sub not in covered:
            errors.append(f"§{sub}: no row in the claims table")
        for name in sorted(prose[sub] - in_table):
            errors.append(f"§{sub}: names `{name}`, which the claims table does not")

    all_rs = None
    checked = {}
    for sub, claim, names, untested in rows:
        if untested or not names:
            (errors if strict or not untested else warnings).append(
                f"§{sub}: {'no test yet' if untested else 'no test named'}: {claim}")
            continue
        for path, name in names:
            if path is not None:
                if read(path) is None:
                    errors.append(f"§{sub}: `{name}`: no file {path}")
                    continue
                if not defines(read(path), name):
                    errors.append(f"§{sub}: `{name}` is not a test of {path}")
                    continue
            else:
                all_rs = all_rs or rust_files()
                if not any(defines(read(p), name) for p in all_rs):
                    errors.append(f"§{sub}: `{name}` does not exist")
                    continue
            if name in checked:
                continue
            outcome = ran.get(name, set())
            checked[name] = outcome
            where = f" ({path})" if path else ""
            if "FAILED" in outcome:
                errors.append(f"§{sub}: `{name}`{where} FAILED")
            elif "ok" not in outcome:
                hint = " (tests of proto/fuzz run apart: pass their log too)" if path and path.startswith("proto/fuzz/") else ""
                state = "was ignored" if "ignored" in outcome else "did not run"
                errors.append(f"§{sub}: `{name}`{where} {state}{hint}")

    for w in warnings:
        print(f"warning: {w}")
    for e in errors:
        print(f"error: {e}")
    ok = sum(1 for o in checked.values() if o == {"ok"})
    print(f"SPEC.md §11: {len(rows)} claims, {len(checked)} tests named, {ok} passed in this run; "
          f"{len(warnings)} without a test; {len(errors)} error(s)")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
