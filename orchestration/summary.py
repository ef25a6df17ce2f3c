"""The table ``grid.py`` prints at the end, read back from the store (not from Ray)."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from orchestration.compare import compare, to_markdown
from orchestration.store import ArtifactStore


def grid_summary(store: ArtifactStore, experiment: str, run_ids: list[str]) -> tuple[str, int]:
    """Seed-layout table of this grid's runs plus a line per run that is not complete.

    Returns (text, number of runs failed or missing). Reading the store rather than
    Tune's results means the table shows exactly what a later ``compare`` will.
    """
    wanted = set(run_ids)
    names = set(store.run_ids(experiment)) & wanted
    table = store.runs(experiment) if names else None
    if table is not None:
        table = table.filter(pc.is_in(table["run_id"], pa.array(sorted(wanted))))
    rows = table.to_pylist() if table is not None else []
    complete = {r["run_id"] for r in rows if r["status"] == "complete"}
    problems = [f"  failed: {r['run_id']}: {r['error']}" for r in rows if r["status"] != "complete"]
    problems += [f"  missing: {rid} (no record)" for rid in run_ids if rid not in {r['run_id'] for r in rows}]
    parts = [f"{len(complete)}/{len(run_ids)} runs complete in experiment {experiment!r}"]
    if complete:
        parts.append(to_markdown(compare(table)).rstrip())
    if problems:
        parts.append(f"{len(problems)} run(s) not complete:")
        parts.extend(problems)
    return "\n".join(parts), len(problems)
