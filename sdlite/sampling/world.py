"""The processes of one sample run (`--num-processes`, `accelerate launch`, `torchrun`)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class World:
    """The processes of one sample run (`--num-processes`, `accelerate launch`, `torchrun`): batch b is made by
    process b mod N, every process writes its own images under the names one process would give them, and the
    first process reports every image in order."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @classmethod
    def current(cls) -> World:
        size = int(os.environ.get("WORLD_SIZE", "1"))
        if size == 1:
            return cls()
        import torch.distributed as dist

        if not dist.is_initialized():  # small objects only: gloo serves CPU and GPU runs alike
            dist.init_process_group("gloo")
        return cls(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))

    def device(self, device: str) -> str:
        """Each process its own GPU; the metadata still says just `cuda`."""
        if self.size > 1 and device == "cuda":
            import torch

            torch.cuda.set_device(self.local_rank)
            return f"cuda:{self.local_rank}"
        return device

    def mine(self, batch: int) -> bool:
        return batch % self.size == self.rank

    def share(self, value: Any) -> Any:
        """The first process's `value`, on every process."""
        if self.size == 1:
            return value
        import torch.distributed as dist

        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.size > 1:
            import torch.distributed as dist

            dist.barrier()

    def close(self) -> None:
        """Tear the process group down (without it gloo aborts the process at exit)."""
        if self.size > 1:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()
