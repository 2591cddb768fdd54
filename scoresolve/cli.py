"""The ``scoresolve`` command: one sub-command per job, each implemented in its own module."""

from __future__ import annotations

import importlib
import sys

# sub-command -> "module:function"; each function takes the remaining argv and returns an exit code
COMMANDS = {
    "demo": "scoresolve.demo:main",
    "sample": "scoresolve.train.cli:sample_main",
    "train": "scoresolve.train.cli:train_main",
    "likelihood": "scoresolve.likelihood_cli:main",
    "bench": "scoresolve.bench.cli:main",
}

USAGE = "usage: scoresolve {" + ",".join(COMMANDS) + "} [options]   (scoresolve COMMAND -h for help)"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    cmd, rest = argv[0], argv[1:]
    if cmd not in COMMANDS:
        print(f"scoresolve: unknown command {cmd!r}; valid choices: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    mod, fn = COMMANDS[cmd].split(":")
    return int(getattr(importlib.import_module(mod), fn)(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
