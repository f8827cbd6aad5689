"""One job across several devices: Ulysses and ring sequence parallelism and CFG parallelism,
over torch.distributed (NCCL on GPUs, gloo on the CPU).

Only the torch-free config is imported here, so the CLI can validate degrees instantly; the
process groups live in `engine.parallel.state`.
"""

from engine.parallel.config import ParallelConfig

__all__ = ["ParallelConfig"]
