"""The sparse runtime: compressed checkpoints (`compressed`), `SparseLinear` and `sparsify`
(`sparse_linear`), the compiled bitmask kernels (`kernels/`) and the prefill/decode bench (`speed`).

Imports `errors`, `outputs` and `devices` only: it knows nothing of how the model was pruned.
"""
