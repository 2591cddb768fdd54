#!/usr/bin/env bash
# Mutation score of the numerical modules (mutmut 3; configuration in pyproject.toml [tool.mutmut]).
# Reproduces benchmarks/mutation/REPORT.md's counts:   bash benchmarks/mutation/run.sh [module ...]
# Modules run one after another (results are kept in mutants/ between runs); JOBS=2 by default.
set -euo pipefail
cd "$(dirname "$0")/../.."
export OMP_NUM_THREADS=1 HYPOTHESIS_PROFILE=mutation
unset PYTHONPATH  # mutmut puts its mutated copy (mutants/) first on sys.path
modules=("$@")
[ ${#modules[@]} -gt 0 ] || modules=(sde timegrid predictors correctors ode targets.mixture metrics likelihood
    samplers._common samplers.exponential samplers.classical samplers.edm samplers.unipc samplers.unipc_bh samplers.kdiffusion)
for m in "${modules[@]}"; do
    mutmut run --max-children "${JOBS:-2}" "scoresolve.${m}.*" || true
done
python benchmarks/mutation/report.py
