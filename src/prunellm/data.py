"""Text data for calibration and evaluation: local files first, the Hugging Face hub when online.

Dataset specs: `wikitext2`, `ptb`, `c4`, `text:PATH`, `jsonl:PATH`. Rows are built exactly as the
Hugging Face datasets present them, so the reference protocols (SparseGPT/Wanda `datautils`)
reproduce byte for byte from the local copies.
"""

from __future__ import annotations

import gzip
import json
import os
import random
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import UsageError
from .hub import hub_reachable


@dataclass(frozen=True)
class Corpus:
    """A named corpus: local file per split, hub fallback, and how rows are joined."""

    files: dict[str, str]  # split -> path relative to the data dir
    hub: tuple[str, str | None, str]  # (dataset path, config, text field)
    eval_join: str  # separator the reference evaluation joins test rows with
    calib_join: str = " "  # separator the reference calibration joins rows with


CORPORA: dict[str, Corpus] = {
    "wikitext2": Corpus(
        files={"test": "wikitext-2-raw/wiki.test.raw", "validation": "wikitext-2-raw/wiki.valid.raw"},
        hub=("wikitext", "wikitext-2-raw-v1", "text"),
        eval_join="\n\n",
    ),
    "ptb": Corpus(
        files={"test": "ptb/ptb.test.txt", "validation": "ptb/ptb.valid.txt"},
        hub=("ptb_text_only", "penn_treebank", "sentence"),
        eval_join=" ",
    ),
    "c4": Corpus(
        files={
            "validation": "c4/c4-validation.00000-of-00008.json.gz",
            "train": "c4/c4-train.00000-of-01024.json.gz",
        },
        hub=("allenai/c4", "en", "text"),
        eval_join=" ",
    ),
}
# Calibration never touches a test split: WikiText-2 and PTB calibrate on validation (no train here).
CALIB_SPLIT = {"wikitext2": "validation", "ptb": "validation", "c4": "train"}
C4_EVAL_DOCS = 1100  # the reference evaluates C4 on the first 1100 validation documents


def data_dirs(data_dir: str | os.PathLike | None = None) -> list[Path]:
    """Candidate data folders in priority order: explicit, `$PRUNELLM_DATA`, `../shared/data` by the checkout."""
    dirs: list[Path] = []
    if data_dir:
        dirs.append(Path(data_dir))
    if os.environ.get("PRUNELLM_DATA"):
        dirs.append(Path(os.environ["PRUNELLM_DATA"]))
    checkout = Path(__file__).resolve().parents[2]
    for base in (checkout, Path.cwd()):
        candidate = (base.parent / "shared" / "data").resolve()
        if candidate not in dirs:
            dirs.append(candidate)
    return dirs


def _wikitext_rows(path: Path) -> list[str]:
    """Lines as the HF wikitext rows: trailing newline kept, blank `" \\n"` lines as empty strings."""
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    return ["" if line.strip() == "" else line for line in lines]


def _read_local(name: str, path: Path) -> list[str]:
    if name == "wikitext2":
        return _wikitext_rows(path)
    if name == "ptb":
        return [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [json.loads(line)["text"] for line in f if line.strip()]


def _read_hub(corpus: Corpus, split: str) -> list[str]:
    if not hub_reachable():
        raise OSError("the hub is unreachable")
    try:
        import datasets  # optional: only for machines with hub access
    except ImportError as exc:
        raise OSError("the `datasets` package is not installed") from exc
    path, config, field = corpus.hub
    kwargs = {}
    if path == "allenai/c4":
        kwargs["data_files"] = {split: corpus.files[split].removeprefix("c4/").replace("c4-", "en/c4-")}
        config = None
    ds = datasets.load_dataset(path, config, split=split, **kwargs)
    return list(ds[field])


def load_rows(name: str, split: str, data_dir: str | os.PathLike | None = None) -> list[str]:
    """Rows of a named corpus split, or of a `text:`/`jsonl:` file (which has a single split)."""
    kind, _, arg = name.partition(":")
    if kind in ("text", "jsonl") and arg:
        path = Path(arg).expanduser()
        if not path.is_file():
            raise UsageError(f"data file {path} not found")
        if kind == "text":
            return [path.read_text(encoding="utf-8")]
        with path.open(encoding="utf-8") as f:
            return [json.loads(line)["text"] for line in f if line.strip()]
    if name not in CORPORA:
        raise UsageError(f"unknown dataset {name!r}; choose one of {', '.join(CORPORA)}, text:PATH, jsonl:PATH")
    corpus = CORPORA[name]
    if split not in corpus.files:
        raise UsageError(f"dataset {name!r} has no {split!r} split here; it has {', '.join(corpus.files)}")
    looked = []
    for base in data_dirs(data_dir):
        path = base / corpus.files[split]
        if path.is_file():
            return _read_local(name, path)
        looked.append(str(path))
    try:
        return _read_hub(corpus, split)
    except Exception as exc:  # offline, missing package, or hub error: report every place we looked
        hub = f"the Hugging Face hub ({corpus.hub[0]}: {type(exc).__name__})"
        raise UsageError(f"{name} {split} data not found; looked in {', '.join(looked)} and {hub}") from exc


def _tokenize(tokenizer, text: str) -> torch.Tensor:
    """Tokenize a long text once into a 1-D tensor of ids (no length warning: we window it ourselves)."""
    ids = tokenizer(text, return_tensors="pt", verbose=False).input_ids
    return ids[0]


def eval_tokens(tokenizer, name: str, seqlen: int, data_dir: str | os.PathLike | None = None) -> torch.Tensor:
    """The evaluation stream of the reference protocol: test rows joined and tokenized once."""
    kind = name.partition(":")[0]
    if kind in ("text", "jsonl"):
        return _tokenize(tokenizer, "\n\n".join(load_rows(name, "test", data_dir)))
    corpus = CORPORA.get(name)
    if corpus is None:
        load_rows(name, "test", data_dir)  # raises the unknown-dataset error
    if name == "c4":
        ids = _tokenize(tokenizer, " ".join(load_rows(name, "validation", data_dir)[:C4_EVAL_DOCS]))
        return ids[: 256 * seqlen]
    return _tokenize(tokenizer, corpus.eval_join.join(load_rows(name, "test", data_dir)))


def sample_windows(ids: torch.Tensor, nsamples: int, seqlen: int, seed: int) -> torch.Tensor:
    """`nsamples` random windows of `seqlen` tokens, as the reference: `random.seed(seed); randint(0, n-seqlen-1)`."""
    if ids.numel() <= seqlen + 1:
        raise UsageError(f"calibration text has {ids.numel()} tokens, too few for windows of {seqlen}")
    rng = random.Random(seed)
    starts = [rng.randint(0, ids.numel() - seqlen - 1) for _ in range(nsamples)]
    return torch.stack([ids[i : i + seqlen] for i in starts])


def _sample_documents(tokenizer, docs: list[str], nsamples: int, seqlen: int, seed: int) -> torch.Tensor:
    """C4's reference sampler: a random document longer than `seqlen` tokens, then a random window in it."""
    rng = random.Random(seed)
    windows = []
    for _ in range(nsamples):
        while True:
            ids = _tokenize(tokenizer, docs[rng.randint(0, len(docs) - 1)])
            if ids.numel() > seqlen:
                break
        i = rng.randint(0, ids.numel() - seqlen - 1)
        windows.append(ids[i : i + seqlen])
    return torch.stack(windows)


def calibration_batch(
    tokenizer, name: str, nsamples: int, seqlen: int, seed: int, data_dir: str | os.PathLike | None = None
) -> torch.Tensor:
    """Calibration input ids (nsamples × seqlen) from a corpus's calibration split, never its test split."""
    if nsamples < 1 or seqlen < 2:
        raise UsageError(f"need nsamples >= 1 and seqlen >= 2 (got {nsamples}, {seqlen})")
    kind = name.partition(":")[0]
    split = "test" if kind in ("text", "jsonl") else CALIB_SPLIT.get(name, "validation")
    rows = load_rows(name, split, data_dir)
    if name == "c4":
        return _sample_documents(tokenizer, rows, nsamples, seqlen, seed)
    join = CORPORA[name].calib_join if name in CORPORA else "\n\n"
    return sample_windows(_tokenize(tokenizer, join.join(rows)), nsamples, seqlen, seed)
