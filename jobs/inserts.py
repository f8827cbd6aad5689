"""A new row written with one Core ``INSERT`` instead of the ORM's unit of work, for the hot path.

Every submit writes two rows (the job and its ``video.queued`` event). Flushing them through the
unit of work (dependency sorting, per-object bookkeeping, result post-fetch) cost about half the
submit's CPU in the API process, and the API is CPU-bound under load (issue 17). Here the
instance's column values are completed with the columns' Python defaults, exactly as a flush
would, sent in one prepared ``INSERT`` on the session's connection (so in its transaction), and
the instance is attached as if it had been loaded: it is an ordinary persistent object afterwards,
whose later changes the session writes as ``UPDATE``s.

Only for mapped classes whose columns all have a Python default where they have a server default
(the instance must know every value without reading the row back); an autoincrement primary key
comes back by ``RETURNING``.
"""

from __future__ import annotations

import functools
from typing import Any

from sqlalchemy import CTE, Column, ColumnElement, Insert, insert, inspect
from sqlalchemy.orm import Mapper, Session, make_transient_to_detached

_MISSING = object()


@functools.cache
def _plan(
    mapper: Mapper[Any], also: ColumnElement[Any] | None = None, carrying: CTE | None = None
) -> tuple[list[tuple[str, Column[Any]]], Column[Any] | None, Insert]:
    """(attribute name, column) pairs, the generated key column if any, and the INSERT statement
    (returning the generated key, then ``also``; with ``carrying`` in its ``WITH``)."""
    table = mapper.local_table
    columns: list[tuple[str, Column[Any]]] = []
    generated: Column[Any] | None = None
    for column in table.columns:
        if column.primary_key and column.autoincrement is True:
            generated = column
            continue
        if column.server_default is not None and column.default is None:
            raise TypeError(f"{table.name}.{column.name}: a server default with no Python default")
        columns.append((mapper.get_property_by_column(column).key, column))
    statement = insert(table)
    if carrying is not None:
        statement = statement.add_cte(carrying)
    returned = [column for column in (generated, also) if column is not None]
    if returned:
        statement = statement.returning(*returned)
    return columns, generated, statement


def _default(column: Column[Any]) -> Any:
    default = column.default
    if default is None:
        return None
    if default.is_scalar:  # type: ignore[attr-defined]
        return default.arg  # type: ignore[attr-defined]
    if default.is_callable:  # type: ignore[attr-defined]
        return default.arg(None)  # type: ignore[attr-defined]  # SQLAlchemy wraps it to take a context
    raise TypeError(f"{column}: only scalar and callable Python defaults are supported")


def insert_row(
    session: Session,
    instance: object,
    *,
    also_return: ColumnElement[Any] | None = None,
    carrying: CTE | None = None,
    params: dict[str, Any] | None = None,
) -> Any:
    """Write transient ``instance`` with one ``INSERT`` in ``session``'s transaction and attach it.

    An attribute left unset or set to None takes its column's Python default (a flush does the
    same). Raises what the database raises (``IntegrityError`` for a duplicate key) before the
    instance is attached.

    ``also_return``: an expression the same statement returns (a scalar subquery: a read that then
    costs no round trip of its own), built once and reused (statements are cached per expression);
    ``carrying``: a data-modifying CTE (PostgreSQL) the statement runs too, another write that then
    costs no statement of its own. ``params`` binds the parameters of both, whose names must not be
    column names. Returns ``also_return``'s value, else None."""
    state = inspect(instance)
    if not state.transient:
        raise ValueError("insert_row takes a new instance that is not in a session")
    columns, generated, statement = _plan(state.mapper, also_return, carrying)
    given = instance.__dict__
    values: dict[str, Any] = {}
    for attr, column in columns:
        value = given.get(attr, _MISSING)
        if value is _MISSING or (value is None and column.default is not None):
            value = _default(column)
        values[column.key] = value
    if params:
        values.update(params)
    result = session.connection().execute(statement, values)
    for attr, column in columns:
        if given.get(attr, _MISSING) is not values[column.key]:
            setattr(instance, attr, values[column.key])
    returned = result.one() if generated is not None or also_return is not None else ()
    if generated is not None:
        setattr(instance, state.mapper.get_property_by_column(generated).key, returned[0])
    make_transient_to_detached(instance)  # its values are now "as loaded": nothing left to flush
    session.add(instance)
    return returned[-1] if also_return is not None else None
