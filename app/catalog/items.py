"""The item catalog: product rows parsed from CSV, JSON lines or JSON, held in memory by item id."""
from __future__ import annotations

import codecs
import csv
import heapq
import io
import logging
import math
from array import array
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from app.catalog.files import FileError

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
POPULAR_LIST_SIZE = 1000  # enough to backfill any answer and to serve as the fallback

Item = dict[str, Any]


class ItemsView(Mapping[str, Item]):
    """Read the catalog's items as dicts (decoded on access; the catalog keeps them as JSON bytes)."""

    def __init__(self, encoded: dict[str, bytes]) -> None:
        self._encoded = encoded

    def __getitem__(self, item_id: str) -> Item:
        return orjson.loads(self._encoded[item_id])

    def __iter__(self) -> Iterator[str]:
        return iter(self._encoded)

    def __len__(self) -> int:
        return len(self._encoded)


@dataclass
class Catalog:
    """Items by id, each kept as the JSON of its response shape {id, name, url, price, image, ...}.

    JSON bytes rather than dicts: a million items take far less memory (README, Benchmark), and a response is
    the items' bytes joined, with no serialisation per request.
    """

    encoded: dict[str, bytes] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    skipped_rows: int = 0
    out_of_stock: int = 0
    cut_off: str | None = None  # why the file looks truncated (its last row cut short), else None
    popular: list[str] = field(default_factory=list)  # in-stock ids, most popular first

    def __len__(self) -> int:
        return len(self.encoded)

    @property
    def items(self) -> ItemsView:
        """Return the items by id, as dicts."""
        return ItemsView(self.encoded)

    def known(self, item_ids: Iterable[str]) -> list[str]:
        """Return the ids the catalog has, in the given order; the others are left out."""
        encoded = self.encoded
        return [i for i in item_ids if i in encoded]

    def join(self, item_ids: Iterable[str]) -> list[Item]:
        """Return the known items as dicts, in the given order; ids the catalog lacks are left out."""
        encoded = self.encoded
        return [orjson.loads(encoded[i]) for i in item_ids if i in encoded]

    def render(self, item_ids: Iterable[str]) -> bytes:
        """Return the JSON array of the given (known) items."""
        encoded = self.encoded
        return b"[" + b",".join([encoded[i] for i in item_ids]) + b"]"


def parse_catalog(
    data: bytes, fmt: str, uri: str, extra_fields: Sequence[str] = (), image_base_url: str | None = None,
    required: Sequence[str] = ("name", "url"),
) -> Catalog:
    """Parse a catalog file, reporting rows that cannot be used instead of silently serving them.

    extra_fields names more columns to return with every item; image_base_url makes relative image
    paths absolute; an item without one of the required fields is left out (and a CSV without the column
    refused): in an email it would be a blank tile or a dead link.
    """
    catalog = Catalog()
    columns: dict[str, str | None] | None = None
    # Ranks in a flat array beside the ids, not a tuple per row: a million long-lived small objects
    # interleaved with the items would keep their memory fragmented after the sort.
    rank_orders: array[float] = array("d")
    rank_ids: list[str] = []
    where = "row" if fmt == "json" else "line"  # CSV and JSON lines are reported by their line in the file
    for number, row in _rows(data, fmt, uri, catalog):
        if not isinstance(row, Mapping):
            _report(catalog, f"skipped {where} {number}: not an object", skipped=True)
            continue
        if columns is None or fmt != "csv":
            columns = _match_columns(row.keys(), extra_fields)
            if fmt == "csv":
                _require_columns(columns, ("id", *required), uri)
        item_id = _cell(row, columns["id"])
        if not item_id:
            _report(catalog, f"skipped {where} {number}: no item id", skipped=True)
            continue
        if _out_of_stock(row.get(columns["stock"]) if columns["stock"] is not None else None):
            catalog.out_of_stock += 1
            catalog.encoded.pop(item_id, None)
            continue
        name, url = _cell(row, columns["name"]) or "", _cell(row, columns["url"]) or ""
        # Checked only when a value is empty: the common row pays two truth tests, not a list.
        if (not name or not url) and (missing := [f for f, v in (("name", name), ("url", url))
                                                  if not v and f in required]):
            _report(catalog, f"skipped {where} {number}: item {item_id!r} has no {' or '.join(missing)}",
                    skipped=True)
            continue
        problem = _add(catalog.encoded, item_id, name, url, row, columns, where, number, extra_fields,
                       image_base_url)
        if problem:
            _report(catalog, problem)
        if (order := _popularity_order(row, columns)) is not None:
            rank_orders.append(order)
            rank_ids.append(item_id)
    if not catalog.encoded:
        raise FileError(f"{uri}: no usable items ({catalog.skipped_rows} rows skipped, "
                          f"{catalog.out_of_stock} out of stock).")
    best = heapq.nsmallest(POPULAR_LIST_SIZE * 2, range(len(rank_ids)), key=rank_orders.__getitem__)
    popular = dict.fromkeys(rank_ids[n] for n in best if rank_ids[n] in catalog.encoded)
    catalog.popular = list(popular)[:POPULAR_LIST_SIZE]
    if catalog.problems:
        log.warning(
            "catalog %s: %d rows skipped; first problems: %s", uri, catalog.skipped_rows, "; ".join(catalog.problems)
        )
    return catalog


def _require_columns(columns: Mapping[str, str | None], needed: Sequence[str], uri: str) -> None:
    """Refuse a CSV header without a needed column: no row of it could be served."""
    for column in needed:
        if columns[column] is None:
            raise FileError(f"{uri}: no item {column} column; expected one of {', '.join(ALIASES[column])} "
                              "(any case).")


def reload_check(max_shrink: float) -> Callable[[Catalog, Catalog], tuple[str, str] | None]:
    """Return the test a reloaded catalog must pass to replace the one being served.

    It returns (reason, sentence) to refuse: the file looks cut off, or it has more than max_shrink (a
    fraction, CATALOG_MAX_SHRINK) fewer usable items than the catalog it would replace.
    """

    def check(old: Catalog, new: Catalog) -> tuple[str, str] | None:
        if new.cut_off is not None:
            return "cut_off", (f"the file looks cut off ({new.cut_off}); it has {len(new)} usable items against "
                               f"{len(old)} served")
        if len(new) < len(old) * (1 - max_shrink):
            return "shrink", (f"it has {len(new)} usable items against {len(old)} served, a fall of more than "
                              f"CATALOG_MAX_SHRINK ({max_shrink:.0%})")
        return None

    return check


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


def _rows(data: bytes, fmt: str, uri: str, catalog: Catalog) -> Iterator[tuple[int, Mapping[str, Any]]]:
    """Yield (number, row) pairs: the line in the file for CSV (its first line) and JSON lines, else the 1-based index.

    CSV rows that cannot be read whole are reported to catalog (with their line in the file) and not yielded.
    """
    try:
        if fmt == "csv":
            data.decode("utf-8-sig")  # says where the file is not UTF-8; the text itself is not kept
            # Read through a decoding stream rather than io.StringIO(text): StringIO holds 4 bytes a character,
            # 600 MB for a 150 MB catalog, on top of the items being built.
            return _csv_rows(io.TextIOWrapper(io.BytesIO(data), encoding="utf-8-sig", newline=""), catalog,
                             ends_with_newline=data.endswith((b"\n", b"\r")))
        data = data.removeprefix(codecs.BOM_UTF8)  # exported from Excel and friends
        if fmt == "jsonl":
            return _jsonl(data, uri)
        document = orjson.loads(data)
    except UnicodeDecodeError as exc:
        raise FileError(f"{uri}: not UTF-8 text ({exc.reason} at byte {exc.start}).") from exc
    except orjson.JSONDecodeError as exc:
        raise FileError(f"{uri}: not valid JSON ({exc}).") from exc
    if isinstance(document, Mapping):
        # A product feed often wraps its list: {"items": [...]} or {"products": [...]}.
        document = next((document[k] for k in ("items", "products", "data") if isinstance(document.get(k), list)), None)
    if not isinstance(document, list):
        raise FileError(f"{uri}: a .json catalog must be an array of objects (or an object with an \"items\" array).")
    return ((n, row) for n, row in enumerate(document, start=1))


def _csv_rows(lines: Iterable[str], catalog: Catalog, ends_with_newline: bool = True
              ) -> Iterator[tuple[int, Mapping[str, Any]]]:
    """Yield each data row as {header: cell}, as csv.DictReader would (cells beyond the header are dropped),
    without DictReader's per-row Python bookkeeping.

    A row with fewer cells than the header, or whose quoting is broken, is reported and left out: its cells
    cannot be trusted to sit under the right columns. A quote never closed swallows the rest of the file, and
    a short last row without a final newline is a file cut off mid-row: both set catalog.cut_off.
    """
    reader = csv.reader(lines, strict=True)  # strict: an unclosed quote raises at the end, not a giant last cell
    header = next(reader, None)
    if header is None:
        return
    width, line, short_line = len(header), reader.line_num, 0
    while True:
        # The for loop is restarted after an error: csv.reader resumes at the next line.
        try:
            for cells in reader:
                if not cells:  # DictReader skips blank lines, and does not count them
                    line = reader.line_num
                    continue
                start, line = line + 1, reader.line_num
                if len(cells) < width:
                    short_line = line
                    _report(catalog, f"skipped line {start}: {len(cells)} cells where the header has {width}",
                            skipped=True)
                    continue
                yield start, dict(zip(header, cells, strict=False))  # longer rows: extra cells dropped
            break
        except csv.Error as exc:
            start, line = line + 1, reader.line_num  # the row began after the last one read
            if str(exc) == "unexpected end of data":  # csv's words for end of file inside a quoted cell
                catalog.cut_off = f"a quote opened on line {start} is never closed (lines {start}-{line} unread)"
                _report(catalog, f"skipped line {start}: {catalog.cut_off}", skipped=True)
                break
            _report(catalog, f"skipped line {start}: {exc}", skipped=True)
    if short_line and short_line == line and not ends_with_newline:
        catalog.cut_off = f"its last line, {short_line}, is a row cut short and the file has no final newline"


def _jsonl(data: bytes, uri: str) -> Iterator[tuple[int, Mapping[str, Any]]]:
    for number, line in enumerate(data.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield number, orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise FileError(f"{uri}: line {number} is not valid JSON ({exc}).") from exc


def _match_columns(names: Iterable[Any], extra_fields: Sequence[str] = ()) -> dict[str, str | None]:
    lowered = {str(n).strip().lower(): n for n in names if n is not None}
    aliases = ALIASES | CONTROL_ALIASES | {name: (name,) for name in extra_fields}
    return {out: next((lowered[a] for a in names_ if a in lowered), None) for out, names_ in aliases.items()}


def _add(
    encoded: dict[str, bytes],
    item_id: str,
    name: str,
    url: str,
    row: Mapping[str, Any],
    columns: Mapping[str, str | None],
    where: str,
    number: int,
    extra_fields: Sequence[str],
    image_base_url: str | None,
) -> str | None:
    """Add one row to items; return a sentence describing any problem with it."""
    price, price_problem = _price(row.get(columns["price"]) if columns["price"] is not None else None)
    duplicate = item_id in encoded
    image = _cell(row, columns["image"]) or None
    if image and image_base_url and not image.startswith(("https://", "http://", "//")):
        image = image_base_url.rstrip("/") + "/" + image.lstrip("/")
    item: Item = {
        "id": item_id,
        "name": name,
        "url": url,
        "price": price,
        "image": image,
    }
    for name in extra_fields:
        value = row.get(columns[name]) if columns[name] is not None else None
        item[name] = value.strip() if isinstance(value, str) else value
    # orjson hands back a buffer of at least 4 KiB; an exact-size copy keeps a million items in ~300 MB.
    encoded[item_id] = memoryview(orjson.dumps(item)).tobytes()
    if duplicate:
        return f"{where} {number}: item id {item_id!r} repeated; the later row is used"
    if price_problem:
        return f"{where} {number}: item {item_id!r} price {price_problem}; served as null"
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
    if value.__class__ is str:  # the common case, twice per CSV row: plain digits, or a decimal
        if value.isdigit():
            return int(value), None
        if "." in value:
            try:
                number = float(value)
            except ValueError:
                pass  # a currency sign, or not a number: the checks below say which
            else:
                if math.isfinite(number):
                    return number, None
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
    for _, row in _rows(data, fmt, uri, Catalog()):
        if isinstance(row, Mapping):
            ids.append(_cell(row, _match_columns(row.keys())["id"]) or "")
        elif isinstance(row, (str, int)) and not isinstance(row, bool):
            ids.append(str(row).strip())
    if not any(ids):
        raise FileError(f"{uri}: no item ids found (expected an {'/'.join(ALIASES['id'])} column or a JSON array).")
    return _unique_ids(ids)


def _unique_ids(ids: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(i for i in ids if i))
