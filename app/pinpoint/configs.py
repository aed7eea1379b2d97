"""Recommender configurations (Amazon Pinpoint's recommender model resource): the schema and where they are kept."""
from __future__ import annotations

import base64
import binascii
import re
import sqlite3
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import orjson
from marshmallow import RAISE, Schema, ValidationError, validate, validates_schema
from marshmallow import fields as ma

from app.settings import ARN_PATTERN, ConfigError
from app.storage import SQLiteFile

# The seed's rules (Pinpoint's CreateRecommenderConfiguration).
NAME = re.compile(r"[^\W_][\w -]{0,127}")  # starts with a letter or number; letters, numbers, spaces, _ and -
DESCRIPTION = re.compile(r"[\w ;(),\-\u2010]{0,128}")  # the seed lists "_ ; () , ‐" (its hyphen is U+2010)
DISPLAY_NAME = re.compile(r"[\w -]{1,25}")
ATTRIBUTE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,49}")
ATTRIBUTE_DISPLAY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9 _-]{0,24}")
ROLE_ARN = re.compile(r"arn:aws[a-z-]*:iam::\d{12}:role/(?:[\w+=,.@-]+/)*[\w+=,.@-]{1,64}", re.ASCII)
# A Lambda function's name, or its ARN, optionally with a version or alias (boto3's FunctionName, ≤140).
FUNCTION = re.compile(
    r"(?:arn:aws[a-z-]*:lambda:[a-z0-9-]+:\d{12}:function:)?[A-Za-z0-9_-]{1,64}(?::(?:\$LATEST|[A-Za-z0-9_-]{1,128}))?"
)
ID_TYPES = ("PINPOINT_ENDPOINT_ID", "PINPOINT_USER_ID")
MAX_ATTRIBUTES = 10
DEFAULT_PER_MESSAGE = 5  # Pinpoint's default
MAX_PAGE_SIZE = 100
SQLITE_MAX_INTEGER = 2**63 - 1
MAX_KEY_BYTES = 2048  # DynamoDB's limit on a partition key


def _pattern(regex: re.Pattern[str], sentence: str) -> Callable[[str], None]:
    """Return a validator that accepts only a whole-string match (no trailing newline slips through)."""

    def check(value: str) -> None:
        if not regex.fullmatch(value):
            raise ValidationError(sentence)

    return check


class StrictInteger(ma.Integer):
    """A JSON integer: not a string of digits, not true/false, not 2.0."""

    def _deserialize(self, value: Any, attr: str | None, data: Mapping[str, Any] | None, **kwargs: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.make_error("invalid")
        return super()._deserialize(value, attr, data, **kwargs)


class RecommenderConfigurationSchema(Schema):
    """The request body of POST /v1/recommenders and PUT /v1/recommenders/{id}, checked rule by rule."""

    class Meta:
        unknown = RAISE  # a misspelt field must not be silently dropped

    Name = ma.String(validate=_pattern(NAME, "Start with a letter or number; up to 128 letters, numbers, "
                                       "spaces, underscores (_) or hyphens (-)."))
    Description = ma.String(validate=_pattern(DESCRIPTION, "Up to 128 letters, numbers, spaces or _ ; ( ) , -."))
    RecommendationProviderUri = ma.String(
        required=True,
        validate=_pattern(ARN_PATTERN, "Give an Amazon Personalize campaign or recommender ARN "
                          "(arn:aws:personalize:REGION:ACCOUNT:campaign/NAME or .../recommender/NAME)."),
    )
    RecommendationProviderRoleArn = ma.String(
        required=True,
        validate=_pattern(ROLE_ARN, "Give an IAM role ARN (arn:aws:iam::ACCOUNT:role/NAME)."),
    )
    RecommendationTransformerUri = ma.String(
        validate=[validate.Length(max=140), _pattern(FUNCTION, "Give a Lambda function name or ARN.")]
    )
    RecommendationsPerMessage = StrictInteger(validate=validate.Range(min=1, max=5))
    RecommendationProviderIdType = ma.String(validate=validate.OneOf(ID_TYPES))
    RecommendationsDisplayName = ma.String(
        validate=_pattern(DISPLAY_NAME, "Up to 25 letters, numbers, spaces, underscores (_) or hyphens (-)."),
        metadata={"description": "Required without RecommendationTransformerUri."},
    )
    Attributes = ma.Dict(
        keys=ma.String(validate=_pattern(ATTRIBUTE_NAME, "An attribute name starts with a letter or number; up "
                                         "to 50 letters, numbers, underscores (_) or hyphens (-).")),
        values=ma.String(validate=_pattern(ATTRIBUTE_DISPLAY_NAME, "A display name starts with a letter or number; "
                                           "up to 25 letters, numbers, spaces, underscores (_) or hyphens (-).")),
        validate=validate.Length(min=1, max=MAX_ATTRIBUTES, error="Give 1-10 attributes."),
        metadata={"description": "Required with RecommendationTransformerUri; refused without one."},
    )

    @validates_schema
    def _fields_that_follow_the_transformer(self, data: Mapping[str, Any], **_: Any) -> None:
        """Apply the reference's rules that depend on RecommendationTransformerUri (on write only: records
        stored before these rules were checked are still read and served as they are)."""
        problems: dict[str, list[str]] = {}
        if data.get("RecommendationTransformerUri"):
            if not data.get("Attributes"):
                problems["Attributes"] = ["Attributes are required when RecommendationTransformerUri is set."]
        else:
            if "Attributes" in data:
                problems["Attributes"] = ["Don't include Attributes without RecommendationTransformerUri: they "
                                          "name what the transformer Lambda returns."]
            if not data.get("RecommendationsDisplayName"):
                problems["RecommendationsDisplayName"] = ["RecommendationsDisplayName is required without "
                                                          "RecommendationTransformerUri."]
        if problems:
            raise ValidationError(problems)


def describe_problems(exc: ValidationError) -> str:
    """Return a ValidationError as one sentence per field, "Field: what is wrong", in field order."""
    return "; ".join(f"{name}: {_flatten(problem)}" for name, problem in sorted(exc.normalized_messages().items()))


def _flatten(problem: Any) -> str:
    if isinstance(problem, dict):
        return " ".join(f"{key}: {_flatten(value)}" for key, value in problem.items())
    if isinstance(problem, list):
        return " ".join(_flatten(p) for p in problem)
    return str(problem)


@dataclass(frozen=True)
class RecommenderConfig:
    """A stored configuration, as the request path uses it."""

    id: str
    provider_arn: str
    role_arn: str | None
    per_message: int
    attributes: tuple[str, ...]
    transformer: str | None

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> RecommenderConfig:
        """Read the fields serving needs from a stored RecommenderConfigurationResponse."""
        return cls(
            id=record["Id"],
            provider_arn=record["RecommendationProviderUri"],
            role_arn=record.get("RecommendationProviderRoleArn"),
            per_message=record.get("RecommendationsPerMessage", DEFAULT_PER_MESSAGE),
            attributes=tuple(record.get("Attributes") or ()),
            transformer=record.get("RecommendationTransformerUri"),
        )


def now_iso() -> str:
    """Return the time now in extended ISO 8601, UTC, to the millisecond (as Pinpoint writes dates)."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def new_record(body: Mapping[str, Any]) -> dict[str, Any]:
    """Return a RecommenderConfigurationResponse for a validated body: a new Id, dates and Pinpoint's defaults."""
    stamp = now_iso()
    return {"Id": uuid.uuid4().hex, "CreationDate": stamp, "LastModifiedDate": stamp, **with_defaults(body)}


def replaced_record(old: Mapping[str, Any], body: Mapping[str, Any]) -> dict[str, Any]:
    """Return the record after a PUT: the new body, the same Id and CreationDate, a new LastModifiedDate."""
    return {"Id": old["Id"], "CreationDate": old["CreationDate"], "LastModifiedDate": now_iso(),
            **with_defaults(body)}


def with_defaults(body: Mapping[str, Any]) -> dict[str, Any]:
    """Fill in the fields Pinpoint defaults when a body leaves them out."""
    return {"RecommendationsPerMessage": DEFAULT_PER_MESSAGE, "RecommendationProviderIdType": ID_TYPES[0], **body}


class StoreError(Exception):
    """The configuration store cannot be read or written."""


class BadTokenError(StoreError):
    """A pagination token this store did not hand out."""


Page = tuple[list[dict[str, Any]], "str | None"]


class RecommenderStore(Protocol):
    """Where configurations are kept; every record is a RecommenderConfigurationResponse dict."""

    def list(self, page_size: int, token: str | None) -> Page:
        """Return up to page_size records and the token of the next page (None on the last)."""

    def get(self, config_id: str) -> dict[str, Any] | None:
        """Return the record, or None when there is none with this Id."""

    def create(self, record: Mapping[str, Any]) -> None:
        """Store a new record."""

    def replace(self, record: Mapping[str, Any]) -> bool:
        """Overwrite an existing record; return False when there is none with its Id."""

    def delete(self, config_id: str) -> dict[str, Any] | None:
        """Remove a record and return it, or None when there was none."""


def encode_token(value: Any) -> str:
    """Wrap a store's position in an opaque URL-safe token."""
    return base64.urlsafe_b64encode(orjson.dumps(value)).decode()


def decode_token(token: str) -> Any:
    """Unwrap a token from encode_token, raising BadTokenError for anything else."""
    try:
        return orjson.loads(base64.urlsafe_b64decode(token.encode()))
    except (binascii.Error, ValueError, UnicodeEncodeError):
        raise BadTokenError("The token is not one this API returned.") from None


class SQLiteStore:
    """Configurations in a SQLite file: one connection per thread and process, WAL so readers never wait."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._file = SQLiteFile(path, "RECOMMENDER_DB_PATH", "CREATE TABLE IF NOT EXISTS recommenders ("
                                "seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE, body TEXT NOT NULL)")

    def _connection(self) -> sqlite3.Connection:
        try:
            return self._file.connection()
        except (sqlite3.Error, OSError, ConfigError) as exc:
            raise StoreError(f"RECOMMENDER_DB_PATH {self.path}: {exc}") from exc

    def _run(self, sql: str, params: tuple[Any, ...] = ()) -> sqlite3.Cursor:
        try:
            return self._connection().execute(sql, params)
        except sqlite3.Error as exc:
            raise StoreError(f"RECOMMENDER_DB_PATH {self.path}: {exc}") from exc

    def list(self, page_size: int, token: str | None) -> Page:
        after = decode_token(token) if token else 0
        # Only what this store hands out: a row number SQLite can bind (true is an int to Python, too).
        if type(after) is not int or not 0 <= after <= SQLITE_MAX_INTEGER:
            raise BadTokenError("The token is not one this API returned.")
        rows = self._run("SELECT seq, body FROM recommenders WHERE seq > ? ORDER BY seq LIMIT ?",
                         (after, page_size + 1)).fetchall()
        next_token = encode_token(rows[page_size - 1][0]) if len(rows) > page_size else None
        return [orjson.loads(body) for _, body in rows[:page_size]], next_token

    def get(self, config_id: str) -> dict[str, Any] | None:
        row = self._run("SELECT body FROM recommenders WHERE id = ?", (config_id,)).fetchone()
        return orjson.loads(row[0]) if row else None

    def create(self, record: Mapping[str, Any]) -> None:
        self._run("INSERT INTO recommenders (id, body) VALUES (?, ?)", (record["Id"], orjson.dumps(record).decode()))

    def replace(self, record: Mapping[str, Any]) -> bool:
        cursor = self._run("UPDATE recommenders SET body = ? WHERE id = ?",
                           (orjson.dumps(record).decode(), record["Id"]))
        return cursor.rowcount > 0

    def delete(self, config_id: str) -> dict[str, Any] | None:
        row = self._run("DELETE FROM recommenders WHERE id = ? RETURNING body", (config_id,)).fetchone()
        return orjson.loads(row[0]) if row else None


class DynamoDBStore:
    """Configurations in a DynamoDB table (partition key Id, a string), for several hosts."""

    def __init__(self, table: str, client_factory: Callable[[], Any]) -> None:
        self.table = table
        self._client_factory = client_factory

    def _call(self, operation: str, **params: Any) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return getattr(self._client_factory(), operation)(TableName=self.table, **params)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException":
                raise
            raise StoreError(f"RECOMMENDER_TABLE {self.table}: {exc}") from exc
        except BotoCoreError as exc:
            raise StoreError(f"RECOMMENDER_TABLE {self.table}: {exc}") from exc

    @staticmethod
    def _item(record: Mapping[str, Any]) -> dict[str, Any]:
        return {"Id": {"S": record["Id"]}, "Body": {"S": orjson.dumps(record).decode()}}

    def list(self, page_size: int, token: str | None) -> Page:
        params: dict[str, Any] = {"Limit": page_size}
        if token:
            start = decode_token(token)
            if not isinstance(start, str) or not 0 < len(start.encode()) <= MAX_KEY_BYTES:
                raise BadTokenError("The token is not one this API returned.")
            params["ExclusiveStartKey"] = {"Id": {"S": start}}
        answer = self._call("scan", **params)
        last = answer.get("LastEvaluatedKey")
        return [orjson.loads(item["Body"]["S"]) for item in answer.get("Items", [])], \
            encode_token(last["Id"]["S"]) if last else None

    def get(self, config_id: str) -> dict[str, Any] | None:
        item = self._call("get_item", Key={"Id": {"S": config_id}}, ConsistentRead=True).get("Item")
        return orjson.loads(item["Body"]["S"]) if item else None

    def create(self, record: Mapping[str, Any]) -> None:
        self._call("put_item", Item=self._item(record), ConditionExpression="attribute_not_exists(Id)")

    def replace(self, record: Mapping[str, Any]) -> bool:
        from botocore.exceptions import ClientError

        try:
            self._call("put_item", Item=self._item(record), ConditionExpression="attribute_exists(Id)")
        except ClientError:  # ConditionalCheckFailedException: no such Id
            return False
        return True

    def delete(self, config_id: str) -> dict[str, Any] | None:
        old = self._call("delete_item", Key={"Id": {"S": config_id}}, ReturnValues="ALL_OLD").get("Attributes")
        return orjson.loads(old["Body"]["S"]) if old else None


def build_store(kind: str, db_path: str, table: str | None, dynamodb_client: Callable[[], Any]) -> RecommenderStore:
    """Return the store RECOMMENDER_STORE names (sqlite or dynamodb); nothing is opened until first use."""
    if kind == "dynamodb":
        assert table is not None  # Settings requires RECOMMENDER_TABLE with dynamodb
        return DynamoDBStore(table, dynamodb_client)
    return SQLiteStore(db_path)
