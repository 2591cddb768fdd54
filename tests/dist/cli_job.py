"""Run a ``scoresolve`` command inside a process group this script initialised itself (as a user's
own program would), then check the command left the group alone.

    python -m torch.distributed.run --standalone --nproc-per-node N tests/dist/cli_job.py COMMAND [ARGS...]
"""

import sys

import torch
import torch.distributed as dist

from scoresolve.cli import main as scoresolve_main


def main() -> int:
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rc = scoresolve_main(sys.argv[1:])
    assert dist.is_initialized(), "the command destroyed the caller's process group"
    dist.barrier()
    dist.destroy_process_group()
    return rc


if __name__ == "__main__":
    sys.exit(main())
