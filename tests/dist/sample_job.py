"""Run under torchrun (or alone): draw mixture samples and likelihood-free stats into a directory.

    python -m torch.distributed.run --standalone --nproc-per-node N tests/dist/sample_job.py \\
        OUT NUM CHUNK [METHOD] [SLEEP]
"""

import os
import sys
import time

import torch
import torch.distributed as dist

import scoresolve as ss
from scoresolve.distributed import likelihood_to_dir, sample_to_dir


def run_job(out: str, num: int, chunk: int, method: str = "em", pause: float = 0.0) -> None:
    """The job itself, in whatever process group is current (or none)."""
    sde = ss.VPSDE()
    target = ss.targets.GaussianMixture.ring(8, 2.0, 0.2)
    score = target.score_fn(sde)
    if pause:  # slow the job down so a test can kill it part-way
        inner = score

        def score(x, t):
            time.sleep(pause)
            return inner(x, t)

    if method == "likelihood":
        data = target.sample(num, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
        likelihood_to_dir(score, sde, data, out, seed=7, chunk=chunk, trace="hutchinson", probes=2,
                          rtol=1e-3, atol=1e-3)
    else:
        sample_to_dir(score, sde, (2,), num, out, method=method, seed=7, chunk=chunk, steps=20)


def main() -> None:
    out, num, chunk = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    method = sys.argv[4] if len(sys.argv) > 4 else "em"
    pause = float(sys.argv[5]) if len(sys.argv) > 5 else 0.0
    torch.set_num_threads(1)
    if "RANK" in os.environ:
        dist.init_process_group("gloo")
    run_job(out, num, chunk, method, pause)
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
