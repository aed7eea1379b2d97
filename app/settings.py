"""Typed settings, read once from the environment."""
from __future__ import annotations

import difflib
import ipaddress
import json
import os
import re
import ssl
import string
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from redis.connection import parse_url as parse_redis_url

# arn:PARTITION:personalize:REGION:ACCOUNT:campaign/NAME or .../recommender/NAME
ARN_PATTERN = re.compile(
    r"^arn:aws[a-z-]*:personalize:(?P<region>[a-z0-9-]+):\d{12}:(?P<kind>campaign|recommender)/[A-Za-z0-9_.-]+$"
)
FILTER_ARN_PATTERN = re.compile(r"^arn:aws[a-z-]*:personalize:[a-z0-9-]+:\d{12}:filter/[A-Za-z0-9_.-]+$")
NAME_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,63}$")
MIN_API_KEY_LENGTH = 16
MAX_NUM_RESULTS = 100
# gunicorn threads per worker; gunicorn.conf.py reads the same WEB_THREADS. Chosen by measurement: see the
# README's Benchmark section.
DEFAULT_WEB_THREADS = 16
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
# CACHE_REDIS_TLS_VERIFY: the certificate and the host name; the certificate only; nothing.
TLS_VERIFY_MODES = ("full", "ca", "none")


IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
# Query parameters of GET /recommendations; a LINK_QUERY placeholder may not reuse one.
RESERVED_PARAMETERS = frozenset({"user_id", "item_id", "num_results", "filter", "fields", "format", "recommender"})
# The query parameters LINK_TRACKING adds to item urls (app/recommendations/presentation.py): fixed names, since
# ingest-currents reads them back from clicked urls.
ITEM_PARAMETER = "recs_item"
ANSWER_PARAMETER = "recs_rid"
TRACKING_PARAMETERS = frozenset({ITEM_PARAMETER, ANSWER_PARAMETER})


class ConfigError(Exception):
    """A setting is missing or malformed; the message names it."""


def _text(raw: Any) -> str | None:
    """Return the value as stripped text, or None when it is absent or blank."""
    return (str(raw).strip() or None) if raw is not None else None


def _list(raw: Any) -> tuple[str, ...]:
    """Split a comma-separated setting (or take a list as is), dropping blanks."""
    items = raw if isinstance(raw, (list, tuple)) else str(raw or "").split(",")
    return tuple(str(i).strip() for i in items if str(i).strip())


def _api_keys(raw: Any, variable: str = "API_KEYS") -> tuple[str, ...]:
    keys = _list(raw)
    if not all(k.isascii() and k.isprintable() for k in keys):
        # HTTP headers carry Latin-1: a key outside printable ASCII could never match.
        raise ConfigError(f"{variable}: keys must be printable ASCII (letters, digits, punctuation).")
    short = [k for k in keys if len(k) < MIN_API_KEY_LENGTH]
    if short:
        # Say how many and how long, never the key itself: this sentence lands in logs.
        raise ConfigError(f"{variable}: {len(short)} key(s) shorter than {MIN_API_KEY_LENGTH} characters; "
                          "use long random keys, e.g. from `openssl rand -hex 24`.")
    return keys


# An access key id as the SDKs put it in the Credential scope (KEY_ID/DATE/REGION/SERVICE/aws4_request).
ACCESS_KEY_ID_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,128}$")


def _aws_keys(raw: Any, path: str | None) -> dict[str, str]:
    """Parse ADMIN_AWS_KEYS (ACCESS_KEY_ID:SECRET pairs, comma-separated) and the file ADMIN_AWS_KEYS_FILE names
    (the same pairs, one a line or comma-separated, # comments) into {access key id: secret}."""
    sources = [("ADMIN_AWS_KEYS", [raw] if isinstance(raw, str) or raw is None else list(raw))]
    if path:
        try:
            with open(path, encoding="utf-8") as file:
                lines = [line.partition("#")[0] for line in file]
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"ADMIN_AWS_KEYS_FILE: cannot read {path!r} ({type(exc).__name__}).") from None
        sources.append(("ADMIN_AWS_KEYS_FILE", lines))
    keys: dict[str, str] = {}
    for variable, chunks in sources:
        entries = [entry for chunk in chunks for entry in _list(chunk)]
        for number, entry in enumerate(entries, 1):
            # Name the entry by its place, never by its text: the sentence lands in logs and holds the secret.
            key_id, sep, secret = entry.partition(":")
            if not sep or not ACCESS_KEY_ID_PATTERN.match(key_id.strip()):
                raise ConfigError(f"{variable}: entry {number} is not ACCESS_KEY_ID:SECRET (an access key id of "
                                  "letters and digits, a colon, the secret access key).")
            if not (secret.strip().isascii() and secret.strip().isprintable()) or len(secret.strip()) < MIN_API_KEY_LENGTH:
                raise ConfigError(f"{variable}: the secret of entry {number} must be at least {MIN_API_KEY_LENGTH} "
                                  "printable ASCII characters; use a long random one, e.g. from "
                                  "`openssl rand -base64 30`.")
            if key_id.strip() in keys:
                raise ConfigError(f"{variable}: entry {number} repeats an access key id given before.")
            keys[key_id.strip()] = secret.strip()
    return keys


def _flag(variable: str, raw: Any) -> bool:
    """Convert true/false (also 1/0, yes/no, on/off) to a bool; absent is false."""
    if isinstance(raw, bool) or raw is None:
        return bool(raw)
    text = str(raw).strip().lower()
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off", ""):
        return False
    raise ConfigError(f"{variable} must be true or false, got {raw!r}.")


def _networks(raw: Any, variable: str = "ALLOWED_CIDRS") -> tuple[IPNetwork, ...]:
    networks = []
    for entry in _list(raw):
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            raise ConfigError(f"{variable}: {entry!r} is not an IP address or CIDR block (e.g. 52.4.160.214/32).") \
                from None
    return tuple(networks)


def _proxies(raw: Any) -> tuple[IPNetwork, ...]:
    """Parse TRUSTED_PROXIES, the load balancers' own addresses; refuse the old form, a count of hops."""
    text = str(raw or "").strip()
    if text == "0":
        return ()  # the old default, trusting no proxy: the same as leaving it empty
    if text.isdigit():
        raise ConfigError(
            f"TRUSTED_PROXIES is now the load balancers' own addresses or CIDR blocks (e.g. 10.0.0.0/8), not a "
            f"count of hops ({text}): with a count, a client connecting directly could forge X-Forwarded-For. "
            "Give the network your load balancers connect from.")
    return _networks(raw, "TRUSTED_PROXIES")


def _filter_arn(variable: str, arn: str | None) -> str | None:
    if arn is not None and not FILTER_ARN_PATTERN.match(arn):
        raise ConfigError(f"{variable}: {arn!r} is not a Personalize filter ARN "
                          "(arn:aws:personalize:REGION:ACCOUNT:filter/NAME).")
    return arn


def _pairs(raw: Any, variable: str, form: str) -> list[tuple[str, str]]:
    """Split a comma-separated list of NAME=VALUE pairs, refusing an entry without '=' by the setting's form."""
    pairs = []
    for entry in _list(raw):
        name, sep, value = entry.partition("=")
        if not sep:
            raise ConfigError(f"{variable}: {entry!r} is not {form}.")
        pairs.append((name.strip(), value.strip()))
    return pairs


def _filters(raw: Any) -> dict[str, str]:
    """Parse FILTERS, NAME=FILTER_ARN pairs separated by commas, into {name: arn}."""
    if isinstance(raw, dict):
        pairs = list(raw.items())
    else:
        pairs = _pairs(raw, "FILTERS", "NAME=FILTER_ARN")
    filters = {}
    for name, arn in pairs:
        if not NAME_PATTERN.match(name):
            raise ConfigError(f"FILTERS: the name {name!r} may only hold letters, digits, _ and -.")
        filters[name] = _filter_arn(f"FILTERS ({name})", arn)
    return filters


def _extra_fields(raw: Any) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(f.lower() for f in _list(raw)))
    reserved = ("id", "name", "url", "price", "image")
    bad = [n for n in names if not re.fullmatch(r"[a-z][a-z0-9_]{0,63}", n) or n in reserved]
    if bad:
        raise ConfigError(f"CATALOG_EXTRA_FIELDS: {', '.join(bad)} cannot be used; give other catalog column names "
                          "(letters, digits, _), not id, name, url, price or image, which every item already has.")
    return names


def _link_query(query: str | None) -> str | None:
    """Check LINK_QUERY: a query string whose {placeholders} are filled from request parameters."""
    if query is None:
        return None
    query = query.lstrip("?&")
    try:
        names = {name for _, name, _, _ in string.Formatter().parse(query) if name is not None}
    except ValueError as exc:
        raise ConfigError(f"LINK_QUERY: {exc} in {query!r}.") from None
    bad = sorted(n for n in names if not re.fullmatch(r"[a-z][a-z0-9_]{0,30}", n) or n in RESERVED_PARAMETERS)
    if bad:
        raise ConfigError(f"LINK_QUERY: placeholder(s) {', '.join(bad)} must be lowercase names other than "
                          f"{', '.join(sorted(RESERVED_PARAMETERS))}.")
    if tracked := sorted({pair.partition("=")[0] for pair in query.split("&")} & TRACKING_PARAMETERS):
        raise ConfigError(f"LINK_QUERY: {', '.join(tracked)} is LINK_TRACKING's own parameter; name yours otherwise.")
    return query


# Braze Currents event types sent to Personalize, and the eventType each becomes (CURRENTS_EVENT_TYPES adds to or
# changes these; `TYPE=` with nothing after the = turns one off).
CURRENTS_DEFAULT_EVENT_TYPES = {"users.messages.email.Click": "click", "users.behaviors.Purchase": "purchase"}
CURRENTS_TYPE_PATTERN = re.compile(r"^users(\.[A-Za-z_]+)+$")


def _currents_event_types(raw: Any) -> dict[str, str]:
    """Parse CURRENTS_EVENT_TYPES (TYPE=eventType pairs, comma-separated, or a JSON object) over the defaults."""
    if isinstance(raw, dict):
        pairs = list(raw.items())
    elif str(raw or "").strip().startswith(("{", "[")):
        try:
            loaded = json.loads(str(raw))
        except ValueError as exc:
            raise ConfigError(f"CURRENTS_EVENT_TYPES is not valid JSON ({exc}); give a JSON object "
                              '{"users.messages.contentcard.Click": "click"} or TYPE=eventType pairs.') from None
        if not isinstance(loaded, dict):
            raise ConfigError("CURRENTS_EVENT_TYPES must be a JSON object of Currents type to Personalize eventType.")
        pairs = list(loaded.items())
    else:
        pairs = _pairs(raw, "CURRENTS_EVENT_TYPES", "TYPE=eventType, e.g. users.messages.contentcard.Click=click")
    mapping = dict(CURRENTS_DEFAULT_EVENT_TYPES)
    for name, event_type in pairs:
        if not isinstance(name, str) or not CURRENTS_TYPE_PATTERN.match(name):
            raise ConfigError(f"CURRENTS_EVENT_TYPES: {name!r} is not a Braze Currents event type, such as "
                              "users.messages.email.Click.")
        if not isinstance(event_type, str) or len(event_type) > 256:
            raise ConfigError(f"CURRENTS_EVENT_TYPES: the eventType for {name} must be text of at most 256 "
                              "characters (empty turns the type off).")
        mapping[name] = event_type.strip()
    return {name: event_type for name, event_type in mapping.items() if event_type}


def _tracking_id(tracking_id: str | None) -> str | None:
    if tracking_id is not None and not re.fullmatch(r"[A-Za-z0-9-]{1,256}", tracking_id):
        raise ConfigError("PERSONALIZE_TRACKING_ID must be the event tracker's tracking id (letters, digits and -, "
                          "as the Personalize console shows it under Event trackers).")
    return tracking_id


def _user_id_key(key: str | None) -> str | None:
    if key is not None and len(key) < MIN_API_KEY_LENGTH:
        # A short key makes the logged hashes easy to reverse by trying ids; never echo the key itself.
        raise ConfigError(f"LOG_USER_ID_KEY must be at least {MIN_API_KEY_LENGTH} characters, e.g. from "
                          "`openssl rand -hex 24`.")
    return key


def _base_url(url: str | None) -> str | None:
    if url is not None and not url.startswith(("https://", "http://")):
        raise ConfigError(f"IMAGE_BASE_URL must start with https:// or http://, got {url!r}.")
    return url


def _bounded(name: str, raw: str, kind: type[int | float], low: float, high: float) -> float:
    """Convert raw to kind (int or float) and check it lies in [low, high]."""
    try:
        value = kind(raw)
    except ValueError:
        article = "a whole number" if kind is int else "a number"
        raise ConfigError(f"{name} must be {article}, got {raw!r}.") from None
    if not low <= value <= high:
        raise ConfigError(f"{name} must be between {low} and {high}, got {value}.")
    return value


def fraction(name: str, raw: Any, default: float) -> float:
    """Read a share as a fraction (0.5) or a percentage (50%), returning the fraction."""
    if raw is None:
        return default
    text = str(raw).strip()
    percent = text.endswith("%")
    try:
        value = float(text.removesuffix("%")) / (100 if percent else 1)
    except ValueError:
        value = -1.0
    if not 0 <= value <= 1:
        raise ConfigError(f"{name} must be a fraction from 0 to 1 (0.5) or a percentage from 0% to 100% (50%), "
                          f"got {text!r}.")
    return value


RECOMMENDER_STORES = ("sqlite", "dynamodb")


def _optional_flag(variable: str, raw: Any) -> bool | None:
    """Convert true/false like _flag, keeping absent (or blank) as None: "not said"."""
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return None
    return _flag(variable, raw)


def redacted_url(url: str) -> str:
    """Return a Redis URL with its password replaced by ***, fit for a log line or an error sentence."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def _check_redis_settings(settings: Settings) -> None:
    """Refuse Redis settings that cannot work together, naming the variable (never the password)."""
    url = settings.cache_redis_url
    if not url:
        given = [name for name, value in (("CACHE_REDIS_CLUSTER", settings.cache_redis_cluster),
                                          ("CACHE_REDIS_TLS_CA_FILE", settings.cache_redis_tls_ca_file))
                 if value is not None]
        if given:
            raise ConfigError(f"{given[0]} is set but CACHE_REDIS_URL is not: set CACHE_REDIS_URL to your Redis "
                              "(e.g. rediss://user:password@my-cache.serverless.use1.cache.amazonaws.com:6379) "
                              f"or unset {given[0]}.")
        return
    shown = redacted_url(url)
    if not url.startswith(("redis://", "rediss://", "unix://")):
        raise ConfigError(f"CACHE_REDIS_URL must start with redis://, rediss:// (TLS) or unix://, got {shown!r}.")
    try:
        parsed = parse_redis_url(url)
    except ValueError as exc:
        raise ConfigError(f"CACHE_REDIS_URL is not a Redis URL ({exc}): {shown!r}.") from None
    if settings.cache_redis_cluster and url.startswith("unix://"):
        raise ConfigError("CACHE_REDIS_CLUSTER=true needs a redis:// or rediss:// CACHE_REDIS_URL: a Redis Cluster is "
                          "reached over TCP, not a unix socket.")
    if settings.cache_redis_cluster and parsed.get("db", 0) != 0:
        raise ConfigError(f"CACHE_REDIS_URL names database {parsed['db']}, but a Redis Cluster (CACHE_REDIS_CLUSTER="
                          "true) has only database 0: end the URL with /0 or nothing.")
    if settings.cache_redis_tls_verify not in TLS_VERIFY_MODES:
        raise ConfigError(f"CACHE_REDIS_TLS_VERIFY must be one of {', '.join(TLS_VERIFY_MODES)}, got "
                          f"{settings.cache_redis_tls_verify!r}.")
    tls = url.startswith("rediss://")
    if not tls and (settings.cache_redis_tls_ca_file or settings.cache_redis_tls_verify != "full"):
        variable = "CACHE_REDIS_TLS_CA_FILE" if settings.cache_redis_tls_ca_file else "CACHE_REDIS_TLS_VERIFY"
        raise ConfigError(f"{variable} applies to TLS, but CACHE_REDIS_URL does not use it: start the URL with "
                          "rediss:// (ElastiCache Serverless requires TLS), or unset " + variable + ".")
    if settings.cache_redis_tls_ca_file:
        try:
            ssl.create_default_context(cafile=settings.cache_redis_tls_ca_file)
        except (OSError, ssl.SSLError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
            raise ConfigError(f"CACHE_REDIS_TLS_CA_FILE: cannot read PEM certificates from "
                              f"{settings.cache_redis_tls_ca_file!r} ({reason}).") from None


def _check_recommender_settings(settings: Settings) -> None:
    """Check the recommender configuration store settings."""
    if settings.recommender_store not in RECOMMENDER_STORES:
        raise ConfigError(f"RECOMMENDER_STORE must be one of {', '.join(RECOMMENDER_STORES)}, "
                          f"got {settings.recommender_store!r}.")
    if settings.recommender_store == "dynamodb" and not settings.recommender_table:
        raise ConfigError("RECOMMENDER_STORE=dynamodb needs RECOMMENDER_TABLE, the DynamoDB table's name "
                          "(partition key Id, a string).")


@dataclass(frozen=True)
class Settings:
    """Every setting of the service; the environment variable is the field name in capitals."""

    catalog_uri: str
    personalize_campaign_arn: str | None = None
    recommendations_uri: str | None = None
    aws_region: str | None = None
    default_num_results: int = 10
    cache_ttl_seconds: int = 300
    # Repr shows the URL without its password (the settings object may be logged).
    cache_redis_url: str | None = field(default=None, repr=False)
    cache_redis_cluster: bool | None = None  # None: ask the server (INFO cluster)
    cache_redis_tls_ca_file: str | None = None
    cache_redis_tls_verify: str = "full"
    # The folder the service keeps its files in (app/storage.py: 0700, its user's only). Relative to the working
    # directory, like Prometheus's data/: ./data for `make run`, /srv/data in the Docker image.
    data_dir: str = field(default_factory=lambda: os.path.abspath("data"))
    cache_dir: str = ""  # DATA_DIR/cache unless set
    cache_threshold: int = 100_000
    cache_local_seconds: float = 5.0
    cache_local_items: int = 10_000
    catalog_refresh_seconds: float = 60.0
    catalog_max_shrink: float = 0.5  # a reload with this share fewer usable items is refused
    personalize_connect_timeout: float = 0.2
    personalize_read_timeout: float = 0.5
    personalize_max_attempts: int = 2
    personalize_max_concurrency: int = 0  # 0: as many as WEB_THREADS, so no worker thread waits for a slot
    web_threads: int = DEFAULT_WEB_THREADS
    request_budget_ms: int = 800
    cache_stale_seconds: int = 86_400
    popular_items_uri: str | None = None
    recently_recommended_hours: int = 24  # the window of the last resort's "recommended most lately" list
    breaker_failure_threshold: int = 5
    breaker_recovery_seconds: float = 30.0
    log_level: str = "INFO"
    api_keys: tuple[str, ...] = ()
    allowed_cidrs: tuple[IPNetwork, ...] = ()
    trusted_proxies: tuple[IPNetwork, ...] = ()
    admin_allowed_cidrs: tuple[IPNetwork, ...] = ()  # from_mapping: ALLOWED_CIDRS when ADMIN_ALLOWED_CIDRS is empty
    filters: dict[str, str] = field(default_factory=dict)
    promotion_filter_arn: str | None = None
    promotion_name: str = "promoted"
    promotion_percent: int = 10
    catalog_extra_fields: tuple[str, ...] = ()
    link_query: str | None = None
    image_base_url: str | None = None
    log_user_id_key: str | None = None
    log_flush_ms: int = 250  # request lines wait at most this long to go out a few at a time; 0: each at once
    # Recommender configurations (the /v1/recommenders admin API and ?recommender=ID).
    admin_api_keys: tuple[str, ...] = ()
    # {access key id: secret} whose AWS Signature Version 4 opens /v1/recommenders; kept out of repr (and logs).
    admin_aws_keys: dict[str, str] = field(default_factory=dict, repr=False)
    admin_aws_keys_file: str | None = None
    recommender_store: str = "sqlite"
    recommender_db_path: str = ""  # DATA_DIR/recommenders.sqlite3 unless set
    # Serve ?recommender=ID on a host whose admin API is off (another host administers the shared store).
    serve_recommenders: bool = False
    recommender_table: str | None = None
    recommender_refresh_seconds: float = 30.0
    transformer_timeout_ms: int = 500
    # Events back to Personalize (README, "Teaching Personalize what happened").
    link_tracking: bool = False  # recs_item and recs_rid on every item url
    personalize_tracking_id: str | None = None  # POST /events is off without it
    put_events_max_tps: float = 100.0  # PutEvents calls a second from one host, shared by its workers
    web_concurrency: int = 2  # gunicorn's workers (gunicorn.conf.py reads the same variable): they share the cap
    # What ingest-currents sends from Braze Currents (README, "From Braze Currents: ingest-currents").
    currents_event_types: dict[str, str] = field(default_factory=lambda: dict(CURRENTS_DEFAULT_EVENT_TYPES))
    currents_dedup_days: int = 7  # how long sent Currents event ids are remembered, against a late re-delivery

    @property
    def admin_api_on(self) -> bool:
        """Say whether /v1/recommenders answers: with an admin API key or an AWS access key to open it."""
        return bool(self.admin_api_keys or self.admin_aws_keys)

    def __post_init__(self) -> None:
        # Files whose setting is empty go in DATA_DIR; every path is made absolute once, here.
        resolved = {"data_dir": os.path.abspath(self.data_dir),
                    "cache_dir": os.path.abspath(self.cache_dir or os.path.join(self.data_dir, "cache")),
                    "recommender_db_path": os.path.abspath(self.recommender_db_path
                                                           or os.path.join(self.data_dir, "recommenders.sqlite3"))}
        for name, value in resolved.items():
            object.__setattr__(self, name, value)  # frozen

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read and check every setting, raising ConfigError with a sentence on the first bad one."""
        env = os.environ if environ is None else environ
        _refuse_near_misses(env, {f.name.upper() for f in fields(cls)})
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = env.get(f.name.upper())
            if raw is not None and raw.strip() != "":
                values[f.name] = raw.strip()
        return cls.from_mapping(values, aws_region_fallback=env.get("AWS_DEFAULT_REGION"))

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], aws_region_fallback: str | None = None) -> Settings:
        """Convert and check raw values (strings from the environment or typed values from tests)."""
        raw = dict(values)
        unknown = set(raw) - {f.name for f in fields(cls)}
        if unknown:
            raise ConfigError(f"Unknown setting(s): {', '.join(sorted(unknown))}.")

        catalog_uri = _text(raw.get("catalog_uri"))
        if not catalog_uri:
            raise ConfigError(
                "CATALOG_URI is not set: point it at your item catalog, a local path, file://, s3:// or "
                "https:// URL of a .csv, .jsonl or .json file (optionally .gz), e.g. sample/catalog.csv."
            )
        arn = _text(raw.get("personalize_campaign_arn"))
        batch_uri = _text(raw.get("recommendations_uri"))
        if not arn and not batch_uri:
            raise ConfigError(
                "No recommendation source is configured: set PERSONALIZE_CAMPAIGN_ARN to a Personalize "
                "campaign or recommender ARN, or RECOMMENDATIONS_URI to a Personalize batch inference "
                "output file (e.g. sample/batch-output.json.out)."
            )
        region = _text(raw.get("aws_region")) or _text(aws_region_fallback)
        if arn:
            match = ARN_PATTERN.match(arn)
            if not match:
                raise ConfigError(
                    f"PERSONALIZE_CAMPAIGN_ARN is not a Personalize campaign or recommender ARN: {arn!r} "
                    "(expected arn:aws:personalize:REGION:ACCOUNT:campaign/NAME or .../recommender/NAME)."
                )
            # A campaign lives in the region its ARN names; any other region can only answer "not found".
            region = match.group("region")

        defaults = {f.name: f for f in fields(cls)}

        def conv(name: str, low: float, high: float) -> Any:
            value = raw.get(name)
            if value is None:
                return defaults[name].default
            return _bounded(name.upper(), str(value), int if defaults[name].type == "int" else float, low, high)

        settings = cls(
            catalog_uri=catalog_uri,
            personalize_campaign_arn=arn,
            recommendations_uri=batch_uri,
            aws_region=region,
            default_num_results=conv("default_num_results", 1, MAX_NUM_RESULTS),
            cache_ttl_seconds=conv("cache_ttl_seconds", 1, 7 * 24 * 3600),
            cache_redis_url=_text(raw.get("cache_redis_url")),
            cache_redis_cluster=_optional_flag("CACHE_REDIS_CLUSTER", raw.get("cache_redis_cluster")),
            cache_redis_tls_ca_file=_text(raw.get("cache_redis_tls_ca_file")),
            cache_redis_tls_verify=(_text(raw.get("cache_redis_tls_verify")) or "full").lower(),
            cache_threshold=conv("cache_threshold", 0, 10**9),
            cache_local_seconds=conv("cache_local_seconds", 0, 3600),
            cache_local_items=conv("cache_local_items", 0, 10**7),
            catalog_refresh_seconds=conv("catalog_refresh_seconds", 0.1, 86400),
            catalog_max_shrink=fraction("CATALOG_MAX_SHRINK", raw.get("catalog_max_shrink"), 0.5),
            personalize_connect_timeout=conv("personalize_connect_timeout", 0.01, 10),
            personalize_read_timeout=conv("personalize_read_timeout", 0.01, 10),
            personalize_max_attempts=conv("personalize_max_attempts", 1, 5),
            personalize_max_concurrency=conv("personalize_max_concurrency", 0, 1000) or conv("web_threads", 1, 1000),
            web_threads=conv("web_threads", 1, 1000),
            request_budget_ms=conv("request_budget_ms", 50, 1900),
            cache_stale_seconds=conv("cache_stale_seconds", 0, 30 * 86400),
            popular_items_uri=_text(raw.get("popular_items_uri")),
            recently_recommended_hours=conv("recently_recommended_hours", 1, 24 * 7),
            breaker_failure_threshold=conv("breaker_failure_threshold", 1, 10_000),
            breaker_recovery_seconds=conv("breaker_recovery_seconds", 0.1, 3600),
            log_level=(_text(raw.get("log_level")) or "INFO").upper(),
            api_keys=_api_keys(raw.get("api_keys")),
            allowed_cidrs=_networks(raw.get("allowed_cidrs")),
            trusted_proxies=_proxies(raw.get("trusted_proxies")),
            admin_allowed_cidrs=(_networks(raw.get("admin_allowed_cidrs"), "ADMIN_ALLOWED_CIDRS")
                                 or _networks(raw.get("allowed_cidrs"))),
            filters=_filters(raw.get("filters")),
            promotion_filter_arn=_filter_arn("PROMOTION_FILTER_ARN", _text(raw.get("promotion_filter_arn"))),
            promotion_name=_text(raw.get("promotion_name")) or "promoted",
            promotion_percent=conv("promotion_percent", 1, 100),
            catalog_extra_fields=_extra_fields(raw.get("catalog_extra_fields")),
            link_query=_link_query(_text(raw.get("link_query"))),
            image_base_url=_base_url(_text(raw.get("image_base_url"))),
            log_user_id_key=_user_id_key(_text(raw.get("log_user_id_key"))),
            log_flush_ms=conv("log_flush_ms", 0, 10_000),
            admin_api_keys=_api_keys(raw.get("admin_api_keys"), "ADMIN_API_KEYS"),
            admin_aws_keys=_aws_keys(raw.get("admin_aws_keys"), _text(raw.get("admin_aws_keys_file"))),
            admin_aws_keys_file=_text(raw.get("admin_aws_keys_file")),
            recommender_store=(_text(raw.get("recommender_store")) or "sqlite").lower(),
            recommender_table=_text(raw.get("recommender_table")),
            recommender_refresh_seconds=conv("recommender_refresh_seconds", 0, 3600),
            transformer_timeout_ms=conv("transformer_timeout_ms", 50, 1500),
            data_dir=os.path.abspath(_text(raw.get("data_dir")) or "data"),
            cache_dir=_text(raw.get("cache_dir")) or "",
            recommender_db_path=_text(raw.get("recommender_db_path")) or "",
            serve_recommenders=_flag("SERVE_RECOMMENDERS", raw.get("serve_recommenders")),
            link_tracking=_flag("LINK_TRACKING", raw.get("link_tracking")),
            personalize_tracking_id=_tracking_id(_text(raw.get("personalize_tracking_id"))),
            put_events_max_tps=conv("put_events_max_tps", 0.1, 100_000),
            web_concurrency=conv("web_concurrency", 1, 1000),
            currents_event_types=_currents_event_types(raw.get("currents_event_types")),
            currents_dedup_days=conv("currents_dedup_days", 1, 365),
        )
        if settings.log_level not in LOG_LEVELS:
            raise ConfigError(f"LOG_LEVEL must be one of {', '.join(LOG_LEVELS)}, got {settings.log_level!r}.")
        _check_redis_settings(settings)
        _check_recommender_settings(settings)
        return settings


def _refuse_near_misses(env: Mapping[str, str], names: set[str]) -> None:
    """Refuse a variable that is one letter or so from a setting's name: API_KEY for API_KEYS would
    otherwise leave the service open without a word."""
    for key in env:
        if key not in names and (close := difflib.get_close_matches(key, names, n=1, cutoff=0.9)):
            raise ConfigError(f"{key} is not a setting; did you mean {close[0]}? (A near miss is refused, "
                              "so a typo cannot turn a setting off.)")
