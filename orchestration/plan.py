"""Where results go and how many trials fit: checks that run before any training.

Nothing here imports Ray; the Ray layer passes in the cluster's resources.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

from orchestration.config import Resources
from toynet.errors import ConfigError
from toynet.spec import INPUT_SHAPES, TRANSFORMS, RunSpec

# Tune's driver trainable only builds the TorchTrainer and waits: it asks for a token
# resource, not a CPU, so drivers never keep Train workers from being placed.
DRIVER_RESOURCES: dict[str, float] = {"memory": 1}


def trial_resources(res: Resources) -> dict[str, float]:
    """What Tune reserves for each trial's driver process.

    A run trained in its trial has the driver as its only worker, so the driver holds
    the worker's CPUs and GPUs (a fraction lets trials share a GPU); otherwise Train's
    worker group does.
    """
    if not res.uses_in_trial:
        return dict(DRIVER_RESOURCES)
    return {"CPU": res.cpus_per_worker, **({"GPU": res.gpus_per_worker} if res.gpus_per_worker else {})}


@dataclass(frozen=True)
class ClusterResources:
    """What a cluster offers in total and on its largest node."""

    cpus: float
    gpus: float
    nodes: int
    max_node_cpus: float
    max_node_gpus: float


def local_resources() -> ClusterResources:
    """This machine, as a local Ray would see it (used by --dry-run)."""
    import torch

    cpus = float(os.cpu_count() or 1)
    gpus = float(torch.cuda.device_count())
    return ClusterResources(cpus, gpus, 1, cpus, gpus)


@dataclass(frozen=True)
class ResourcePlan:
    """Per-trial resources and how many trials run at once."""

    resources: Resources
    concurrent: int
    pending: int

    @classmethod
    def build(cls, res: Resources, cluster: ClusterResources, pending: int) -> "ResourcePlan":
        """Validate that a trial can ever be placed, then size the concurrency.

        Raises ConfigError when the cluster can never run one trial (GPUs on a
        GPU-less cluster, more workers than CPUs, STRICT_SPREAD over too few nodes).
        """
        _check_placeable(res, cluster)
        if res.max_concurrent_trials is not None:
            concurrent = res.max_concurrent_trials
        else:
            concurrent = int(cluster.cpus // (res.workers_per_trial * res.cpus_per_worker))
            if res.gpus_per_worker > 0:
                # Round to avoid 0.999… from fractional GPUs such as 1/3.
                per_trial = res.workers_per_trial * res.gpus_per_worker
                concurrent = min(concurrent, int(round(cluster.gpus / per_trial, 6)))
        return cls(res, max(1, min(concurrent, max(pending, 1))), pending)

    def describe(self, where: str) -> str:
        r = self.resources
        gpu = f", {r.gpus_per_worker:g} GPU" if r.gpus_per_worker else ""
        if r.uses_in_trial:
            shape = f"1 worker ({r.cpus_per_worker:g} CPU{gpu}) in the Tune trial's own process"
        else:
            shape = (f"{r.workers_per_trial} Ray Train worker(s) × ({r.cpus_per_worker:g} CPU{gpu}), "
                     f"placement {r.placement_strategy}")
        return (f"resource plan on {where}: {self.pending} runs to train; each trial = {shape}; "
                f"{self.concurrent} trial(s) at a time")


def dispatch_order(runs: Sequence[RunSpec], train_sizes: Mapping[str, int]) -> list[RunSpec]:
    """The runs in the order their trials should start: the most work first.

    Longest-first keeps a grid from ending on one long run alone while the other
    slots idle (the seed grid lists its 240-epoch runs last). Work is epochs ×
    training images × pixels per image (``train_sizes``: each dataset's full training
    split); ties go first to runs that do more per image or per step (BatchNorm,
    heavier transforms, smaller batches), and then keep their config order.
    """
    def work(spec: RunSpec) -> tuple[int, bool, int, int]:
        images = train_sizes[spec.dataset]
        if spec.train_limit is not None:
            images = min(images, spec.train_limit)
        channels, height, width = INPUT_SHAPES[spec.dataset]
        return (spec.epochs * images * channels * height * width, spec.bn, TRANSFORMS.index(spec.transforms),
                -spec.batch_size)

    return sorted(runs, key=work, reverse=True)  # sorted() is stable, reverse=True too


def _check_placeable(res: Resources, cluster: ClusterResources) -> None:
    where = "resources"
    if res.gpus_per_worker > 0 and cluster.gpus == 0:
        raise ConfigError(
            f"{where}.gpus_per_worker is {res.gpus_per_worker:g} but the cluster has no GPUs; "
            "set --gpus-per-worker 0 or run on a cluster with GPUs"
        )
    if res.gpus_per_worker > cluster.max_node_gpus:
        raise ConfigError(
            f"{where}.gpus_per_worker is {res.gpus_per_worker:g} but no node has more than "
            f"{cluster.max_node_gpus:g} GPU(s)"
        )
    if res.cpus_per_worker > cluster.max_node_cpus:
        raise ConfigError(
            f"{where}.cpus_per_worker is {res.cpus_per_worker:g} but no node has more than "
            f"{cluster.max_node_cpus:g} CPU(s)"
        )
    need = res.workers_per_trial * res.cpus_per_worker
    if need > cluster.cpus:
        raise ConfigError(
            f"{where}: one trial needs {res.workers_per_trial} worker(s) × {res.cpus_per_worker:g} CPU = "
            f"{need:g} CPUs but the cluster has {cluster.cpus:g}; lower --workers-per-trial or --cpus-per-worker"
        )
    if res.placement_strategy == "STRICT_SPREAD" and res.workers_per_trial > cluster.nodes:
        raise ConfigError(
            f"{where}.placement_strategy STRICT_SPREAD puts each of {res.workers_per_trial} workers on its own "
            f"node but the cluster has {cluster.nodes} node(s)"
        )


def join_root(root: str, *parts: str) -> str:
    """``root/parts...`` for a directory or a URI, keeping a URI's query string at the end.

    ``s3://b/p?endpoint_override=h`` + ``.ray`` → ``s3://b/p/.ray?endpoint_override=h``.
    """
    base, sep, query = root.partition("?")
    return "/".join([base.rstrip("/"), *parts]) + sep + query


def _in_job_working_dir() -> bool:
    """True inside a ``ray job submit --working-dir`` entrypoint (a temporary copy)."""
    raw = os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR")
    if not raw:
        return False
    try:
        return bool(json.loads(raw).get("runtime_env", {}).get("working_dir"))
    except (ValueError, AttributeError):
        return False


def resolve_artifacts_root(root: str) -> str:
    """An absolute directory or a URI, valid on every node and after the job ends.

    Under ``ray job submit --working-dir`` the job runs in a temporary copy of the
    directory, so a relative root would vanish with it: that is refused.
    """
    if "://" in root:
        return root
    path = Path(root).expanduser()
    if not path.is_absolute() and _in_job_working_dir():
        raise ConfigError(
            f"artifacts root {root!r} is relative, but this job runs in a temporary copy of its "
            "--working-dir that Ray deletes afterwards; pass --artifacts with an absolute path "
            "(shared by every node) or a URI such as s3://bucket/prefix"
        )
    return str(path.resolve())
