"""Cursor pages shaped like OpenAI's lists: ``after`` (the last id of the previous page), ``limit``,
``order`` and ``has_more``, over ids that sort by creation time (ULIDs), for every list vidq serves."""

from __future__ import annotations

from typing import Any, Literal, TypeVar

from sqlalchemy import Select
from sqlalchemy.orm import InstrumentedAttribute, Session

SortOrder = Literal["asc", "desc"]
T = TypeVar("T")


def keyset_page(
    session: Session,
    query: Select[tuple[T]],
    id_column: InstrumentedAttribute[Any],
    *,
    limit: int,
    after: str | None,
    order: SortOrder,
) -> tuple[list[T], bool]:
    """One page of ``query`` in ``order`` of ``id_column``, starting past ``after``; returns (rows, has_more).

    Keyset, not offset: rows created or deleted between two calls never shift a page.
    """
    if after is not None:
        query = query.where(id_column > after if order == "asc" else id_column < after)
    ordered = id_column.asc() if order == "asc" else id_column.desc()
    rows = list(session.scalars(query.order_by(ordered).limit(limit + 1)))
    return rows[:limit], len(rows) > limit
