"""Parquet and table helpers of the store: encode, decode onto the declared schema, filter.

Kept apart from :mod:`orchestration.store` (which owns paths and atomicity) so the
table rules read in one place: every file is projected onto the schema this code
declares, and ``where`` filters parse CLI text by the column's type.
"""

from __future__ import annotations

import difflib
import hashlib
from typing import Any, Iterable

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from orchestration import records
from orchestration.records import StoreError

WHERE_EXAMPLES = ("status", "dataset", "bn", "batch_size", "transforms", "epochs", "seed")


def sha256(data: bytes | pa.Buffer) -> str:
    return hashlib.sha256(memoryview(data)).hexdigest()


def one_line(exc: BaseException) -> str:
    """An exception's message on one line, for one-line user errors."""
    return " ".join(str(exc).split()) or type(exc).__name__


def closest(name: str, choices: Iterable[str]) -> str:
    """' (closest: a, b)' for an error message, or '' when nothing is close."""
    near = difflib.get_close_matches(name, list(choices), n=3, cutoff=0.5)
    return f" (closest: {', '.join(near)})" if near else ""


def parquet_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return sink.getvalue().to_pybytes()


def read_parquet(data: pa.Buffer, schema: pa.Schema, where: str) -> pa.Table:
    """Decode one stored file and project it onto ``schema``; any damage is a StoreError naming ``where``."""
    try:
        table = pq.read_table(pa.BufferReader(data))
    except (pa.ArrowException, OSError) as exc:
        raise StoreError(f"{where} is not readable Parquet: {one_line(exc)}") from None
    records.check_schema_version(table, where)
    return conform(table, schema, where)


def conform(table: pa.Table, schema: pa.Schema, where: str) -> pa.Table:
    """Project onto the declared schema: absent nullable columns become nulls, types are cast."""
    columns = []
    for f in schema:
        if f.name in table.column_names:
            columns.append(table.column(f.name))
        elif f.nullable:
            columns.append(pa.nulls(table.num_rows, f.type))
        else:
            raise StoreError(f"{where} lacks column {f.name!r} of schema version {records.SCHEMA_VERSION}")
    try:
        return pa.Table.from_arrays(columns, schema=schema)
    except (pa.ArrowException, ValueError) as exc:
        raise StoreError(f"{where} does not match the declared schema: {one_line(exc)}") from None


def concat(tables: list[pa.Table], schema: pa.Schema) -> pa.Table:
    return pa.concat_tables(tables) if tables else schema.empty_table()


def where_mask(table: pa.Table, where: dict[str, Any]) -> pa.ChunkedArray:
    """Boolean mask: for every column, its value equals the given value (or one of a list)."""
    mask = None
    for column, wanted in where.items():
        if column not in table.column_names:
            hint = closest(column, table.column_names) or f" (e.g. {', '.join(WHERE_EXAMPLES)})"
            raise StoreError(f"unknown column {column!r} in where{hint}")
        values = list(wanted) if isinstance(wanted, (list, tuple, set)) else [wanted]
        typ = table.schema.field(column).type
        try:
            typed = pa.array([_parse_value(column, v, typ) for v in values], type=typ)
        except (pa.ArrowException, TypeError, ValueError):
            raise StoreError(f"where {column}={values[0]!r}: expected a {typ} value") from None
        term = pc.is_in(table.column(column), value_set=typed)
        mask = term if mask is None else pc.and_(mask, term)
    return mask


def _parse_value(column: str, value: Any, typ: pa.DataType) -> Any:
    """A where-value as the column's type; CLI strings such as 'true' or '32' are parsed."""
    if not isinstance(value, str) or pa.types.is_string(typ):
        return value
    try:
        if pa.types.is_boolean(typ):
            return {"true": True, "false": False, "on": True, "off": False}[value.lower()]
        if pa.types.is_integer(typ):
            return int(value)
        if pa.types.is_floating(typ):
            return float(value)
    except (KeyError, ValueError):
        pass
    else:
        return value
    raise StoreError(f"where {column}={value!r}: expected a {typ} value")
