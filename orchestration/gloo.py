"""A Ray Train backend for CPU trials whose Train controller never imports torch.

Ray's ``TorchConfig`` lives in a module that imports torch, so every Train controller
that unpickles it pays for ``import torch`` (1.5–3 CPU-s and about 580 MB resident per
trial on the development machine) although the controller runs no torch code. CPU
trials use :class:`GlooConfig` instead: the same gloo process group, made by functions
that import torch only on the workers. A lone worker gets no process group at all
(``toynet.train`` then skips its collectives). GPU trials keep ``TorchConfig``
(NCCL, device placement).

This module must not import torch at import time: the controller imports it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import ray
from ray._common.network_utils import build_address
from ray.train._internal.utils import get_address_and_port
from ray.train.backend import Backend, BackendConfig
from ray.train.v2._internal.util import TrainingFramework


@dataclass
class GlooConfig(BackendConfig):
    """gloo process group over TCP between a trial's CPU workers.

    ``backend`` is fixed; it is a field because ``TorchTrainer`` reads and fills it.
    """

    backend: str = "gloo"
    timeout_s: int = 1800

    @property
    def backend_cls(self) -> type[Backend]:
        return _GlooBackend

    @property
    def framework(self) -> TrainingFramework:
        return TrainingFramework.TORCH


class _GlooBackend(Backend):
    share_cuda_visible_devices = False

    def on_start(self, worker_group: Any, backend_config: GlooConfig) -> None:
        size = len(worker_group)
        if size == 1:
            return
        addr, port = worker_group.execute_single(0, get_address_and_port)
        url = f"tcp://{build_address(addr, port)}"
        ray.get([
            # Positional: execute_single_async's own first parameter is called ``rank``.
            worker_group.execute_single_async(i, _init_process_group, url, i, size, backend_config.timeout_s)
            for i in range(size)
        ])

    def on_shutdown(self, worker_group: Any, backend_config: GlooConfig) -> None:
        if len(worker_group) > 1:
            ray.get(worker_group.execute_async(_destroy_process_group))


def _init_process_group(url: str, world_rank: int, world_size: int, timeout_s: int) -> None:
    import datetime

    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=url, rank=world_rank, world_size=world_size,
                            timeout=datetime.timedelta(seconds=timeout_s))


def _destroy_process_group() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()
