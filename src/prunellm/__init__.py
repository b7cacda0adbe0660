"""prunellm: one-shot post-training pruning of Hugging Face causal LMs.

    import prunellm
    model, tok = prunellm.load_model("smollm2-135m")
    report = prunellm.prune(model, tok, prunellm.PruneConfig(solver="wanda", sparsity=0.5))
    ppl, windows = prunellm.perplexity(model, tok, "wikitext2", seqlen=1024, max_windows=64)
    prunellm.save_pruned(model, tok, report, "out/smollm2-wanda-50", save_format="compressed")
    model, tok = prunellm.load("out/smollm2-wanda-50")  # the same weights, dense or compressed folder

Layers, bottom to top (each imports only those below it): `errors`, `outputs`, `hub`, `devices`; the algorithms
(`masks`, `solvers/`, `allocation/`); `config`, `data`; `runtime/` and `models`; `engine/` and
`evaluation/`; the jobs on top (`save`, `from_disk`, `cli`, `plot`, this module).
"""

from .allocation import ALLOCATIONS
from .config import PruneConfig
from .engine.loop import prune
from .errors import UsageError
from .evaluation.perplexity import evaluate_perplexity, perplexity
from .evaluation.zeroshot import evaluate_zeroshot
from .from_disk import prune_from_disk
from .masks import Target
from .models import load_model
from .models import load_model as load
from .runtime import transformers_plugin  # noqa: F401  (from_pretrained reads compressed folders)
from .save import save_pruned
from .solvers import SOLVERS

__all__ = [
    "ALLOCATIONS",
    "PruneConfig",
    "SOLVERS",
    "Target",
    "UsageError",
    "evaluate_perplexity",
    "evaluate_zeroshot",
    "load",
    "load_model",
    "perplexity",
    "prune",
    "prune_from_disk",
    "save_pruned",
]
__version__ = "0.1.0"
