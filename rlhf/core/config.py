"""Stage configs: dataclasses whose defaults are the stage's defaults, YAML presets and command-line overrides.

Every stage has one dataclass (nested sub-configs allowed). Values come from, in order:
the dataclass defaults, a YAML file given with ``--config FILE``, then ``--section.key VALUE`` flags.
Unknown keys and values of the wrong type raise :class:`ConfigError` naming the key, so a typo
never silently falls back to a default. As in TRL's config classes, every field carries a one-line
``metadata={"help": ...}`` (a section's help is its class docstring); ``--help`` prints each key with its
resolved value and that help. Every numeric field also declares its valid values, ``"range": "(0, inf)"`` in
interval notation (``[``/``]`` inclusive, ``(``/``)`` exclusive, ``inf`` unbounded); :func:`from_dict` refuses a
value outside it in one line naming the key and the range, so a stage never starts on a learning rate of -1.
"""
from __future__ import annotations

import dataclasses
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal, Sequence, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

# A number as YAML 1.1 may leave it a string ("1e-4"): digits, optional fraction, optional exponent.
_SCIENTIFIC = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")

T = TypeVar("T")


class ConfigError(ValueError):
    """A config key is unknown, or its value has the wrong type or lies outside its range."""


_RANGE = re.compile(r"([\[(])\s*([^,\s]+)\s*,\s*([^,\s]+)\s*([\])])")


def parse_range(text: str) -> tuple[float, float, bool, bool]:
    """``"[1, inf)"`` -> (low, high, low included, high included); ValueError for anything else."""
    m = _RANGE.fullmatch(text.strip())
    if m is None:
        raise ValueError(f"not an interval like [0, 1] or (0, inf): {text!r}")
    low, high = float(m.group(2)), float(m.group(3))  # float() reads inf and -inf
    if low > high:
        raise ValueError(f"empty interval: {text!r}")
    return low, high, m.group(1) == "[", m.group(4) == "]"


def in_range(value: float, text: str) -> bool:
    low, high, low_in, high_in = parse_range(text)
    return (low < value or (low_in and value == low)) and (value < high or (high_in and value == high))


def _check_range(f: dataclasses.Field, value: Any, key: str) -> None:
    """A number outside the field's declared ``range`` is refused, naming the key and the range."""
    text = f.metadata.get("range")
    if text is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    # math.isnan: NaN compares false with everything, so it is outside every range
    if value != value or not in_range(value, text):
        raise ConfigError(f"{key}: {value!r} is outside its range {text}")


def check_ranges(config: Any, prefix: str = "") -> None:
    """Every numeric field of ``config`` and of its sections inside its declared range. :func:`from_dict` checks
    what a file or flag gives; a stage config's ``__post_init__`` calls this for configs built in code."""
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            check_ranges(value, f"{prefix}{f.name}.")
        else:
            _check_range(f, value, f"{prefix}{f.name}")


# Settings every training stage shares, declared once: one name, one help, one range (issue 27). A stage's train
# section lists the ones it has with its own default, ``learning_rate: float = shared_field("learning_rate", 2e-4)``;
# the "off" values mean the same everywhere (max_steps 0: train.epochs decide; save_steps 0: only at the end).
SHARED_TRAIN_FIELDS: dict[str, dict[str, str]] = {
    "max_steps": {"help": "optimisation steps to run (an RL step: generate, score, update); 0: train.epochs decide "
                          "(the RL stage has no epochs: >= 1 there)", "range": "[0, 10000000]"},
    "learning_rate": {"help": "peak learning rate (AdamW)", "range": "(0, inf)"},
    "lr_scheduler": {"help": "any transformers scheduler name: linear, cosine, constant ..."},
    "warmup_steps": {"help": "steps of linear learning-rate warm-up", "range": "[0, 10000000]"},
    "weight_decay": {"help": "AdamW weight decay", "range": "[0, inf)"},
    "max_grad_norm": {"help": "clip the gradient norm to this (0: no clipping)", "range": "[0, inf)"},
    "grad_accum": {"help": "optimiser step every N micro-batches (gradient accumulation)", "range": "[1, 1000000]"},
    "save_steps": {"help": "checkpoint every N optimisation steps and at the end (resume with --resume); 0: only at "
                           "the end (the reward stage also checkpoints each epoch's end)", "range": "[0, 10000000]"},
    "save_total_limit": {"help": "keep the newest N checkpoints (0: keep all)", "range": "[0, 1000000]"},
}


def shared_field(name: str, default: Any) -> Any:
    """The shared train setting ``name`` (:data:`SHARED_TRAIN_FIELDS`) with this stage's default."""
    return dataclasses.field(default=default, metadata=SHARED_TRAIN_FIELDS[name])


class RenamedKeys(typing.NamedTuple):
    """A stage's keys of earlier versions and their names now: a config still using one is refused in one line
    naming the new key (``reward config: train.lr was renamed to train.learning_rate``), before any model loads.
    A key names a leaf (``train.lr``) or a section (``ppo``: every ``ppo.*`` moved under ``update.*``); the longest
    match wins. ``[]`` stands for any item of a list (``policies[].path``)."""

    stage: str
    keys: dict[str, str]

    def check(self, tree: dict[str, Any]) -> None:
        for path in _dotted_paths(tree):
            parts = path.split(".")
            for cut in range(len(parts), 0, -1):
                old = ".".join(parts[:cut])
                if old in self.keys:
                    new = ".".join([self.keys[old], *parts[cut:]])
                    raise ConfigError(f"{self.stage} config: {path} was renamed to {new}")


def _dotted_paths(tree: Any, prefix: str = "") -> list[str]:
    """Every leaf of a nested mapping as a dotted path (``train.lr``); a list's mappings as ``key[].leaf``."""
    if isinstance(tree, list) and any(isinstance(item, dict) for item in tree):
        return [p for item in tree if isinstance(item, dict) for p in _dotted_paths(item, prefix + "[]")]
    if not isinstance(tree, dict) or not tree:
        return [prefix] if prefix else []
    return [p for key, value in tree.items() for p in _dotted_paths(value, f"{prefix}.{key}" if prefix else str(key))]


@dataclasses.dataclass
class RunConfig:
    """Where a run writes and how it is tracked; shared by every stage."""

    output_dir: str = dataclasses.field(default="runs", metadata={"help": "runs/<stage>-<time>/ is made under this"})
    run_name: str = dataclasses.field(default="", metadata={"help": "empty: <stage>-<YYYYmmdd-HHMMSS>"})
    seed: int = dataclasses.field(default=0,
                                  metadata={"help": "seed of the run (data order, initialisation, sampling)",
                                            "range": "[0, 4294967295]"})
    device: str = dataclasses.field(default="auto", metadata={
        "help": "auto (CUDA when present, else CPU), cpu or cuda; decided by rlhf.core.runtime.select_device"})
    wandb_project: str = dataclasses.field(default="rlhf", metadata={"help": "W&B project"})
    wandb_mode: str = dataclasses.field(default="offline",
                            metadata={"help": "offline (sync later with `wandb sync`), online or disabled"})
    tags: list[str] = dataclasses.field(default_factory=list, metadata={"help": "W&B tags"})
    log_every: int = dataclasses.field(default=1, metadata={"help": "log metrics every N optimisation steps",
                                                            "range": "[1, 10000000]"})
    trackers: list[str] = dataclasses.field(default_factory=lambda: ["wandb"], metadata={
        "help": "where metrics go besides metrics.jsonl: wandb, tensorboard (<run>/tensorboard), trackio"})
    report_to: list[str] = dataclasses.field(default_factory=list, metadata={
        "help": "SFT and DPO: the HF/TRL Trainer's own report_to integrations (e.g. [tensorboard]); empty = none"})

    def __post_init__(self) -> None:
        check_trackers(self.trackers)  # one line naming the key, before any model loads


TRACKERS = {"wandb": "wandb", "tensorboard": "tensorboard", "trackio": "trackio"}  # name -> the module it needs


def check_trackers(trackers: Sequence[str]) -> None:
    """Unknown or uninstalled trackers: one line naming ``run.trackers`` (``RunConfig`` calls this; it lives here,
    not in ``rlhf.core.tracking``, which builds on this module)."""
    import importlib.util

    for name in trackers:
        if name not in TRACKERS:
            raise ConfigError(f"run.trackers: unknown tracker {name!r} (known: {', '.join(TRACKERS)})")
        if importlib.util.find_spec(TRACKERS[name]) is None:
            raise ConfigError(f"run.trackers: {name} is not installed (pip install 'rlhf-pipeline[tracking]' or "
                              f"pip install {name}), or drop it from run.trackers")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; convert only where lossless (int -> float)."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError:
                continue
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        if value not in get_args(tp):
            raise ConfigError(f"{key}: expected one of {list(get_args(tp))}, got {value!r}")
        return value
    if origin in (list, Sequence, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        (item_tp, *_) = get_args(tp) or (Any,)
        return [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        _, val_tp = get_args(tp) or (Any, Any)
        return {k: _coerce(v, val_tp, f"{key}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping of {tp.__name__} fields, got {value!r}")
        return from_dict(tp, value, prefix=f"{key}.")
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        # YAML 1.1 reads "1e-4" (no dot) as a string; a number written that way is still a number.
        if isinstance(value, str) and _SCIENTIFIC.fullmatch(value.strip()):
            return float(value)
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        # YAML turns `--x 1e-5` or `--name 123` into numbers; a str field accepts their text.
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    return value


def from_dict(cls: type[T], values: dict[str, Any], prefix: str = "") -> T:
    """Build ``cls`` from a (nested) mapping; unknown keys and wrong types raise ConfigError."""
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    renamed = getattr(cls, "renamed_keys", None)
    if not prefix and isinstance(renamed, RenamedKeys):
        renamed.check(values)
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(
            f"unknown config key {prefix}{unknown[0]!s} (known keys of {prefix or cls.__name__}: "
            f"{', '.join(sorted(fields))})"
        )
    kwargs = {name: _coerce(_onto_default(fields[name], val), hints[name], f"{prefix}{name}")
              for name, val in values.items()}
    for name, val in kwargs.items():
        _check_range(fields[name], val, f"{prefix}{name}")
    return cls(**kwargs)


def _onto_default(f: dataclasses.Field, value: Any) -> Any:
    """A mapping given for a section is layered on that field's own default, not on the section class's.

    ``lora: {r: 8}`` for a stage whose default is ``LoraConfig(layers=[-8, ..., -1])`` keeps those layers,
    as a YAML file of defaults would: the dataclass defaults *are* the stage's defaults."""
    if not isinstance(value, dict):
        return value
    if f.default_factory is not dataclasses.MISSING:
        default = f.default_factory()
    elif f.default is not dataclasses.MISSING:
        default = f.default
    else:
        return value
    if dataclasses.is_dataclass(default) and not isinstance(default, type):
        default = dataclasses.asdict(default)
    return _merge(default, value) if isinstance(default, dict) else value


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, val in override.items():
        if isinstance(val, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], val)
        else:
            out[key] = val
    return out


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = tree
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--{dotted}: {part} is not a section")
    # A mapping given for a mapping adds to it (--ppo.overrides '{rl.algo: grpo}' keeps the preset's other keys).
    node[leaf] = _merge(node[leaf], value) if isinstance(value, dict) and isinstance(node.get(leaf), dict) else value


def _parse_flag_value(raw: str) -> Any:
    """Command-line values are read as YAML scalars/lists: `0.05`, `true`, `[q_proj,v_proj]`, `null`."""
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: top level must be a mapping of config keys")
    return loaded


def parse_overrides(argv: Sequence[str]) -> tuple[str | None, dict[str, Any], list[str]]:
    """Split argv into (--config file, {dotted key: value}, leftover positional/bare flags).

    Accepts `--key value`, `--key=value`, and bare `--flag` (= true) when followed by another flag.
    Leftovers are stage flags such as `--resume` that are not config keys.
    """
    config_file: str | None = None
    overrides: dict[str, Any] = {}
    rest: list[str] = []
    i = 0
    argv = list(argv)
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("--"):
            rest.append(arg)
            i += 1
            continue
        key, eq, inline = arg[2:].partition("=")
        if eq:
            raw: str | None = inline
            i += 1
        elif i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            raw = argv[i + 1]
            i += 2
        else:
            raw = None
            i += 1
        key = key.replace("-", "_")
        if key == "config":
            if raw is None:
                raise ConfigError("--config needs a file")
            config_file = raw
        else:
            overrides[key] = True if raw is None else _parse_flag_value(raw)
    return config_file, overrides, rest


def load_config(cls: type[T], argv: Sequence[str] = (), defaults_file: str | Path | None = None,
                extra_flags: Sequence[str] = ()) -> tuple[T, dict[str, Any]]:
    """Resolve a stage config: dataclass defaults < defaults_file < --config FILE < --key value flags.

    ``extra_flags`` are the non-config flags the stage accepts (e.g. ``resume``); they are returned
    in the second value instead of being treated as config keys.
    """
    config_file, overrides, rest = parse_overrides(argv)
    if rest:
        raise ConfigError(f"unexpected argument {rest[0]!r} (flags are --key value)")
    tree: dict[str, Any] = {}
    if defaults_file is not None:
        tree = load_yaml(defaults_file)
    if config_file is not None:
        tree = _merge(tree, load_yaml(config_file))
    flags: dict[str, Any] = {}
    for dotted, value in overrides.items():
        if dotted in extra_flags:
            flags[dotted] = value
        else:
            _set_dotted(tree, dotted, value)
    return from_dict(cls, tree), flags


def save_config(cfg: Any, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False), encoding="utf-8")


def field_help(f: dataclasses.Field, tp: Any = None) -> str:
    """A field's one-line help: its ``metadata["help"]``, else (a section) its class's own docstring."""
    text = f.metadata.get("help", "")
    if not text and dataclasses.is_dataclass(tp):
        doc = tp.__doc__ or ""
        # dataclass() writes "Name(field: type = ...)" as the docstring of a class without one: not help
        text = "" if doc.startswith(f"{tp.__name__}(") else doc.strip().splitlines()[0] if doc.strip() else ""
    if text and get_origin(tp) is Literal:
        text += f" ({' | '.join(str(choice) for choice in get_args(tp))})"
    if "range" in f.metadata:
        text += f" (range {f.metadata['range']})"
    return text.strip()


def _flow(value: Any) -> str:
    """A value as one line of YAML, as it would be given on the command line."""
    text = yaml.safe_dump(value, default_flow_style=True, width=1 << 20, sort_keys=False)
    return text.removesuffix("\n...\n").strip()  # a bare scalar is dumped as a document: "x\n...\n"


def describe(cfg: Any, prefix: str = "") -> list[str]:
    """Every key of a resolved config: ``--key value`` then its help, each section under its own help."""
    lines: list[str] = []
    hints = get_type_hints(type(cfg))
    for f in dataclasses.fields(cfg):
        value, tp, key = getattr(cfg, f.name), hints[f.name], f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            lines += ["", f"{key}: {field_help(f, type(value))}", *describe(value, f"{key}.")]
        else:
            lines += [f"  --{key} {_flow(_plain(value))}",
                      f"        {field_help(f, tp)}"]
    return lines


def _plain(value: Any) -> Any:
    """Lists of dataclasses (e.g. data.mixture) as the mappings a YAML file or flag would give."""
    if isinstance(value, list):
        return [dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v for v in value]
    return value
