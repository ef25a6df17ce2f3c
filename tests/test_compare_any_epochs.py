"""compare --any-epochs: a shorter run is set beside the seed's shortest published schedule."""

from __future__ import annotations

import pyarrow as pa

from orchestration.compare import compare, to_csv, to_markdown

REFERENCE = {
    ("mnist", True, 10, 32, "none"): {"loss": 0.1, "acc": 0.9, "val_loss": 0.2, "val_acc": 0.99},
    ("mnist", True, 30, 32, "none"): {"loss": 0.0, "acc": 1.0, "val_loss": 0.3, "val_acc": 0.995},
}


def _runs(epochs: int) -> pa.Table:
    row = {"experiment": "e", "run_id": f"r{epochs}", "status": "complete", "dataset": "mnist", "bn": True,
           "epochs": epochs, "batch_size": 32, "transforms": "none", "lr": 0.1, "momentum": 0.9,
           "weight_decay": 0.0, "seed": 0, "train_limit": None, "val_limit": None,
           "loss": 0.2, "acc": 0.95, "val_loss": 0.25, "val_acc": 0.98}
    return pa.Table.from_pylist([row])


def test_exact_match_only_by_default():
    cmp = compare(_runs(3), REFERENCE)
    assert cmp.rows[0].reference is None and not cmp.shows_reference_epochs


def test_any_epochs_uses_the_shortest_published_schedule():
    cmp = compare(_runs(3), REFERENCE, any_epochs=True)
    row = cmp.rows[0]
    assert row.reference_epochs == 10 and row.reference["val_acc"] == 0.99
    assert abs(row.delta("val_acc") - (0.98 - 0.99)) < 1e-12
    assert "| seed Epoch |" in to_markdown(cmp) and "| 10 |" in to_markdown(cmp)
    assert to_csv(cmp).splitlines()[0].startswith("dataset,bn,epochs,batch_size,transforms,seed_epochs,n")


def test_any_epochs_keeps_an_exact_match():
    cmp = compare(_runs(30), REFERENCE, any_epochs=True)
    assert cmp.rows[0].reference_epochs == 30 and not cmp.shows_reference_epochs
