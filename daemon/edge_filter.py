"""Qdrant filters (qdrant-client `models.Filter`) in Qdrant Edge's own filter types.

The whole daemon writes filters in the language of Qdrant's API; Edge has the same conditions
under other Python classes. Covered: must / should / must_not / min_should, nested filters,
match value / any / except / text / phrase, range on numbers and datetimes, values count,
is_empty, is_null, has_id, has_vector, nested. Anything else raises `ValueError` naming it, so a
caller can answer "bad filter" instead of silently ignoring a condition.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import qdrant_edge as edge
from qdrant_client import models

__all__ = ["to_edge"]


def to_edge(f: models.Filter | None) -> edge.Filter | None:
    """The same filter as Edge types (None stays None)."""
    if f is None:
        return None
    if not isinstance(f, models.Filter):
        raise ValueError(f"not a filter: {type(f).__name__}")
    min_should = None
    if f.min_should is not None:
        min_should = edge.MinShould(conditions=[_condition(c) for c in f.min_should.conditions],
                                    min_count=f.min_should.min_count)
    return edge.Filter(must=_conditions(f.must), should=_conditions(f.should),
                       must_not=_conditions(f.must_not), min_should=min_should)


def _conditions(value: Any) -> list | None:
    if value is None:
        return None
    items = value if isinstance(value, list) else [value]
    return [_condition(c) for c in items]


def _condition(c: Any) -> Any:
    if isinstance(c, models.Filter):
        return to_edge(c)
    if isinstance(c, models.FieldCondition):
        return _field(c)
    if isinstance(c, models.IsEmptyCondition):
        return edge.IsEmptyCondition(key=c.is_empty.key)
    if isinstance(c, models.IsNullCondition):
        return edge.IsNullCondition(key=c.is_null.key)
    if isinstance(c, models.HasIdCondition):
        return edge.HasIdCondition(point_ids={str(i) for i in c.has_id})
    if isinstance(c, models.HasVectorCondition):
        return edge.HasVectorCondition(vector=c.has_vector)
    if isinstance(c, models.NestedCondition):
        return edge.NestedCondition(key=c.nested.key, filter=to_edge(c.nested.filter))
    raise ValueError(f"filter condition {type(c).__name__} is not supported on Qdrant Edge")


def _field(c: models.FieldCondition) -> edge.FieldCondition:
    kwargs: dict[str, Any] = {}
    if c.match is not None:
        kwargs["match"] = _match(c.match)
    if c.range is not None:
        kwargs["range"] = _range(c.range)
    if c.values_count is not None:
        v = c.values_count
        kwargs["values_count"] = edge.ValuesCount(lt=v.lt, gt=v.gt, lte=v.lte, gte=v.gte)
    if c.is_empty is not None:
        kwargs["is_empty"] = c.is_empty
    if c.is_null is not None:
        kwargs["is_null"] = c.is_null
    if c.geo_bounding_box or c.geo_radius or c.geo_polygon:
        raise ValueError("geo conditions are not supported by avindex on Qdrant Edge")
    if not kwargs:
        raise ValueError(f"field condition on {c.key!r} has no condition")
    return edge.FieldCondition(key=c.key, **kwargs)


def _match(m: Any) -> Any:
    if isinstance(m, models.MatchValue):
        return edge.MatchValue(m.value)
    if isinstance(m, models.MatchAny):
        return edge.MatchAny(list(m.any))
    if isinstance(m, models.MatchExcept):
        return edge.MatchExcept(list(m.except_))
    if isinstance(m, models.MatchText):
        return edge.MatchText(m.text)
    if isinstance(m, models.MatchPhrase):
        return edge.MatchPhrase(m.phrase)
    raise ValueError(f"match {type(m).__name__} is not supported on Qdrant Edge")


def _range(r: Any) -> Any:
    if isinstance(r, models.DatetimeRange):
        return edge.RangeDateTime(gte=_iso(r.gte), gt=_iso(r.gt), lte=_iso(r.lte), lt=_iso(r.lt))
    if isinstance(r, models.Range):
        return edge.RangeFloat(gte=r.gte, gt=r.gt, lte=r.lte, lt=r.lt)
    raise ValueError(f"range {type(r).__name__} is not supported on Qdrant Edge")


def _iso(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:  # Qdrant reads naive datetimes as UTC
            value = value.replace(tzinfo=dt.UTC)
        return value.isoformat()
    if isinstance(value, dt.date):
        return dt.datetime(value.year, value.month, value.day, tzinfo=dt.UTC).isoformat()
    return str(value)
