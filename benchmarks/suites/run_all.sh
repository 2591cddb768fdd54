#!/usr/bin/env bash
# Run (or resume) the committed suites and regenerate their reports; prints wall and CPU time.
# Usage (from anywhere):  benchmarks/suites/run_all.sh [suite ...] [-- extra bench options]
#   e.g.  benchmarks/suites/run_all.sh ring8_vp -- --threads 1
set -euo pipefail
cd "$(dirname "$0")/../.."
PY="${PYTHON:-python}"
suites=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do suites+=("$1"); shift; done
[ "${1:-}" = "--" ] && shift
[ ${#suites[@]} -eq 0 ] && suites=(ring8_vp ring8_ve gmm64_vp)
TIMEFORMAT='%R s wall, %U s user + %S s sys CPU'
for s in "${suites[@]}"; do
    echo "== $s (load average before: $(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo n/a))"
    time "$PY" -m scoresolve bench "@benchmarks/suites/$s.args" --no-progress "$@"
done
