"""TensorBoard event files for one run, so ``tensorboard --logdir <root>/<EXP>`` shows the grid.

``SummaryWriter`` only writes to local paths, so events are written into a temporary
directory and handed back as bytes; the store copies them next to the run's other
files, which makes them work under any store root (local or object-store URI).
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

from orchestration.records import RunRecord

log = logging.getLogger(__name__)

# Scalar tags "<metric>/<split>": TensorBoard groups by the prefix, so train and
# validation of one metric sit side by side.
_TAGS = {"loss": "loss/train", "acc": "acc/train", "val_loss": "loss/val", "val_acc": "acc/val",
         "lr": "lr", "seconds": "epoch_seconds"}


def event_files(record: RunRecord) -> dict[str, bytes]:
    """Write the run's per-epoch scalars and its hyperparameters; return {file name: bytes}."""
    from torch.utils.tensorboard import SummaryWriter
    from torch.utils.tensorboard.summary import hparams

    with tempfile.TemporaryDirectory(prefix="toynet-tb-") as tmp:
        writer = SummaryWriter(log_dir=tmp)
        try:
            for row in record.curve:
                for key, tag in _TAGS.items():
                    writer.add_scalar(tag, float(row[key]), global_step=int(row["epoch"]))
            _add_hparams(writer, record, hparams)
        finally:
            writer.close()
        return {p.name: p.read_bytes() for p in sorted(Path(tmp).iterdir()) if p.is_file()}


def _add_hparams(writer, record: RunRecord, hparams) -> None:  # noqa: ANN001 (torch types)
    """Register the grid point in TensorBoard's HParams view, in this run's own directory.

    ``SummaryWriter.add_hparams`` would open a second, timestamped run directory; writing
    the three summaries directly keeps one directory per run.
    """
    spec = record.spec.to_dict()
    spec["bn"] = "on" if record.spec.bn else "off"
    final = {f"final/{k}": v for k, v in record.final.items() if v is not None}
    if not final:
        return
    for summary in hparams(spec, final):
        writer.file_writer.add_summary(summary)
    step = int(record.curve[-1]["epoch"])
    for tag, value in final.items():
        writer.add_scalar(tag, value, global_step=step)
