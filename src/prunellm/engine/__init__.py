"""The model plumbing around the solvers: find the blocks, stream calibration data through them one at a
time, gather statistics, solve each layer, propagate (`loop.prune`).

Modules: `blocks` (discovery), `capture` (first-block inputs), `stats` (hooks), `stream` (the block
stream), `activations` (device, CPU or disk), `offload` (blocks read from disk), `distributed` (torch.distributed),
`residency` (blocks onloaded to the compute device one at a time), `memory` (RSS readings), `profile`
(the allocation pass), `loop` (the prune loop). Imports the algorithms, `config`, `data`, `devices`,
`errors`; never the runtime, evaluation, saving or the CLI.
"""
