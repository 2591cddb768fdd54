"""Summarise mutmut 3's results (mutants/**/*.meta) per module: generated, killed, survived, no tests,
timeouts, not yet run; survivors listed with their one-line fate from benchmarks/mutation/fates.txt
("<mutant name or fnmatch pattern> | <fate>", e.g. "equivalent: only changes an error message").

    python benchmarks/mutation/report.py [path prefix ...]   # only the modules under them, e.g. samplers/ control/
"""

import fnmatch
import json
import sys
from collections import Counter
from pathlib import Path

STATUS = {1: "killed", 3: "killed", 0: "survived", 5: "no tests", 33: "no tests", 36: "timeout", -24: "timeout",
          24: "timeout", 152: "timeout", 255: "timeout", None: "not run"}
root = Path(__file__).resolve().parents[2]
fates = []
fates_file = root / "benchmarks/mutation/fates.txt"
if fates_file.exists():
    for line in fates_file.read_text().splitlines():
        if "|" in line and not line.startswith("#"):
            pat, fate = (p.strip() for p in line.split("|", 1))
            fates.append((pat, fate))

rows, survivors = [], []
prefixes = tuple(sys.argv[1:]) or ("",)
for meta in sorted((root / "mutants/scoresolve").rglob("*.py.meta")):
    if not str(meta.relative_to(root / "mutants/scoresolve")).startswith(prefixes):
        continue
    codes = json.loads(meta.read_text())["exit_code_by_key"]
    c = Counter(STATUS.get(v, "suspicious") for v in codes.values())
    mod = str(meta.relative_to(root / "mutants")).removesuffix(".meta")
    rows.append((mod, len(codes), c))
    for k, v in codes.items():
        if STATUS.get(v) in ("survived", "no tests"):
            fate = next((f for p, f in fates if fnmatch.fnmatch(k, p)), "UNEXPLAINED")
            survivors.append((k, STATUS[v], fate))

print("| module | generated | killed | survived | no tests | timeout | not run "
      "| equivalent (of survived + no tests) | score |")
print("|---|---|---|---|---|---|---|---|---|")
tot = Counter()
n_tot = 0
for mod, n, c in rows:
    prefix = mod[:-3].replace("/", ".") + "."
    eq = sum(1 for k, _, f in survivors if f.startswith("equivalent") and k.startswith(prefix))
    run = n - c["not run"]
    denom = run - eq
    score = f"{100 * (c['killed'] + c['timeout']) / denom:.1f}%" if denom else "-"
    print(f"| {mod} | {n} | {c['killed']} | {c['survived']} | {c['no tests']} | {c['timeout']} | {c['not run']} "
          f"| {eq} | {score} |")
    tot.update(c)
    tot["equivalent"] += eq
    n_tot += n
run = n_tot - tot["not run"]
denom = run - tot["equivalent"]
print(f"| **all** | {n_tot} | {tot['killed']} | {tot['survived']} | {tot['no tests']} | {tot['timeout']} | "
      f"{tot['not run']} | {tot['equivalent']} | {100 * (tot['killed'] + tot['timeout']) / max(denom, 1):.1f}% |")
print("\nScore = (killed + timeout) / (run − equivalent); a timeout counts as detected.\n")
print("## Survivors and their fate\n")
for k, st, fate in survivors:
    print(f"- `{k}` ({st}): {fate}")
