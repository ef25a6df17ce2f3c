"""TensorBoard event files for one run, so ``tensorboard --logdir <root>/<EXP>`` shows the grid.

TensorBoard's writer only writes to local paths, so events are written into a temporary
directory and handed back as bytes; the store copies them next to the run's other
files, which makes them work under any store root (local or object-store URI).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

from orchestration.records import RunRecord

# Scalar tags "<metric>/<split>": TensorBoard groups by the prefix, so train and
# validation of one metric sit side by side.
_TAGS = {"loss": "loss/train", "acc": "acc/train", "val_loss": "loss/val", "val_acc": "acc/val",
         "lr": "lr", "seconds": "epoch_seconds"}


def event_files(record: RunRecord) -> dict[str, bytes]:
    """Write the run's per-epoch scalars and its hyperparameters; return {file name: bytes}.

    Uses TensorBoard's own writer and summary protos, not ``torch.utils.tensorboard``:
    the store runs in Ray Tune's drivers, which never import torch.
    """
    from tensorboard.compat.proto.event_pb2 import Event
    from tensorboard.summary.writer.event_file_writer import EventFileWriter

    with tempfile.TemporaryDirectory(prefix="toynet-tb-") as tmp:
        writer = EventFileWriter(tmp)
        try:
            for step, summary in _summaries(record):
                writer.add_event(Event(wall_time=time.time(), step=step, summary=summary))
        finally:
            writer.close()
        return {p.name: p.read_bytes() for p in sorted(Path(tmp).iterdir()) if p.is_file()}


def _summaries(record: RunRecord) -> list[tuple[int, Any]]:
    """(step, Summary) for every epoch's scalars, then the HParams view's entries.

    The grid point goes into TensorBoard's HParams view in this run's own directory:
    its configuration (hyperparameters and the ``final/*`` metrics), the run's values,
    and the final metrics as scalars at the last epoch.
    """
    from tensorboard.compat.proto.summary_pb2 import Summary
    from tensorboard.plugins.hparams import summary_v2 as hp

    def scalar_pb(tag: str, value: float) -> Summary:  # the classic form EventAccumulator lists as scalars
        return Summary(value=[Summary.Value(tag=tag, simple_value=value)])

    out = [(int(row["epoch"]), scalar_pb(tag, float(row[key]))) for row in record.curve for key, tag in _TAGS.items()]
    spec = record.spec.to_dict()
    spec["bn"] = "on" if record.spec.bn else "off"
    spec = {k: v for k, v in spec.items() if isinstance(v, (bool, int, float, str))}  # what HParams can show
    final = {f"final/{k}": v for k, v in record.final.items() if v is not None}
    if not final:
        return out
    step = int(record.curve[-1]["epoch"])
    config = hp.hparams_config_pb(hparams=[hp.HParam(k) for k in spec], metrics=[hp.Metric(k) for k in final])
    out += [(0, config), (0, hp.hparams_pb(spec))]
    out += [(step, scalar_pb(tag, float(value))) for tag, value in final.items()]
    return out
