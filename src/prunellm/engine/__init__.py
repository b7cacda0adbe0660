"""The model plumbing around the solvers: find the blocks, stream calibration data through them one at a
time, gather statistics, solve each layer, propagate (`loop.prune`).

Modules: `blocks` (discovery), `capture` (first-block inputs), `stats` (hooks), `stream` (the block
stream), `activations` (memory or disk), `offload` (block residency), `distributed` (torch.distributed),
`memory` (RSS readings), `profile` (the allocation pass), `loop` (the prune loop). Imports the algorithms,
`config`, `data`, `errors`; never the runtime, evaluation, saving or the CLI.
"""
