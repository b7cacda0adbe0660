"""Evaluation of a model in memory: perplexity by the standard protocol (`perplexity`) and zero-shot
accuracy through lm-evaluation-harness (`zeroshot`).

Imports `data` (the corpora and task files it reads) and `errors`; never the engine or the runtime.
"""
