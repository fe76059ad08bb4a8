"""``rlhf annotate``: serve the app, fill it with items, manage annotators, measure agreement, export.

Anyone who can open the database file is an admin: the CLI does not ask for tokens.
"""
from __future__ import annotations

import argparse
import ipaddress
import json
import sys
from pathlib import Path
from typing import Sequence

from rlhf.annotate.store import ItemConflict, NewItem, Store
from rlhf.data.records import RecordError

DEFAULT_K = 2
EXAMPLES = """typical session:
  rlhf annotate add-annotator lead --admin --db prefs.sqlite   # prints the admin token
  rlhf annotate add-annotator alice --db prefs.sqlite          # prints alice's token
  rlhf annotate add-annotator bob --db prefs.sqlite
  rlhf annotate import items.jsonl --db prefs.sqlite --k 2     # each item to 2 annotators
  rlhf annotate serve --db prefs.sqlite --port 8000
  rlhf annotate stats --db prefs.sqlite
  rlhf annotate export prefs.jsonl --db prefs.sqlite
  rlhf annotate rotate-token bob --db prefs.sqlite             # bob's token leaked: prints a new one
  rlhf annotate revoke-token carol --db prefs.sqlite           # carol has left: no token works for her
"""


def _existing_store(db: str) -> Store:
    # Reading commands must not create an empty database from a mistyped path.
    if not Path(db).is_file():
        raise FileNotFoundError(f"no database at {db} (create it with `rlhf annotate add-annotator` or `import`)")
    return Store(db)


def _store_and_assign(store: Store, items: list[NewItem], lines: list[int] | None, origin: str,
                      k: int, seed: int) -> int:
    try:
        added, present = store.add_items(items)
    except ItemConflict as err:
        line = lines[err.index] if lines else None
        raise RecordError(origin, line, err.field, err.message) from None
    print(f"{origin}: {len(added)} new items, {present} already stored")
    _assign(store, k, seed)
    return 0


def _assign(store: Store, k: int, seed: int) -> None:
    annotators = store.annotators()
    if len(annotators) < k:
        print(f"not assigned yet: each item needs {k} annotators and {len(annotators)} exist; add annotators, "
              f"then run `rlhf annotate assign --db {store.path} --k {k}`", file=sys.stderr)
        return
    added = store.assign(k, seed=seed)
    loads = store.assignment_loads()
    print(f"assigned {added} new (item, annotator) pairs, k={k}; items per annotator: "
          + ", ".join(f"{name} {n}" for name, n in loads.items()))


# ---------------------------------------------------------------- subcommands


def cmd_serve(args) -> int:
    from rlhf.annotate.app import create_app
    from rlhf.annotate.serving import serve_forever

    store_path = _existing_store(args.db).path
    try:
        loopback = ipaddress.ip_address(args.host).is_loopback
    except ValueError:
        loopback = args.host == "localhost"
    if not loopback:
        print(f"warning: serving on {args.host} over plain HTTP sends tokens unencrypted; "
              "put it behind an HTTPS proxy", file=sys.stderr)
    app = create_app(store_path, guidelines_path=args.guidelines)
    print(f"annotation server on http://{args.host}:{args.port} (database {store_path})", file=sys.stderr)
    serve_forever(app, args.host, args.port)
    return 0


def cmd_import(args) -> int:
    from rlhf.annotate.item_files import read_item_file

    items, lines = read_item_file(args.file)
    return _store_and_assign(Store(args.db), items, lines, args.file, args.k, args.seed)


def cmd_make_tasks(args) -> int:
    from rlhf.annotate.sampling import sample_items
    from rlhf.data.records import read_prompts

    prompts = read_prompts(args.prompts, limit=args.n)
    items = sample_items(prompts, args.policy, args.policy2, max_new_tokens=args.max_new_tokens, seed=args.seed,
                         device=args.device)
    return _store_and_assign(Store(args.db), items, None, args.prompts, args.k, args.seed)


def cmd_assign(args) -> int:
    _assign(_existing_store(args.db), args.k, args.seed)
    return 0


def cmd_add_annotator(args) -> int:
    token = Store(args.db).add_annotator(args.name, is_admin=args.admin)
    role = "admin" if args.admin else "annotator"
    print(f"{role} {args.name} added; their token (shown once, only its hash is stored):", file=sys.stderr)
    print(token)  # alone on stdout, so scripts can capture it
    return 0


def cmd_rotate_token(args) -> int:
    token = _existing_store(args.db).rotate_token(args.name)
    print(f"{args.name}: old token revoked and sessions ended; their new token (shown once):", file=sys.stderr)
    print(token)
    return 0


def cmd_revoke_token(args) -> int:
    _existing_store(args.db).revoke_token(args.name)
    print(f"{args.name}: token revoked and sessions ended; their labels are kept "
          f"(`rlhf annotate rotate-token {args.name}` gives them a new token)", file=sys.stderr)
    return 0


def cmd_stats(args) -> int:
    from rlhf.annotate.stats import compute_stats, format_stats

    store = _existing_store(args.db)
    stats = compute_stats(store.labels(), store.counts(), store.skips())
    print(json.dumps(stats.to_dict(), indent=2) if args.json else format_stats(stats))
    return 0


def cmd_export(args) -> int:
    from rlhf.annotate.export import export_preferences

    summary = export_preferences(_existing_store(args.db), args.out)
    dropped = ", ".join(f"{d} {n}" for d, n in summary.dropped.items())
    print(f"wrote {summary.records} preference records from {summary.items_labelled} labelled items to {args.out} "
          f"(dropped as level A/B votes: {dropped})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rlhf annotate", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Collect HHH preference labels: serve the annotation app, fill it with items, manage "
                    "annotators, measure agreement, export preference records.",
        epilog=EXAMPLES)
    sub = parser.add_subparsers(dest="command", required=True)

    def with_db(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--db", required=True, metavar="FILE.sqlite", help="the annotation database")
        return p

    def with_assignment(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--k", type=int, default=DEFAULT_K, help="annotators per item, for agreement (default 2)")
        p.add_argument("--seed", type=int, default=0, help="seed for assignment tie-breaks (and sampling)")
        return p

    p = with_db(sub.add_parser("serve", help="run the annotation web app"))
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--guidelines", type=Path, default=None,
                   help="Markdown guidelines (default data/annotation_guidelines.md)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("import", help="add items from JSONL: prompt, response_a, response_b, id?, source?")
    p = with_assignment(with_db(p))
    p.add_argument("file")
    p.set_defaults(func=cmd_import)

    p = sub.add_parser("make-tasks", help="sample two responses per prompt from one or two policies")
    p = with_assignment(with_db(p))
    p.add_argument("--policy", required=True, help="zoo name, local folder or hub id")
    p.add_argument("--policy2", help="second policy: then one response from each (default: two samples of --policy)")
    p.add_argument("--prompts", required=True, help="file of rows with a 'prompt' field")
    p.add_argument("--n", type=int, default=None, help="use the first N prompts")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--device", default="auto", help="auto (CUDA when present, else CPU), cpu or cuda (rlhf.core.runtime)")
    p.set_defaults(func=cmd_make_tasks)

    p = with_assignment(with_db(sub.add_parser("assign", help="give every item k annotators (fills gaps only)")))
    p.set_defaults(func=cmd_assign)

    p = with_db(sub.add_parser("add-annotator", help="create an annotator and print their token"))
    p.add_argument("name")
    p.add_argument("--admin", action="store_true", help="may read stats and export over HTTP; gets no items")
    p.set_defaults(func=cmd_add_annotator)

    p = with_db(sub.add_parser("rotate-token", help="replace an annotator's token (prints the new one); "
                                                    "logs them out everywhere"))
    p.add_argument("name")
    p.set_defaults(func=cmd_rotate_token)

    p = with_db(sub.add_parser("revoke-token", help="lock an annotator out: no token works; logs them out"))
    p.add_argument("name")
    p.set_defaults(func=cmd_revoke_token)

    p = with_db(sub.add_parser("stats", help="counts, ties, Cohen's kappa and Krippendorff's alpha per dimension"))
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_stats)

    p = with_db(sub.add_parser("export", help="majority-vote preference records (JSONL) for reward-model training"))
    p.add_argument("out", metavar="OUT.jsonl")
    p.set_defaults(func=cmd_export)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        return int(args.func(args) or 0)
    except (ValueError, OSError, RuntimeError) as err:  # user-facing failures: no traceback
        for problem in getattr(err, "errors", None) or [err]:  # an items file lists every bad line
            print(f"error: {problem}", file=sys.stderr)
        return 1

if __name__ == "__main__":
    sys.exit(main())
