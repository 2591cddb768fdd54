#!/usr/bin/env bash
# Mutation score of the numerical modules (mutmut 3; configuration in pyproject.toml [tool.mutmut]).
# Reproduces benchmarks/mutation/REPORT.md's counts:   bash benchmarks/mutation/run.sh [module ...]
#                                  or, for a seeded sample of mutants:   bash benchmarks/mutation/run.sh --list FILE
# Modules run one after another (results are kept in mutants/ between runs); JOBS=2 by default.
set -euo pipefail
cd "$(dirname "$0")/../.."
export OMP_NUM_THREADS=1 HYPOTHESIS_PROFILE=mutation
unset PYTHONPATH  # mutmut puts its mutated copy (mutants/) first on sys.path
if [ "${1:-}" = "--list" ]; then  # mutant names, one per line (benchmarks/mutation/sample_*.txt)
    mutmut run --max-children "${JOBS:-2}" $(cat "$2") || true
    python benchmarks/mutation/report.py
    exit 0
fi
modules=("$@")
[ ${#modules[@]} -gt 0 ] || modules=(sde timegrid predictors correctors ode targets.mixture metrics likelihood
    samplers._common samplers.exponential samplers.classical samplers.edm samplers.unipc samplers.unipc_bh samplers.kdiffusion
    samplers.adaptive samplers.adaptive_ms samplers.brownian control.projected control.inverse control.guidance
    control.smc control.encode scalegrid)
for m in "${modules[@]}"; do
    mutmut run --max-children "${JOBS:-2}" "scoresolve.${m}.*" || true
done
python benchmarks/mutation/report.py
