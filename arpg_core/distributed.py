"""torch.distributed for `torchrun`: one process per device, gloo on CPU, NCCL on GPU.

Without torchrun's environment it is a single process and every call is a no-op.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from tqdm import tqdm


class Distributed:
    def __init__(self) -> None:
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(self.world)))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def __enter__(self) -> Distributed:
        if self.world > 1:
            backend = "nccl" if torch.cuda.is_available() else "gloo"
            dist.init_process_group(backend=backend)
            if not torch.cuda.is_available():
                # Share the cores instead of oversubscribing them (OpenMP threads spin-wait).
                torch.set_num_threads(max(1, (os.cpu_count() or 1) // self.local_world))
        return self

    def __exit__(self, *exc) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()

    def device(self, requested: str | None) -> str:
        if requested and requested != "cuda":
            return requested
        if torch.cuda.is_available():
            torch.cuda.set_device(self.local_rank)
            return f"cuda:{self.local_rank}"
        return requested or "cpu"

    def barrier(self) -> None:
        if dist.is_initialized():
            dist.barrier()

    def progress(self, total: int, initial: int, desc: str) -> tqdm:
        return tqdm(total=total, initial=max(0, initial), desc=desc, unit="img", disable=not self.is_main)
