"""app/catalog.parse_item_list: the POPULAR_ITEMS_URI file, most popular first, in every format."""
from __future__ import annotations

import codecs
import json

import pytest

from app.catalog.files import FileError
from app.catalog.items import parse_item_list


def parse(data: bytes, fmt: str) -> list[str]:
    return parse_item_list(data, fmt, f"popular.{fmt}")


# --------------------------------------------------------------------------------------------------
# the formats


def test_csv_with_an_item_id_column() -> None:
    data = b"ITEM_ID,NAME,SALES\n1111,Bottle,90\n1000,Shoes,80\n2221,Tent,10\n"
    assert parse(data, "csv") == ["1111", "1000", "2221"]


@pytest.mark.parametrize("header", ["item_id", "Item_Id", "id", "sku", "product_id", " ITEM_ID "])
def test_csv_id_column_aliases_in_any_case(header: str) -> None:
    assert parse(f"RANK,{header}\n1,1111\n2,1000\n".encode(), "csv") == ["1111", "1000"]


def test_csv_cells_are_stripped_and_blank_ids_skipped() -> None:
    data = b"ITEM_ID\n 1111 \n\n,\n1000\n"
    assert parse(data, "csv") == ["1111", "1000"]


def test_csv_with_a_byte_order_mark() -> None:
    assert parse(codecs.BOM_UTF8 + b"ITEM_ID\n1111\n1000\n", "csv") == ["1111", "1000"]


def test_json_array_of_strings() -> None:
    assert parse(json.dumps(["1111", "1000", "2221"]).encode(), "json") == ["1111", "1000", "2221"]


def test_json_array_of_ints_and_strings() -> None:
    assert parse(b'[1111, "1000", 2221, "sku-9"]', "json") == ["1111", "1000", "2221", "sku-9"]


def test_json_array_of_objects() -> None:
    data = json.dumps([{"ITEM_ID": "1111", "score": 9}, {"ITEM_ID": 1000}]).encode()
    assert parse(data, "json") == ["1111", "1000"]


def test_json_lines_with_an_id_field() -> None:
    data = b'{"id": "1111", "score": 0.9}\n\n{"item_id": 1000}\n{"sku": "2221"}\n'
    assert parse(data, "jsonl") == ["1111", "1000", "2221"]


def test_json_lines_rows_without_an_id_are_skipped() -> None:
    data = b'{"id": "1111"}\n{"name": "no id"}\n["not", "an", "object"]\n{"id": ""}\n{"id": "1000"}\n'
    assert parse(data, "jsonl") == ["1111", "1000"]


# --------------------------------------------------------------------------------------------------
# duplicates


@pytest.mark.parametrize(
    ("data", "fmt"),
    [
        (b"ITEM_ID\n1111\n1000\n1111\n2221\n1000\n", "csv"),
        (b'["1111", "1000", 1111, "2221", "1000"]', "json"),
        (b'{"id": "1111"}\n{"id": "1000"}\n{"id": 1111}\n{"id": "2221"}\n{"id": "1000"}\n', "jsonl"),
    ],
    ids=["csv", "json", "jsonl"],
)
def test_duplicates_are_removed_keeping_the_first_position(data: bytes, fmt: str) -> None:
    assert parse(data, fmt) == ["1111", "1000", "2221"]


# --------------------------------------------------------------------------------------------------
# files with no ids


@pytest.mark.parametrize(
    ("data", "fmt"),
    [
        (b"", "csv"),
        (b"ITEM_ID\n", "csv"),
        (b"NAME,PRICE\nShoes,89.99\n", "csv"),
        (b"ITEM_ID\n\n,\n", "csv"),
        (b"", "jsonl"),
        (b'{"name": "Shoes"}\n', "jsonl"),
        (b"", "json"),
        (b"{not json", "json"),
        (b'{"count": 2}', "json"),
        (b'[{"name": "Shoes"}]', "json"),
        (b"[1.5, null]", "json"),
    ],
    ids=["csv-empty", "csv-header-only", "csv-no-id-column", "csv-blank-ids", "jsonl-empty", "jsonl-no-id",
         "json-empty", "json-invalid", "json-object", "json-objects-without-id", "json-not-ids"],
)
def test_a_file_without_ids_is_a_source_error(data: bytes, fmt: str) -> None:
    with pytest.raises(FileError, match="popular"):
        parse(data, fmt)


@pytest.mark.parametrize("data", [b"[]", b'[""]'], ids=["empty-array", "blank-ids"])
def test_a_json_array_without_ids_is_a_source_error(data: bytes) -> None:
    with pytest.raises(FileError, match="popular"):
        parse(data, "json")
