"""A stage's command line: its config resolved from defaults, ``--config FILE`` and ``--key value`` flags, ``--help``,
the launch check, then ``main(cfg, **flags)``. Every stage (``rlhf.stages.Stage.cli``) and tool (``rlhf plan``,
``rlhf pipeline``) runs through :func:`stage_cli`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence, TypeVar

T = TypeVar("T")


def stage_cli(cls: type[T], defaults_file: str | Path | None, main, argv: Sequence[str],
              extra_flags: Sequence[str] = (), shards: bool = False) -> int:
    """The body of every stage's command: resolve the config, then ``main(cfg, **flags)``.

    ``--help`` prints every key with its value resolved from the other arguments (defaults < ``--config``
    file < flags) and its help, and runs nothing. Config mistakes end with one line naming the key (exit 2),
    never a traceback. ``shards``: the stage wraps its model itself under FSDP (:attr:`Stage.shards`), so an
    FSDP launch on a CPU machine is allowed.
    """
    import sys

    from rlhf.core.config import ConfigError, describe, load_config

    wants_help = any(a in ("-h", "--help") for a in argv)
    argv = [a for a in argv if a not in ("-h", "--help")]
    try:
        cfg, flags = load_config(cls, argv, defaults_file, extra_flags)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if wants_help:
        extra = "".join(f" [--{name}]" for name in extra_flags)
        print(f"usage: [--config FILE.yaml] [--section.key VALUE ...]{extra}\n{(cls.__doc__ or '').strip()}\n"
              "Values below: the defaults, then --config FILE, then the flags given with --help.")
        print("\n".join(describe(cfg)))
        return 0
    from rlhf.core.runtime import launch_problem

    # A ZeRO/FSDP launch this machine (or this stage) cannot run: refused before any model or run folder.
    problem = launch_problem(shards=shards)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    try:
        result = main(cfg, **flags)
    except ConfigError as err:  # a value only the stage can judge (e.g. against the loaded model's depth)
        print(f"error: {err}", file=sys.stderr)
        return 2
    return result if isinstance(result, int) else 0
