"""The item catalog: product rows parsed from CSV, JSON lines or JSON, held in memory by item id."""
from __future__ import annotations

import codecs
import csv
import io
import logging
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from .sources import SourceError

log = logging.getLogger(__name__)

# Output field -> accepted column names, compared case-insensitively. The first match wins.
ALIASES: dict[str, tuple[str, ...]] = {
    "id": ("item_id", "id", "itemid", "item id", "sku", "product_id"),
    "name": ("name", "title", "item_name", "product_name"),
    "url": ("url", "link", "item_url", "product_url", "page_url"),
    "price": ("price", "item_price"),
    "image": ("image", "image_url", "imageurl", "image_link", "img", "thumbnail"),
}
ITEM_FIELDS = tuple(ALIASES)  # the fields every returned item has
# Optional columns that shape serving without being returned: stock drops items, rank/popularity
# orders the popular list used as the fallback and to backfill short lists.
CONTROL_ALIASES: dict[str, tuple[str, ...]] = {
    "stock": ("in_stock", "instock", "availability", "available", "stock", "inventory"),
    "rank": ("popularity_rank", "rank", "sales_rank"),
    "popularity": ("popularity", "popularity_score", "sales", "sales_count"),
}
OUT_OF_STOCK = {"false", "no", "n", "0", "out of stock", "out_of_stock", "outofstock", "sold out", "unavailable"}
MAX_REPORTED_PROBLEMS = 20

Item = dict[str, Any]


@dataclass
class Catalog:
    """Items by id, each already in the response shape {id, name, url, price, image}."""

    items: dict[str, Item]
    problems: list[str] = field(default_factory=list)
    skipped_rows: int = 0
    out_of_stock: int = 0
    popular: list[str] = field(default_factory=list)  # in-stock ids, most popular first

    def __len__(self) -> int:
        return len(self.items)

    def join(self, item_ids: Iterable[str]) -> list[Item]:
        """Return the known items in the given order; ids the catalog lacks are left out."""
        items = self.items
        return [items[i] for i in item_ids if i in items]


def parse_catalog(
    data: bytes, fmt: str, uri: str, extra_fields: Sequence[str] = (), image_base_url: str | None = None
) -> Catalog:
    """Parse a catalog file, reporting rows that cannot be used instead of silently serving them.

    extra_fields names more columns to return with every item; image_base_url makes relative image
    paths absolute.
    """
    catalog = Catalog(items={})
    columns: dict[str, str | None] | None = None
    ranking: list[tuple[float, int, str]] = []
    for number, row in _rows(data, fmt, uri):
        if not isinstance(row, Mapping):
            _report(catalog, f"skipped row {number}: not an object", skipped=True)
            continue
        if columns is None or fmt != "csv":
            columns = _match_columns(row.keys(), extra_fields)
            if columns["id"] is None and fmt == "csv":
                raise SourceError(
                    f"{uri}: no item id column; expected one of {', '.join(ALIASES['id'])} (any case)."
                )
        item_id = _cell(row, columns["id"])
        if not item_id:
            _report(catalog, f"skipped row {number}: no item id", skipped=True)
            continue
        if _out_of_stock(row.get(columns["stock"]) if columns["stock"] is not None else None):
            catalog.out_of_stock += 1
            catalog.items.pop(item_id, None)
            continue
        problem = _add(catalog.items, item_id, row, columns, number, extra_fields, image_base_url)
        if problem:
            _report(catalog, problem)
        if (order := _popularity_order(row, columns)) is not None:
            ranking.append((order, number, item_id))
    if not catalog.items:
        raise SourceError(f"{uri}: no usable items ({catalog.skipped_rows} rows skipped, "
                          f"{catalog.out_of_stock} out of stock).")
    ranking.sort()
    catalog.popular = list(dict.fromkeys(i for _, _, i in ranking if i in catalog.items))
    if catalog.problems:
        log.warning(
            "catalog %s: %d rows skipped; first problems: %s", uri, catalog.skipped_rows, "; ".join(catalog.problems)
        )
    return catalog


def _report(catalog: Catalog, problem: str, skipped: bool = False) -> None:
    catalog.skipped_rows += skipped
    if len(catalog.problems) < MAX_REPORTED_PROBLEMS:
        catalog.problems.append(problem)


def _out_of_stock(value: Any) -> bool:
    if value is None or isinstance(value, bool):
        return value is False
    if isinstance(value, (int, float)):
        return value <= 0
    text = str(value).strip().lower()
    if text.lstrip("-").isdigit():
        return int(text) <= 0
    return text in OUT_OF_STOCK


def _popularity_order(row: Mapping[str, Any], columns: Mapping[str, str | None]) -> float | None:
    """Return a sort key, smaller = more popular: the rank itself, or minus the popularity."""
    for name, sign in (("rank", 1.0), ("popularity", -1.0)):
        if columns[name] is not None:
            value, problem = _price(row.get(columns[name]))
            if value is not None and problem is None:
                return sign * float(value)
    return None


def _rows(data: bytes, fmt: str, uri: str) -> Iterator[tuple[int, Mapping[str, Any]]]:
    """Yield (row number, row) pairs; row numbers are 1-based data rows (CSV: the header is row 0)."""
    try:
        if fmt == "csv":
            text = data.decode("utf-8-sig")
            reader = csv.DictReader(io.StringIO(text, newline=""))
            return ((n, row) for n, row in enumerate(reader, start=1))
        data = data.removeprefix(codecs.BOM_UTF8)  # exported from Excel and friends
        if fmt == "jsonl":
            return _jsonl(data, uri)
        document = orjson.loads(data)
    except UnicodeDecodeError as exc:
        raise SourceError(f"{uri}: not UTF-8 text ({exc.reason} at byte {exc.start}).") from exc
    except orjson.JSONDecodeError as exc:
        raise SourceError(f"{uri}: not valid JSON ({exc}).") from exc
    if isinstance(document, Mapping):
        # A product feed often wraps its list: {"items": [...]} or {"products": [...]}.
        document = next((document[k] for k in ("items", "products", "data") if isinstance(document.get(k), list)), None)
    if not isinstance(document, list):
        raise SourceError(f"{uri}: a .json catalog must be an array of objects (or an object with an \"items\" array).")
    return ((n, row) for n, row in enumerate(document, start=1))


def _jsonl(data: bytes, uri: str) -> Iterator[tuple[int, Mapping[str, Any]]]:
    for number, line in enumerate(data.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield number, orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise SourceError(f"{uri}: line {number} is not valid JSON ({exc}).") from exc


def _match_columns(names: Iterable[Any], extra_fields: Sequence[str] = ()) -> dict[str, str | None]:
    lowered = {str(n).strip().lower(): n for n in names if n is not None}
    aliases = ALIASES | CONTROL_ALIASES | {name: (name,) for name in extra_fields}
    return {out: next((lowered[a] for a in names_ if a in lowered), None) for out, names_ in aliases.items()}


def _add(
    items: dict[str, Item],
    item_id: str,
    row: Mapping[str, Any],
    columns: Mapping[str, str | None],
    number: int,
    extra_fields: Sequence[str],
    image_base_url: str | None,
) -> str | None:
    """Add one row to items; return a sentence describing any problem with it."""
    price, price_problem = _price(row.get(columns["price"]) if columns["price"] is not None else None)
    duplicate = item_id in items
    image = _cell(row, columns["image"]) or None
    if image and image_base_url and not image.startswith(("https://", "http://", "//")):
        image = image_base_url.rstrip("/") + "/" + image.lstrip("/")
    item: Item = {
        "id": item_id,
        "name": _cell(row, columns["name"]) or "",
        "url": _cell(row, columns["url"]) or "",
        "price": price,
        "image": image,
    }
    for name in extra_fields:
        value = row.get(columns[name]) if columns[name] is not None else None
        item[name] = value.strip() if isinstance(value, str) else value
    items[item_id] = item
    if duplicate:
        return f"row {number}: item id {item_id!r} repeated; the later row is used"
    if price_problem:
        return f"row {number}: item {item_id!r} price {price_problem}; served as null"
    return None


def _cell(row: Mapping[str, Any], column: str | None) -> str | None:
    """Return a column's value as stripped text, or None when the column or value is absent."""
    value = row.get(column) if column is not None else None
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value).strip()


def _price(value: Any) -> tuple[float | int | None, str | None]:
    """Return a JSON-number price (or None) and, when the value was unusable, why."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None, None
    if isinstance(value, bool):
        return None, f"{value!r} is not a number"
    if isinstance(value, (int, float)):
        number: float | int = value
    else:
        text = str(value).strip().lstrip("$€£")
        try:
            number = int(text) if text.lstrip("-").isdigit() else float(text)
        except ValueError:
            return None, f"{value!r} is not a number"
    if isinstance(number, float) and not math.isfinite(number):
        return None, f"{value!r} is not a finite number"
    return number, None


def parse_item_list(data: bytes, fmt: str, uri: str) -> list[str]:
    """Parse a popular-items list, most popular first: a JSON array of ids, or rows with an item id column."""
    ids: list[str] = []
    for _, row in _rows(data, fmt, uri):
        if isinstance(row, Mapping):
            ids.append(_cell(row, _match_columns(row.keys())["id"]) or "")
        elif isinstance(row, (str, int)) and not isinstance(row, bool):
            ids.append(str(row).strip())
    if not any(ids):
        raise SourceError(f"{uri}: no item ids found (expected an {'/'.join(ALIASES['id'])} column or a JSON array).")
    return _unique_ids(ids)


def _unique_ids(ids: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(i for i in ids if i))
