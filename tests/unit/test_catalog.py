"""app/catalog/items.py: parse_catalog for every format and the join used on the request path."""
from __future__ import annotations

import csv
import gzip
import json
from pathlib import Path
from typing import Any

import pytest

from app.catalog.files import FileError, LocalFile, Reloadable, open_file
from app.catalog.items import (
    MAX_REPORTED_PROBLEMS,
    Catalog,
    parse_catalog,
    reload_check,
)
from tests.conftest import SAMPLE_CATALOG

ITEM_KEYS = ["id", "name", "url", "price", "image"]

ROWS = [
    {"id": "1000", "name": "Trail Running Shoes", "url": "https://shop.example.com/p/1000", "price": 89.99,
     "image": "https://cdn.example.com/img/1000.jpg"},
    {"id": "1037", "name": "Merino Wool Socks", "url": "https://shop.example.com/p/1037", "price": 14,
     "image": "https://cdn.example.com/img/1037.jpg"},
]
CSV_BYTES = (
    b"ITEM_ID,NAME,URL,PRICE,IMAGE_URL\n"
    b"1000,Trail Running Shoes,https://shop.example.com/p/1000,89.99,https://cdn.example.com/img/1000.jpg\n"
    b"1037,Merino Wool Socks,https://shop.example.com/p/1037,14,https://cdn.example.com/img/1037.jpg\n"
)
JSONL_BYTES = b"".join(json.dumps(row).encode() + b"\n" for row in ROWS)
JSON_ARRAY_BYTES = json.dumps(ROWS).encode()
JSON_WRAPPED_BYTES = json.dumps({"count": 2, "items": ROWS}).encode()

FORMATS = {
    "csv": ("catalog.csv", CSV_BYTES),
    "jsonl": ("catalog.jsonl", JSONL_BYTES),
    "json-array": ("catalog.json", JSON_ARRAY_BYTES),
    "json-items": ("catalog.json", JSON_WRAPPED_BYTES),
}


def parse(data: bytes, fmt: str = "csv") -> Catalog:
    """Parse without the name/url rule: these tests are about other rules; the rule has tests of its own."""
    return parse_catalog(data, fmt, f"mem.{fmt}", required=())


def load_file(path: Path) -> Catalog:
    """Read a file through the real source path, as create_app does."""
    return Reloadable(LocalFile(str(path)), parse_catalog, 60, "catalog").load()


def assert_item_shape(item: dict[str, Any]) -> None:
    assert list(item) == ITEM_KEYS
    assert isinstance(item["id"], str) and item["id"]
    assert isinstance(item["name"], str)
    assert isinstance(item["url"], str)
    assert item["price"] is None or (isinstance(item["price"], (int, float)) and not isinstance(item["price"], bool))
    assert item["image"] is None or isinstance(item["image"], str)


# --- every format, plain and gzipped, through the real source -------------------------------------


@pytest.mark.parametrize("gzipped", [False, True], ids=["plain", "gz"])
@pytest.mark.parametrize("kind", list(FORMATS))
def test_every_format_loads_through_the_source(tmp_path: Path, kind: str, gzipped: bool) -> None:
    name, data = FORMATS[kind]
    path = tmp_path / (name + (".gz" if gzipped else ""))
    path.write_bytes(gzip.compress(data) if gzipped else data)

    catalog = load_file(path)

    assert catalog.items == {row["id"]: row for row in ROWS}
    assert catalog.problems == [] and catalog.skipped_rows == 0
    for item in catalog.items.values():
        assert_item_shape(item)


def test_file_uri_through_open_source(tmp_path: Path) -> None:
    path = tmp_path / "my catalog.jsonl.gz"
    path.write_bytes(gzip.compress(JSONL_BYTES))
    source = open_file(path.as_uri(), lambda: None)
    assert list(Reloadable(source, parse_catalog, 60, "catalog").load().items) == ["1000", "1037"]


def test_sample_catalog_parses_cleanly() -> None:
    catalog = load_file(SAMPLE_CATALOG)
    with SAMPLE_CATALOG.open(newline="", encoding="utf-8") as fh:
        expected_ids = [row["ITEM_ID"] for row in csv.DictReader(fh)]
    assert list(catalog.items) == expected_ids
    assert len(catalog) == len(expected_ids) == 40
    assert catalog.problems == []
    assert catalog.items["1000"] == {
        "id": "1000",
        "name": "Trail Running Shoes",
        "url": "https://shop.example.com/p/1000/trail-running-shoes",
        "price": 89.99,
        "image": "https://cdn.example.com/img/1000.jpg",
    }
    for item in catalog.items.values():
        assert_item_shape(item)
        assert "category" not in item and "CATEGORY" not in item


@pytest.mark.parametrize("key", ["items", "products", "data"])
def test_json_object_wrapping_a_list(key: str) -> None:
    catalog = parse(json.dumps({"meta": {"n": 1}, key: [{"id": "a", "name": "A"}]}).encode(), "json")
    assert catalog.items == {"a": {"id": "a", "name": "A", "url": "", "price": None, "image": None}}


@pytest.mark.parametrize("document", [b'{"meta": 1}', b'"just text"', b"42", b'{"items": "not a list"}'])
def test_json_that_is_not_a_list_of_items_is_rejected(document: bytes) -> None:
    with pytest.raises(FileError, match="array of objects"):
        parse(document, "json")


def test_personalize_items_dataset_csv() -> None:
    data = (
        b"ITEM_ID,TITLE,PRICE,IMAGE_URL,GENRE,CREATION_TIMESTAMP\n"
        b"i-1,Blue Kettle,24.5,https://cdn.example.com/k.jpg,kitchen|home,1700000000\n"
        b"i-2,Red Mug,8,,kitchen,1700000001\n"
    )
    catalog = parse(data)
    assert catalog.items == {
        "i-1": {"id": "i-1", "name": "Blue Kettle", "url": "", "price": 24.5, "image": "https://cdn.example.com/k.jpg"},
        "i-2": {"id": "i-2", "name": "Red Mug", "url": "", "price": 8, "image": None},
    }
    assert isinstance(catalog.items["i-2"]["price"], int)


@pytest.mark.parametrize(
    "header",
    [
        "ITEM_ID,NAME,URL,PRICE,IMAGE",
        "id,title,link,item_price,image_url",
        "Item_Id,Product_Name,Page_Url,Price,Thumbnail",
        " SKU , Item_Name , PRODUCT_URL , PRICE , IMG ",
        "product_id,Title,item_url,price,image_link",
    ],
)
def test_column_names_are_matched_by_alias_and_any_case(header: str) -> None:
    data = f"{header}\nx1,Lamp,https://s.example.com/x1,19.99,https://c.example.com/x1.png\n".encode()
    assert parse(data).items["x1"] == {
        "id": "x1", "name": "Lamp", "url": "https://s.example.com/x1", "price": 19.99,
        "image": "https://c.example.com/x1.png",
    }


def test_json_keys_are_matched_by_alias_and_any_case() -> None:
    rows = [{"Item_Id": "a", "TITLE": "A", "Link": "https://a", "ITEM_PRICE": 3, "Image_URL": "https://i/a"},
            {"sku": "b", "name": "B"}]
    catalog = parse(json.dumps(rows).encode(), "json")
    assert catalog.items["a"] == {"id": "a", "name": "A", "url": "https://a", "price": 3, "image": "https://i/a"}
    assert catalog.items["b"] == {"id": "b", "name": "B", "url": "", "price": None, "image": None}


def test_item_id_column_is_preferred_over_other_id_aliases() -> None:
    catalog = parse(b"id,item_id,name\nrow-1,ITEM-1,A\n")
    assert list(catalog.items) == ["ITEM-1"]


def test_utf8_bom_is_ignored_in_csv() -> None:
    catalog = parse("\ufeffITEM_ID,NAME\n1,Café crème\n".encode("utf-8"))
    assert catalog.items["1"]["name"] == "Café crème"


@pytest.mark.parametrize(("fmt", "data"), [("json", JSON_ARRAY_BYTES), ("jsonl", JSONL_BYTES)])
def test_utf8_bom_is_ignored_in_json(fmt: str, data: bytes) -> None:
    assert list(parse(b"\xef\xbb\xbf" + data, fmt).items) == ["1000", "1037"]


def test_quoted_commas_and_newlines_in_csv() -> None:
    data = (
        b'ITEM_ID,NAME,URL,PRICE\r\n'
        b'1,"Shoes, trail","https://s.example.com/1?a=1,2",10\r\n'
        b'2,"Two\nline ""quoted"" name",https://s.example.com/2,20\r\n'
        b'3,Plain,https://s.example.com/3,30\r\n'
    )
    catalog = parse(data)
    assert list(catalog.items) == ["1", "2", "3"]
    assert catalog.items["1"]["name"] == "Shoes, trail"
    assert catalog.items["1"]["url"] == "https://s.example.com/1?a=1,2"
    assert catalog.items["2"]["name"] == 'Two\nline "quoted" name'
    assert catalog.items["3"]["price"] == 30


def test_cells_are_stripped() -> None:
    assert parse(b"id,name,price\n  a  ,  Name  , 5 \n").items["a"] == {
        "id": "a", "name": "Name", "url": "", "price": 5, "image": None
    }


# --- prices ----------------------------------------------------------------------------------------


def test_json_prices_keep_their_number_type() -> None:
    rows = [{"id": "int", "price": 12}, {"id": "float", "price": 12.5}, {"id": "zero", "price": 0},
            {"id": "text", "price": "7.25"}, {"id": "currency", "price": "$9"}]
    items = parse(json.dumps(rows).encode(), "json").items
    assert items["int"]["price"] == 12 and type(items["int"]["price"]) is int
    assert items["float"]["price"] == 12.5 and type(items["float"]["price"]) is float
    assert items["zero"]["price"] == 0 and type(items["zero"]["price"]) is int
    assert items["text"]["price"] == 7.25
    assert items["currency"]["price"] == 9


def test_csv_prices_become_numbers() -> None:
    items = parse(b"id,price\na,10\nb,10.50\nc,-3\n").items
    assert (items["a"]["price"], type(items["a"]["price"])) == (10, int)
    assert (items["b"]["price"], type(items["b"]["price"])) == (10.5, float)
    assert items["c"]["price"] == -3


@pytest.mark.parametrize(("fmt", "data"), [("csv", b"id,price\na,\nb,   \n"),
                                           ("json", b'[{"id": "a", "price": null}, {"id": "b", "price": ""}]')])
def test_empty_price_is_null_without_a_problem(fmt: str, data: bytes) -> None:
    catalog = parse(data, fmt)
    assert catalog.items["a"]["price"] is None and catalog.items["b"]["price"] is None
    assert catalog.problems == []


@pytest.mark.parametrize(("fmt", "data", "bad"), [
    ("csv", b"id,price\nok,1\nbad,call us\n", "call us"),
    ("json", b'[{"id": "ok", "price": 1}, {"id": "bad", "price": true}]', "True"),
    ("json", b'[{"id": "ok", "price": 1}, {"id": "bad", "price": "NaN"}]', "NaN"),
])
def test_unusable_price_is_null_and_reported(fmt: str, data: bytes, bad: str) -> None:
    catalog = parse(data, fmt)
    assert catalog.items["bad"]["price"] is None
    assert catalog.items["ok"]["price"] == 1
    assert len(catalog.problems) == 1
    where = "row 2" if fmt == "json" else "line 3"  # a CSV row is named by its line in the file
    assert where in catalog.problems[0] and "'bad'" in catalog.problems[0] and bad in catalog.problems[0]
    assert catalog.skipped_rows == 0  # the item is still served


# --- rows that cannot be used ----------------------------------------------------------------------


def test_row_without_id_is_skipped_and_reported() -> None:
    catalog = parse(b"ITEM_ID,NAME\n1,One\n,No id\n3,Three\n")
    assert list(catalog.items) == ["1", "3"]
    assert catalog.skipped_rows == 1
    assert catalog.problems == ["skipped line 3: no item id"]


def test_json_row_without_id_is_skipped_and_reported() -> None:
    catalog = parse(b'{"id": "1"}\n{"name": "nameless"}\n\n{"id": "  "}\n{"id": "4"}\n', "jsonl")
    assert list(catalog.items) == ["1", "4"]
    assert catalog.skipped_rows == 2
    assert catalog.problems == ["skipped line 2: no item id", "skipped line 4: no item id"]


def test_duplicate_id_is_reported_and_the_later_row_wins() -> None:
    catalog = parse(b"id,name\n7,First\n8,Other\n7,Second\n")
    assert catalog.items["7"]["name"] == "Second"
    assert list(catalog.items) == ["7", "8"]
    assert len(catalog.problems) == 1
    assert "line 4" in catalog.problems[0] and "'7'" in catalog.problems[0] and "repeated" in catalog.problems[0]


def test_problems_are_capped_but_every_skip_is_counted() -> None:
    data = b"id,name\n" + b",x\n" * (MAX_REPORTED_PROBLEMS + 5) + b"real,Real\n"
    catalog = parse(data)
    assert list(catalog.items) == ["real"]
    assert catalog.skipped_rows == MAX_REPORTED_PROBLEMS + 5
    assert len(catalog.problems) == MAX_REPORTED_PROBLEMS


def test_numeric_json_ids_become_text() -> None:
    catalog = parse(b'[{"id": 1000, "name": "int"}, {"id": 1037.0, "name": "float"}]', "json")
    assert list(catalog.items) == ["1000", "1037"]
    assert catalog.items["1000"]["id"] == "1000"


@pytest.mark.parametrize(("fmt", "data"), [("json", b'[{"id": "a"}, 42, null]'), ("jsonl", b'{"id": "a"}\n[1, 2]\n')])
def test_row_that_is_not_an_object_is_skipped(fmt: str, data: bytes) -> None:
    catalog = parse(data, fmt)
    assert list(catalog.items) == ["a"]
    assert catalog.skipped_rows == len(catalog.problems) >= 1
    assert catalog.problems[0] == f"skipped {'row' if fmt == 'json' else 'line'} 2: not an object"


# --- files that cannot be used at all --------------------------------------------------------------


def test_csv_without_an_id_column_names_the_accepted_columns() -> None:
    with pytest.raises(FileError) as info:
        parse_catalog(b"NAME,PRICE\nLamp,3\n", "csv", "s3://b/catalog.csv")
    message = str(info.value)
    assert message.startswith("s3://b/catalog.csv: no item id column")
    for accepted in ("item_id", "id", "sku", "product_id"):
        assert accepted in message


@pytest.mark.parametrize(("fmt", "data", "expected"), [
    ("json", b'[{"id": "a"},', "not valid JSON"),
    ("jsonl", b'{"id": "a"}\n{"id": \n', "line 2 is not valid JSON"),
    ("csv", b"id,name\n1,caf\xe9\n", "not UTF-8"),
    ("json", b'[{"id": "caf\xe9"}]', "not valid JSON"),
    ("jsonl", b'{"id": "caf\xe9"}\n', "line 1 is not valid JSON"),
])
def test_unreadable_content_is_a_source_error(fmt: str, data: bytes, expected: str) -> None:
    with pytest.raises(FileError, match=expected):
        parse(data, fmt)


def test_invalid_gzip_is_a_source_error(tmp_path: Path) -> None:
    plain = tmp_path / "catalog.csv.gz"
    plain.write_bytes(CSV_BYTES)
    truncated = tmp_path / "cut.json.gz"
    truncated.write_bytes(gzip.compress(JSON_ARRAY_BYTES)[:-12])
    for path in (plain, truncated):
        with pytest.raises(FileError, match="not a valid gzip file") as info:
            load_file(path)
        assert str(path) in str(info.value)


@pytest.mark.parametrize(("fmt", "data"), [
    ("csv", b"id,name\n,a\n,b\n"),
    ("csv", b"id,name\n"),
    ("csv", b""),
    ("json", b"[]"),
    ("json", b'[{"name": "x"}, {"price": 1}]'),
    ("jsonl", b"\n\n"),
])
def test_file_without_usable_items_is_a_source_error(fmt: str, data: bytes) -> None:
    with pytest.raises(FileError, match="no usable items"):
        parse(data, fmt)


def test_all_bad_file_reports_how_many_rows_were_skipped() -> None:
    with pytest.raises(FileError, match=r"no usable items \(3 rows skipped"):
        parse(b"id,name\n,a\n,b\n ,c\n")


# --- the join --------------------------------------------------------------------------------------


@pytest.fixture
def catalog() -> Catalog:
    return parse(b"id,name,price\na,A,1\nb,B,2\nc,C,3\nd,D,4\n")


def test_join_keeps_the_given_order(catalog: Catalog) -> None:
    assert [item["id"] for item in catalog.join(["c", "a", "d"])] == ["c", "a", "d"]


def test_join_drops_unknown_ids_and_never_yields_none(catalog: Catalog) -> None:
    joined = catalog.join(["zz", "b", "", "nope", "a", "B"])
    assert [item["id"] for item in joined] == ["b", "a"]
    assert None not in joined
    assert joined[0] == {"id": "b", "name": "B", "url": "", "price": 2, "image": None}


def test_join_accepts_any_iterable_and_empty_input(catalog: Catalog) -> None:
    assert catalog.join([]) == []
    assert catalog.join(["x", "y"]) == []
    assert [item["id"] for item in catalog.join(i for i in ("d", "c"))] == ["d", "c"]


def test_csv_rows_are_what_dictreader_gives_less_the_short_ones() -> None:
    """The catalog reads CSV rows without csv.DictReader's per-row overhead, and must see the same rows:
    long rows cut to the header, blank lines skipped; rows short of cells are reported, not padded.
    Each row is numbered by the line of the file it starts on."""
    import csv
    import io

    from app.catalog.items import _csv_rows

    text = ('ITEM_ID,NAME,PRICE\n1,"Tent, 2 person",199.0\n\n2,Short\n3,Long,5,extra,cells\n'
            '4,"Multi\nline",7\n,,\n5,Last,')
    rows = [{k: v for k, v in row.items() if k is not None} for row in csv.DictReader(io.StringIO(text, newline=""))]
    catalog = Catalog()
    assert list(_csv_rows(io.StringIO(text, newline=""), catalog)) == [
        (2, rows[0]), (5, rows[2]), (6, rows[3]), (8, rows[4]), (9, rows[5])]
    assert catalog.problems == ["skipped line 4: 2 cells where the header has 3"] and catalog.cut_off is None
    assert list(_csv_rows(io.StringIO(""), catalog)) == []


@pytest.mark.parametrize(("value", "number"), [
    ("12", 12), (" 12 ", 12), ("-5", -5), ("19.99", 19.99), (" 19.99 ", 19.99), ("$19.99", 19.99), ("1e3", 1000.0),
    ("12.", 12.0), (".5", 0.5), ("", None), ("  ", None),
])
def test_prices_plain_and_otherwise(value: str, number: float | None) -> None:
    """Plain digits and decimals take a short path; signs, currency and spacing the full one: same answers."""
    from app.catalog.items import _price

    assert _price(value) == (number, None)
    assert type(_price(value)[0]) is type(number)  # 12 stays an integer in the JSON, 12.0 a float


@pytest.mark.parametrize("value", ["inf", "nan", "1.5e999", "abc", "-", "1.2.3"])
def test_prices_that_are_not_finite_numbers_are_reported(value: str) -> None:
    from app.catalog.items import _price

    number, problem = _price(value)
    assert number is None and problem and repr(value) in problem


# --- rows that cannot be trusted (issue 12, item 3) -----------------------------------------------

SERVED_CSV = b"id,name,url,image\n1,One,/1,a.jpg\n2,Two,/2,b.jpg\n3,Three,/3,c.jpg\n"


def test_row_short_of_cells_is_skipped_and_named_by_its_line() -> None:
    catalog = parse_catalog(b"id,name,url,image\n1,One,/1,a.jpg\n\n2,Two,/2\n3,Three,/3,c.jpg\n", "csv", "c.csv")
    assert list(catalog.items) == ["1", "3"]
    assert catalog.problems == ["skipped line 4: 3 cells where the header has 4"]
    assert catalog.skipped_rows == 1 and catalog.cut_off is None  # a newline follows it: not a cut file


def test_sample_catalog_cut_mid_row_is_marked_cut_off_and_the_cut_row_is_not_served() -> None:
    data = SAMPLE_CATALOG.read_bytes()[:2500]  # the issue's `head -c 2500 catalog.csv`
    catalog = parse_catalog(data, "csv", "catalog.csv")
    assert all(item["image"] != "ht" for item in catalog.items.values())
    assert "1703" not in catalog.encoded
    assert catalog.problems == ["skipped line 21: 6 cells where the header has 7"]
    assert catalog.cut_off is not None and "line, 21," in catalog.cut_off


def test_unclosed_quote_is_reported_from_the_line_it_opens_and_marks_the_file_cut_off() -> None:
    data = SERVED_CSV.replace(b"2,Two", b'2,"Two') + b"4,Four,/4,d.jpg\n"
    catalog = parse_catalog(data, "csv", "c.csv")
    assert list(catalog.items) == ["1"]  # the rows before the quote; nothing after it can be read
    assert catalog.cut_off == "a quote opened on line 3 is never closed (lines 3-5 unread)"
    assert catalog.problems == [f"skipped line 3: {catalog.cut_off}"]


def test_broken_quoting_mid_file_skips_that_row_only() -> None:
    catalog = parse_catalog(SERVED_CSV.replace(b"2,Two", b'2,"Tw"o'), "csv", "c.csv")
    assert list(catalog.items) == ["1", "3"]
    assert len(catalog.problems) == 1 and catalog.problems[0].startswith("skipped line 3: ")
    assert catalog.cut_off is None


def test_a_quoted_cell_over_several_lines_is_still_one_row() -> None:
    catalog = parse_catalog(b'id,name,url\n1,"Two\nlines",/1\n2,Two,/2', "csv", "c.csv")
    assert catalog.items["1"]["name"] == "Two\nlines" and list(catalog.items) == ["1", "2"]
    assert catalog.problems == [] and catalog.cut_off is None


@pytest.mark.parametrize(("fmt", "data", "where"), [
    ("csv", b"id,name,url\n1,One,/1\n2,,/2\n3,Three,\n4, ,/4\n", ("line 3", "line 4", "line 5")),
    ("jsonl", b'{"id":"1","name":"One","url":"/1"}\n{"id":"2","url":"/2"}\n{"id":"3","name":"Three"}\n'
              b'{"id":"4","name":" ","url":"/4"}\n', ("line 2", "line 3", "line 4")),
    ("json", b'[{"id":"1","name":"One","url":"/1"},{"id":"2","url":"/2"},{"id":"3","name":"Three","url":null},'
             b'{"id":"4","name":" ","url":"/4"}]', ("row 2", "row 3", "row 4")),
])
def test_items_without_a_name_or_url_are_not_served(fmt: str, data: bytes, where: tuple[str, ...]) -> None:
    catalog = parse_catalog(data, fmt, f"c.{fmt}")
    assert list(catalog.items) == ["1"]
    assert catalog.problems == [f"skipped {where[0]}: item '2' has no name", f"skipped {where[1]}: item '3' has no url",
                                f"skipped {where[2]}: item '4' has no name"]


@pytest.mark.parametrize("header", [b"id,name,price", b"id,url,price"])
def test_csv_without_a_name_or_url_column_is_refused(header: bytes) -> None:
    missing = "url" if b"url" not in header else "name"
    with pytest.raises(FileError, match=f"no item {missing} column"):
        parse_catalog(header + b"\n1,x,2\n", "csv", "c.csv")


def test_first_load_with_skipped_rows_logs_a_warning_with_line_numbers(caplog: pytest.LogCaptureFixture) -> None:
    parse_catalog(b"id,name,url\n1,One,/1\n2,Two\n3,,/3\n", "csv", "c.csv")
    [record] = [r for r in caplog.records if r.name == "app.catalog.items"]
    assert record.levelname == "WARNING"
    assert "skipped line 3: 2 cells" in record.getMessage() and "skipped line 4: item '3' has no name" in \
        record.getMessage()


@pytest.mark.parametrize(("max_shrink", "served", "fresh", "refused"), [
    (0.5, 40, 20, False),  # exactly half: allowed
    (0.5, 40, 19, True),
    (0.0, 40, 39, True),   # 0: no item may go
    (0.0, 40, 40, False),
    (1.0, 40, 1, False),   # 100%: never refused for size
    (0.25, 4, 3, False),
])
def test_reload_check_refuses_a_shrink_beyond_the_setting(max_shrink: float, served: int, fresh: int,
                                                          refused: bool) -> None:
    def catalog_of(n: int) -> Catalog:
        return parse_catalog(b"id,name,url\n" + b"".join(b"%d,n,/u\n" % i for i in range(n)), "csv", "c.csv")

    verdict = reload_check(max_shrink)(catalog_of(served), catalog_of(fresh))
    assert (verdict is not None) is refused
    if refused:
        assert verdict[0] == "shrink" and f"{fresh} usable items against {served}" in verdict[1]
        assert "CATALOG_MAX_SHRINK" in verdict[1]


def test_reload_check_refuses_a_cut_off_file_whatever_its_size() -> None:
    served = parse_catalog(SERVED_CSV, "csv", "c.csv")
    cut = parse_catalog(SERVED_CSV + b"4,Four,/4,d.jpg\n5,Fi", "csv", "c.csv")
    assert len(cut) == 4 and cut.cut_off is not None
    verdict = reload_check(1.0)(served, cut)
    assert verdict is not None and verdict[0] == "cut_off" and "line, 6," in verdict[1]
    assert "4 usable items against 3 served" in verdict[1]
