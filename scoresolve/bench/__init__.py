"""The benchmark harness: every registered sampler, quality against *counted* NFE.

``scoresolve bench --problem ring8 --sde vp --nfe 10,20,50 --out results/ring8`` runs one cell
per (problem, sde, method, budget, seed), appends each row atomically to
``results/ring8/results.jsonl`` (re-running resumes), and ``scoresolve bench report DIR``
writes the markdown tables and PNG plots.  From Python::

    from scoresolve.bench import BenchConfig, analytic_problem, run_bench, write_report
"""

from .plan import BenchConfig, Budget, Cell
from .problems import PROBLEMS, Problem, analytic_problem, run_dir_problem, user_problem
from .quality import Judge
from .report import write_report
from .runner import run_bench
from .store import ResultStore

__all__ = [
    "BenchConfig", "Budget", "Cell", "Problem", "PROBLEMS", "analytic_problem", "user_problem",
    "run_dir_problem", "Judge", "run_bench", "write_report", "ResultStore",
]
