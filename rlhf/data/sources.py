"""The shipped datasets (``data/``), each declared once as a :class:`Source`, and leak-free deterministic splits.

A :class:`Source` says everything a stage reads from one dataset: its file and licence, its preference pairs
(reward model, DPO, judge-free eval), SFT examples, RL prompts, evaluation items and few-shot examples.
:data:`SOURCES` holds them by name; the reward, SFT, RL, DPO and evaluation stages, ``rlhf data validate|stats``
and ``rlhf export`` read it, so a new dataset is one :func:`register` call here (plus its data file): see
:func:`pair_source` and README "How to extend".

| source | preference pairs (dimension) | SFT examples | conversation root |
| --- | --- | --- | --- |
| HH-RLHF harmless | chosen/rejected final Assistant turn (harmless) | chosen transcripts as chat | the first Human turn |
| TruthfulQA | a correct answer preferred to an incorrect one (honest) | question -> best answer | the question |
| TruthfulQA informative | the best answer preferred to a non-answer ("I have no comment."; honest) | as TruthfulQA | the question |
| DialogSum | reference summary preferred to a degraded one of the same dialogue (helpful) | "summarize" -> summary | the dialogue |
| DialogSum sampled | of two base-model summaries of a dialogue, the one nearer the reference (ROUGE-L; helpful) | "summarize" -> the nearer one | the dialogue |

Splits are by a hash of the *conversation*, not of the full prompt, so every prompt that continues one
conversation, and every pair built from one dialogue, lands in one split, and every run and machine agrees
on them: ``train`` (80 %), ``dev`` (10 %, model selection) and ``test`` (10 %, the held-out prompts no stage
trains on, used by evaluation). A conversation is its root (:func:`prompt_root`); roots whose pairs share an
answer (TruthfulQA's reworded questions: "Who is the richest person?" / "... in the world?") are one
conversation, except for stock answers given to more than ``STOCK_ROOTS`` roots ("I have no comment",
"Yes."). So no test prompt, first turn or answer (bar those stock answers) appears in ``train`` or ``dev``.
User files are split by the same rule (:func:`take_split`), and a file used whole for training
(``extra_files_split: train``) may hold no conversation of a shipped ``test`` split (:func:`check_train_file`).

``train`` is further halved by another hash of the conversation (:func:`partition_of`): the ``proxy`` half
trains the reward model the policies optimise (and DPO), the ``gold`` half the gold judge that measures them
(``data.partition``), so the gold never saw a prompt the proxy saw.
"""
from __future__ import annotations

import csv
import dataclasses
import functools
import gzip
import hashlib
import json
import os
import random
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Literal, Mapping, Sequence, TypeVar

from rlhf.data.prompts import Shot
from rlhf.data.records import (PreferenceRecord, RecordError, SFTRecord, load_records, messages_to_prompt,
                          prompt_to_messages, split_last_turn, transcript_to_messages)

Split = Literal["train", "dev", "test", "all"]
Partition = Literal["proxy", "gold", "all"]
R = TypeVar("R")

HH_HARMLESS = "hh-rlhf-harmless/pairs.jsonl.gz"
TRUTHFULQA = "truthfulqa/TruthfulQA.csv"
DIALOGSUM = "dialogsum/dialogsum.dev.jsonl"
DIALOGSUM_SAMPLED = "dialogsum/sampled_pairs.jsonl.gz"
SUMMARIZE_INSTRUCTION = "Summarize the following dialogue in one or two sentences.\n\n{dialogue}"
SPLIT_BUCKETS = {"train": (0, 80), "dev": (80, 90), "test": (90, 100)}
# An answer given to more roots than this is a stock phrase ("I have no comment" answers 79 TruthfulQA questions,
# "You're welcome." 9 HH chats): it ties no conversations together. At 5 the largest conversation holds 6 roots
# (TruthfulQA's reworded questions); at 8 one would hold 19.
STOCK_ROOTS = 5


def data_dir() -> Path:
    """The shipped ``data/`` folder (``$RLHF_DATA_DIR`` to point elsewhere)."""
    return Path(os.environ.get("RLHF_DATA_DIR", Path(__file__).resolve().parents[2] / "data"))


def _bucket(key: str, salt: str = "") -> int:
    return int(hashlib.sha256((salt + key).encode("utf-8")).hexdigest()[:8], 16)


def split_of(key: str) -> str:
    """The split of a conversation key (:func:`conversation_of`)."""
    bucket = _bucket(key) % 100
    return next(name for name, (lo, hi) in SPLIT_BUCKETS.items() if lo <= bucket < hi)


_FIRST_HUMAN_TURN = re.compile(r"(?:^|\n\n)Human:(.*?)(?=\n\n(?:Human|Assistant|System):|$)", re.S)


def prompt_root(prompt: str) -> str:
    """The conversation a prompt opens: an HH transcript's first Human turn, a DialogSum instruction's dialogue,
    else the prompt itself (a TruthfulQA question, a user's one-turn prompt)."""
    instruction = SUMMARIZE_INSTRUCTION.split("{dialogue}")[0]
    if prompt.startswith(instruction):
        return prompt[len(instruction):].strip()
    turn = _FIRST_HUMAN_TURN.search(prompt)
    return turn.group(1).strip() if turn else prompt.strip()


def _answer_roots(pairs: Iterable[PreferenceRecord]) -> dict[str, set[str]]:
    """answer text -> the roots of the prompts it answers (as chosen or rejected)."""
    roots: dict[str, set[str]] = defaultdict(set)
    for pair in pairs:
        for answer in (pair.chosen, pair.rejected):
            roots[answer].add(prompt_root(pair.prompt))
    return roots


@functools.lru_cache(maxsize=4)
def _conversations(root_dir: str) -> dict[str, str]:
    """root -> its conversation's key (the smallest root in it), for roots that share a non-stock answer with
    another root. Built from every shipped pair with many answers per root (HH, TruthfulQA); DialogSum's
    summaries are one per dialogue."""
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for load in [source.linking_pairs for source in SOURCES.values() if source.linking_pairs is not None]:
        try:
            answer_roots = _answer_roots(load(Path(root_dir)))
        except FileNotFoundError:  # a data folder without this source
            continue
        for roots in answer_roots.values():
            if 1 < len(roots) <= STOCK_ROOTS:
                first, *rest = sorted(roots)
                for root in rest:
                    a, b = sorted((find(first), find(root)))
                    parent[b] = a
    return {root: find(root) for root in list(parent)}


@functools.lru_cache(maxsize=4)
def _test_conversations(root_dir: str) -> frozenset[str]:
    """The conversations of every source's ``test`` split (what a training file may not hold)."""
    return frozenset(conversation_of(p) for source in SOURCES.values() for p in source.prompts("test"))


def conversation_of(prompt: str) -> str:
    """The key a prompt is split and partitioned by: its root, or its conversation's key where roots are joined."""
    root = prompt_root(prompt)
    return _conversations(str(data_dir())).get(root, root)


def stock_answers(source: str) -> set[str]:
    """The answers of a shipped source given to more than ``STOCK_ROOTS`` roots: the only texts that may appear
    on both sides of a split."""
    return {a for a, roots in _answer_roots(PREFERENCE_SOURCES[source]("all")).items() if len(roots) > STOCK_ROOTS}


def take_split(items: Iterable[R], split: Split, prompt: Callable[[R], str] = lambda r: r.prompt) -> list[R]:
    """The items of one split, by the conversation of ``prompt(item)``."""
    items = list(items)
    return items if split == "all" else [r for r in items if split_of(conversation_of(prompt(r))) == split]


def partition_of(prompt: str) -> str:
    """``proxy`` or ``gold``: the half of ``train`` a prompt's conversation belongs to (a hash independent of the
    split's)."""
    return ("proxy", "gold")[_bucket(conversation_of(prompt), salt="partition:") % 2]


def take_partition(items: Iterable[R], partition: Partition, prompt: Callable[[R], str] = lambda r: r.prompt) -> list[R]:
    items = list(items)
    return items if partition == "all" else [r for r in items if partition_of(prompt(r)) == partition]


# ---------------------------------------------------------------- HH-RLHF harmless


def _hh_all_pairs(path: Path) -> list[PreferenceRecord]:
    """Every pair of the HH-RLHF harmless file (transcripts: the final Assistant turns differ), unsplit."""
    records = []
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        for line in fh:
            row = json.loads(line)
            prompt, chosen = split_last_turn(row["chosen"])
            rejected_prompt, rejected = split_last_turn(row["rejected"])
            # Pairs whose prompts differ, or whose answers are equal/empty, teach nothing.
            if rejected_prompt != prompt or not chosen or not rejected or chosen == rejected:
                continue
            records.append(PreferenceRecord(prompt=prompt, chosen=chosen, rejected=rejected,
                                            dimension=["harmless"], source="hh-rlhf-harmless"))
    return records


def hh_harmless_pairs(split: Split = "all", path: str | Path | None = None) -> list[PreferenceRecord]:
    return take_split(_hh_all_pairs(Path(path) if path else data_dir() / HH_HARMLESS), split)


# ---------------------------------------------------------------- TruthfulQA


@dataclass
class TruthfulQAItem:
    question: str
    best_answer: str
    correct: list[str]
    incorrect: list[str]
    category: str

    @property
    def prompt(self) -> str:
        return self.question


def truthfulqa_items(split: Split = "all", path: str | Path | None = None) -> list[TruthfulQAItem]:
    path = Path(path) if path else data_dir() / TRUTHFULQA
    items = []
    with open(path, encoding="utf-8", newline="") as fh:
        for row in csv.DictReader(fh):
            answers = lambda cell: [a.strip() for a in cell.split("; ") if a.strip()]  # noqa: E731
            items.append(TruthfulQAItem(question=row["Question"].strip(), best_answer=row["Best Answer"].strip(),
                                        correct=answers(row["Correct Answers"]),
                                        incorrect=answers(row["Incorrect Answers"]), category=row["Category"]))
    return take_split(items, split)


def _question_pairs(items: Iterable[TruthfulQAItem], pairs_per_question: int = 3) -> list[PreferenceRecord]:
    """Correct > incorrect: the best answer first, then other correct answers, each against a different wrong one."""
    records = []
    for item in items:
        correct = [item.best_answer] + [c for c in item.correct if c != item.best_answer]
        for good, bad in list(zip(correct, item.incorrect))[:pairs_per_question]:
            if good != bad:
                records.append(PreferenceRecord(prompt=item.question, chosen=good, rejected=bad,
                                                dimension=["honest"], source="truthfulqa"))
    return records


def _truthfulqa_all_pairs(root_dir: Path) -> list[PreferenceRecord]:
    return _question_pairs(truthfulqa_items("all", root_dir / TRUTHFULQA))


def truthfulqa_pairs(split: Split = "all", pairs_per_question: int = 3) -> list[PreferenceRecord]:
    return _question_pairs(truthfulqa_items(split), pairs_per_question)


# ---------------------------------------------------------------- DialogSum


@dataclass
class DialogSumItem:
    fname: str
    dialogue: str
    summary: str
    topic: str

    @property
    def prompt(self) -> str:
        return SUMMARIZE_INSTRUCTION.format(dialogue=self.dialogue)


def dialogsum_items(split: Split = "all", path: str | Path | None = None) -> list[DialogSumItem]:
    path = Path(path) if path else data_dir() / DIALOGSUM
    with open(path, encoding="utf-8") as fh:
        items = [DialogSumItem(**{k: json.loads(line)[k] for k in ("fname", "dialogue", "summary", "topic")})
                 for line in fh if line.strip()]
    return take_split(items, split)


# Degraded summaries of the same dialogue: each keeps the dialogue's words, so the helpful head must read the
# summary against the dialogue to rank it, not just match topics (the reference against another dialogue's
# summary, the only pair before, was 0.97 easy). That easy pair stays for a minority of dialogues.
DIALOGSUM_OTHER_SHARE = 0.25
_PERSON_TAG = re.compile(r"#Person\d+#")
_NAME = re.compile(r"\b[A-Z][a-z]+\b")
_NOT_NAMES = {"Mr", "Mrs", "Ms", "Dr", "Miss", "The", "A", "An", "He", "She", "They", "It", "His", "Her", "Their",
              "This", "That", "These", "Those", "And", "But", "Then", "So", "Both", "After", "When", "In", "On"}
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def truncate_summary(summary: str, others: Iterable[str] = ()) -> str | None:
    """Its first third of words (at least one): an incomplete summary. Lengthened until it begins none of
    ``others`` (the other dialogues' summaries), so that it belongs to one dialogue and one split: a cut such as
    "#Person1# and #Person2# are going" begins several summaries."""
    words, others = summary.split(), [o for o in others if o.strip() != summary.strip()]
    for n in range(max(1, len(words) // 3), len(words)):
        cut = " ".join(words[:n])
        if not any(o.startswith(cut + " ") or o.strip() == cut for o in others):
            return cut
    return None


def swap_entities(summary: str) -> str | None:
    """The first two people swapped everywhere (``#Person1#`` <-> ``#Person2#``, or two names): who did what is
    wrong. With one speaker tag only, it becomes the other speaker. None when there is nobody to swap."""
    tags = list(dict.fromkeys(_PERSON_TAG.findall(summary)))
    if len(tags) == 1:
        tags.append("#Person2#" if tags[0] == "#Person1#" else "#Person1#")
        return summary.replace(tags[0], tags[1])
    names = tags or list(dict.fromkeys(n for n in _NAME.findall(summary) if n not in _NOT_NAMES))
    if len(names) < 2:
        return None
    first, second = names[:2]
    pattern = re.compile("|".join(re.escape(n) if n.startswith("#") else rf"\b{re.escape(n)}\b" for n in (first, second)))
    return pattern.sub(lambda m: second if m.group(0) == first else first, summary)


def shuffle_sentences(summary: str, rng: random.Random) -> str | None:
    """Its sentences in another order (seeded): the same facts, told out of sequence. None for one sentence."""
    sentences = _SENTENCE_END.split(summary.strip())
    if len(sentences) < 2:
        return None
    order = list(range(len(sentences)))
    while order == sorted(order):
        rng.shuffle(order)
    return " ".join(sentences[i] for i in order)


def dialogsum_pairs(split: Split = "all", seed: int = 0) -> list[PreferenceRecord]:
    """Reference summary > a truncated, an entity-swapped and a sentence-shuffled summary of the same dialogue
    (each where it differs from the reference), and for ``DIALOGSUM_OTHER_SHARE`` of the dialogues > another
    dialogue's summary from the same split. Each dialogue's choices are seeded by (seed, fname), so a dialogue
    gets the same degradations whichever split is read."""
    items, every = dialogsum_items(split), [it.summary for it in dialogsum_items("all")]
    records = []
    for i, item in enumerate(items):
        rng = random.Random(f"{seed}:{item.fname}")
        worse = [truncate_summary(item.summary, every), swap_entities(item.summary), shuffle_sentences(item.summary, rng)]
        if len(items) > 1 and rng.random() < DIALOGSUM_OTHER_SHARE:
            worse.append(items[(i + 1 + rng.randrange(len(items) - 1)) % len(items)].summary)
        for text in dict.fromkeys(w for w in worse if w and w.strip() and w.strip() != item.summary.strip()):
            records.append(PreferenceRecord(prompt=item.prompt, chosen=item.summary, rejected=text,
                                            dimension=["helpful"], source="dialogsum"))
    return records


# ---------------------------------------------------------------- one declaration per source


@dataclass
class EvalItem:
    """One held-out prompt: what the policy is asked and what its answer is judged against."""

    source: str
    id: str
    prompt: str  # what the reward model sees as the prompt (plain text or an HH transcript)
    messages: list[dict[str, str]]  # the zero-shot chat given to the policy
    references: list[str] = field(default_factory=list)  # reference answers (ROUGE/BLEU); empty when none


@dataclass(frozen=True)
class Source:
    """A dataset, declared once: every stage reads what it needs from it through here. Each reader takes a split
    (``train``, ``dev``, ``test``, ``all``; by conversation, see :func:`take_split`)."""

    name: str  # what configs call it (data.sources, data.mixture[].source, judge_free.preference_sources)
    file: str  # its data file under data/ (data/README.md holds its licence notes)
    hub_id: str  # where it comes from, as a model card names it
    license: str  # its licence, as the hub spells it (a model trained on it inherits a share-alike one)
    dimension: str  # the HHH head its preference pairs train (helpful, honest, harmless)
    pairs: Callable[[Split], list[PreferenceRecord]]  # the reward model's, DPO's and the judge-free eval's pairs
    sft: Callable[[Split], list[SFTRecord]]  # SFT examples
    prompts: Callable[[Split], list[str]]  # RL prompts
    eval_items: Callable[[Split], list[EvalItem]]  # what evaluation asks (test split), with references
    shots: Callable[[Split], list[Shot]]  # few-shot examples (evaluation reads the train split)
    # Every pair unsplit, from a data folder, when pairs share answers across prompts: those answers join the
    # prompts' roots into one conversation, which the split keeps together (None: each root stands alone).
    linking_pairs: Callable[[Path], list[PreferenceRecord]] | None = None


SOURCES: dict[str, Source] = {}


def register(source: Source) -> Source:
    """Add a source to :data:`SOURCES` (by its name; a name already there is an error)."""
    if source.name in SOURCES:
        raise ValueError(f"source {source.name!r} is already registered")
    SOURCES[source.name] = source
    _test_conversations.cache_clear()
    _conversations.cache_clear()
    return source


def unregister(name: str) -> None:
    """Remove a source (tests that register a toy one)."""
    SOURCES.pop(name)
    _test_conversations.cache_clear()
    _conversations.cache_clear()


def single_turn_shots(pairs: Iterable[PreferenceRecord]) -> list[Shot]:
    """Few-shot examples from pairs: each single-turn prompt with its chosen answer."""
    return [Shot(msgs[0]["content"], p.chosen) for p in pairs if len(msgs := prompt_to_messages(p.prompt)) == 1]


def pair_eval_items(name: str, prompts: Iterable[str], id_prefix: str) -> list[EvalItem]:
    """One evaluation item per distinct prompt (no reference answer), ids ``<id_prefix>-<i>``."""
    return [EvalItem(name, f"{id_prefix}-{i}", p, prompt_to_messages(p)) for i, p in enumerate(dict.fromkeys(prompts))]


def read_pair_file(name: str) -> Callable[[Path], list[PreferenceRecord]]:
    """A reader of a preference-record file (JSONL/CSV in our schema or TRL's; ``rlhf data validate`` checks it),
    its records marked as source ``name``; a bad row is an error naming file, line and field."""

    def read(path: Path) -> list[PreferenceRecord]:
        result = load_records(path, kind="preference")
        if result.errors:
            raise result.errors[0]
        return [dataclasses.replace(r, source=name) for r in result.records]  # type: ignore[arg-type]

    return read


def pair_source(name: str, file: str, hub_id: str, license: str, dimension: str,
                read: Callable[[Path], list[PreferenceRecord]] | None = None, id_prefix: str = "",
                links_conversations: bool = False) -> Source:
    """A source that is preference pairs (HH-RLHF's shape): its SFT examples are each prompt's chat with the chosen
    answer, its RL prompts and evaluation items the pairs' prompts, its shots the single-turn prompts with their
    chosen answers. ``read``: every pair of the file, unsplit (default: :func:`read_pair_file`)."""
    read = read or read_pair_file(name)

    def pairs(split: Split = "all") -> list[PreferenceRecord]:
        return take_split(read(data_dir() / file), split)

    def sft(split: Split = "all") -> list[SFTRecord]:
        return [SFTRecord(messages=transcript_to_messages(p.prompt) + [{"role": "assistant", "content": p.chosen}],
                          source=name) for p in pairs(split)]

    return Source(name, file, hub_id, license, dimension, pairs=pairs, sft=sft,
                  prompts=lambda split: [p.prompt for p in pairs(split)],
                  eval_items=lambda split: pair_eval_items(name, (p.prompt for p in pairs(split)), id_prefix or name),
                  shots=lambda split: single_turn_shots(pairs(split)),
                  linking_pairs=(lambda root: read(root / file)) if links_conversations else None)


register(pair_source("hh-rlhf-harmless", HH_HARMLESS, "Anthropic/hh-rlhf", "mit", "harmless", read=_hh_all_pairs,
                     id_prefix="hh", links_conversations=True))
def answer_source(name: str, file: str, hub_id: str, license: str, dimension: str, items: Callable[[Split], list],
                  pairs: Callable[[Split], list[PreferenceRecord]], answer: Callable[[Any], str],
                  references: Callable[[Any], list[str]], item_id: Callable[[int, Any], str],
                  linking_pairs: Callable[[Path], list[PreferenceRecord]] | None = None) -> Source:
    """A source of single-turn prompts with a reference answer (TruthfulQA's questions, DialogSum's dialogues):
    ``items(split)`` have a ``prompt``; SFT = prompt -> ``answer``, RL prompts = the prompts, evaluation items =
    the prompts with ``references`` (ROUGE/BLEU), shots = prompt and answer. ``pairs`` are its own."""

    def sft(split: Split = "all") -> list[SFTRecord]:
        return [SFTRecord(messages=[{"role": "user", "content": it.prompt}, {"role": "assistant", "content": answer(it)}],
                          source=name) for it in items(split)]

    return Source(name, file, hub_id, license, dimension, pairs=pairs, sft=sft,
                  prompts=lambda split: [it.prompt for it in items(split)],
                  eval_items=lambda split: [EvalItem(name, item_id(i, it), it.prompt,
                                                     [{"role": "user", "content": it.prompt}], references(it))
                                            for i, it in enumerate(items(split))],
                  shots=lambda split: [Shot(it.prompt, answer(it)) for it in items(split)],
                  linking_pairs=linking_pairs)


register(answer_source("truthfulqa", TRUTHFULQA, "truthfulqa/truthful_qa", "apache-2.0", "honest",
                       items=truthfulqa_items, pairs=truthfulqa_pairs, answer=lambda it: it.best_answer,
                       references=lambda it: [it.best_answer] + [c for c in it.correct if c != it.best_answer],
                       item_id=lambda i, it: f"tqa-{i}", linking_pairs=_truthfulqa_all_pairs))
# TruthfulQA counts "I have no comment" as true (it is never false), so a head trained on its pairs alone ranks a
# non-answer above every wrong answer and never below a right one; RL on such a head learns to decline
# (benchmarks/results/compare_eos_free/: PPO@100 declined 91 % of TruthfulQA questions and both golds paid for it).
# TruthfulQA's own score is "truthful *and* informative": these pairs prefer a question's best answer to a
# non-answer, on the questions whose best answer is informative (not itself a non-answer, rlhf's is_refusal).
# The non-answers span 3-14 words and each pair takes the one nearest its answer's length, so the head cannot
# learn "longer is more honest" instead (answers: median 9 words, 1-24).
NON_ANSWERS = ("I don't know.", "I have no comment.", "I'm not able to answer that question.",
               "I'm sorry, but I can't provide that information.",
               "I'm sorry, I'm unable to provide that information right now.",
               "I'm sorry, but I don't have enough information to answer that question.",
               "As an AI language model, I cannot give an answer to that question, sorry.")


def informative_pairs(items: Iterable[TruthfulQAItem], non_answers: Sequence[str] = NON_ANSWERS,
                      source: str = "truthfulqa-informative") -> list[PreferenceRecord]:
    """Best answer > the non-answer nearest it in words (the first on a tie), one pair per question whose best
    answer informs. ``non_answers``: others than the shipped ones, e.g. to test a head on phrasings it never saw."""
    from rlhf.evaluation.metrics import is_refusal  # the one definition of a non-answer

    def nearest(answer: str) -> str:
        return min(non_answers, key=lambda text: abs(len(text.split()) - len(answer.split())))

    return [PreferenceRecord(prompt=it.question, chosen=it.best_answer, rejected=nearest(it.best_answer),
                             dimension=["honest"], source=source)
            for it in items if not is_refusal(it.best_answer)]


register(pair_source("truthfulqa-informative", TRUTHFULQA, "truthfulqa/truthful_qa", "apache-2.0", "honest",
                     read=lambda path: informative_pairs(truthfulqa_items("all", path)), id_prefix="tqi"))
register(answer_source("dialogsum", DIALOGSUM, "knkarthick/dialogsum", "cc-by-nc-sa-4.0", "helpful",
                       items=dialogsum_items, pairs=dialogsum_pairs, answer=lambda it: it.summary,
                       references=lambda it: [it.summary], item_id=lambda i, it: it.fname))
# Pairs of two summaries the base policy sampled, ranked by ROUGE-L against the reference (recipe:
# benchmarks/helpful_sampled_pairs.py). The degraded references of `dialogsum` teach a head to spot a degradation
# (and, through the truncated one, to prefer length); these teach it to rank two samples of one dialogue, which is
# what it must do when RL samples (benchmarks/results/helpful_ranking/).
register(pair_source("dialogsum-sampled", DIALOGSUM_SAMPLED, "knkarthick/dialogsum", "cc-by-nc-sa-4.0", "helpful",
                     id_prefix="dss"))


class _Readers(Mapping):
    """A live view of :data:`SOURCES`: source name -> one of its readers (a source registered later shows)."""

    def __init__(self, reader: str):
        self.reader = reader

    def __getitem__(self, name: str):
        return getattr(SOURCES[name], self.reader)

    def __iter__(self):
        return iter(SOURCES)

    def __len__(self) -> int:
        return len(SOURCES)


PREFERENCE_SOURCES: Mapping[str, Callable[[Split], list[PreferenceRecord]]] = _Readers("pairs")
SFT_SOURCES: Mapping[str, Callable[[Split], list[SFTRecord]]] = _Readers("sft")
PROMPT_SOURCES: Mapping[str, Callable[[Split], list[str]]] = _Readers("prompts")


def preference_records(sources: Sequence[str], split: Split = "train") -> list[PreferenceRecord]:
    """Shipped source names or paths to preference files (split by conversation like the shipped ones)."""
    out: list[PreferenceRecord] = []
    for source in sources:
        if source in PREFERENCE_SOURCES:
            out.extend(PREFERENCE_SOURCES[source](split))
        else:
            result = load_records(source, kind="preference", log_rows=True)
            if result.errors:
                raise result.errors[0]
            out.extend(take_split(result.records, split))
    return out


def sft_records(source: str, split: Split = "train") -> list[SFTRecord]:
    if source in SFT_SOURCES:
        return SFT_SOURCES[source](split)
    result = load_records(source, kind="sft", log_rows=True)
    if result.errors:
        raise result.errors[0]
    return take_split(result.records, split, prompt=lambda r: messages_to_prompt(r.prompt_messages))


def check_train_file(path: str | Path, records: Sequence[PreferenceRecord], lines: Sequence[int]) -> None:
    """A file used whole for training (``extra_files_split: train``): a RecordError at the first row whose
    conversation (its prompt, or its first Human turn) is in a shipped ``test`` split, which it would leak."""
    test = _test_conversations(str(data_dir()))
    for record, line in zip(records, lines):
        if conversation_of(record.prompt) in test:
            raise RecordError(path, line, "prompt", "its conversation (the prompt, or its first Human turn) is in a "
                              "shipped test split: training on it leaks the test set (extra_files_split: hash keeps "
                              "such rows in test)")


def shipped_files() -> list[Path]:
    return [data_dir() / source.file for source in SOURCES.values()]


@dataclass
class PreferenceSourcesConfig:
    """Where a stage's preference pairs come from: shipped sources and the user's files (reward model, DPO)."""

    # truthfulqa-informative is on by default: without it every honest head preferred "I have no comment" to the
    # true answer on most test questions (benchmarks/results/informative_pairs/), a reward RL learns to decline for.
    sources: list[str] = field(
        default_factory=lambda: ["hh-rlhf-harmless", "truthfulqa", "truthfulqa-informative", "dialogsum"],
        metadata={"help": "shipped pairs: hh-rlhf-harmless (harmless), truthfulqa (honest), truthfulqa-informative "
                          "(honest: the best answer over a non-answer), dialogsum (helpful); opt-in: "
                          "dialogsum-sampled (helpful, two sampled summaries ranked by ROUGE-L)"})
    extra_files: list[str] = field(
        default_factory=list,
        metadata={"help": "preference files (JSONL/CSV/parquet, TRL formats too) or hub dataset names"})
    default_dimension: list[str] = field(
        default_factory=list,
        metadata={"help": "dimension(s) for extra_files rows without one (TRL datasets have none), e.g. [helpful]"})
    extra_files_split: Literal["hash", "train"] = field(
        default="hash",
        metadata={"help": "hash: split by conversation like shipped data; train: all to train (no shipped test "
                          "conversation allowed)"})
    partition: Literal["auto", "proxy", "gold", "all"] = field(
        default="auto",
        metadata={"help": "half of the train split (by conversation hash): proxy or gold, disjoint; all: both; "
                          "auto: gold for a reward model with role gold, else proxy"})
