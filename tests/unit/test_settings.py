"""app/settings.py: Settings.from_env / from_mapping, and create_app's checks of the source URIs."""
from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask

from app.settings import ConfigError, Settings

CATALOG = "sample/catalog.csv"
BATCH = "sample/batch-output.json.out"
ARN = "arn:aws:personalize:eu-west-1:123456789012:campaign/braze-recs"
RECOMMENDER_ARN = "arn:aws:personalize:ap-southeast-2:123456789012:recommender/top-picks"


def env(**values: str) -> dict[str, str]:
    """An environment with a catalog and a batch file, plus the given variables."""
    base = {"CATALOG_URI": CATALOG, "RECOMMENDATIONS_URI": BATCH}
    base.update(values)
    return base


def config_error(environ: dict[str, str]) -> str:
    with pytest.raises(ConfigError) as info:
        Settings.from_env(environ)
    return str(info.value)


# --- defaults and reading ------------------------------------------------------------------------


def test_defaults() -> None:
    settings = Settings.from_env(env())
    assert settings.catalog_uri == CATALOG
    assert settings.recommendations_uri == BATCH
    assert settings.personalize_campaign_arn is None
    assert settings.aws_region is None
    assert settings.default_num_results == 10
    assert settings.cache_ttl_seconds == 300
    assert settings.cache_redis_url is None
    # One folder of the service's own, relative to the working directory (./data for make run, /srv/data in
    # Docker), never a shared temporary folder another user could have made first.
    assert settings.data_dir == os.path.abspath("data")
    assert settings.cache_dir == os.path.join(os.path.abspath("data"), "cache")
    assert settings.recommender_db_path == os.path.join(os.path.abspath("data"), "recommenders.sqlite3")
    assert not settings.serve_recommenders
    assert settings.catalog_refresh_seconds == 60.0
    # Every tunable not given takes the dataclass's default, converted to its declared type.
    assert settings == Settings(catalog_uri=CATALOG, recommendations_uri=BATCH, personalize_max_concurrency=16)
    assert isinstance(settings.personalize_connect_timeout, float)
    assert isinstance(settings.personalize_max_attempts, int)
    assert 0 < settings.personalize_connect_timeout <= settings.personalize_read_timeout <= 2


@pytest.mark.parametrize(("given", "expected"), [({}, 16), ({"WEB_THREADS": "32"}, 32),
                                                 ({"WEB_THREADS": "32", "PERSONALIZE_MAX_CONCURRENCY": "4"}, 4)])
def test_the_personalize_cap_follows_web_threads_unless_set(given: dict[str, str], expected: int) -> None:
    assert Settings.from_env(env(**given)).personalize_max_concurrency == expected


def test_from_env_reads_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CATALOG_URI", "s3://bucket/items.csv.gz")
    monkeypatch.setenv("RECOMMENDATIONS_URI", "s3://bucket/out/batch.json.out")
    monkeypatch.setenv("DEFAULT_NUM_RESULTS", "25")
    monkeypatch.delenv("PERSONALIZE_CAMPAIGN_ARN", raising=False)
    settings = Settings.from_env()
    assert (settings.catalog_uri, settings.default_num_results) == ("s3://bucket/items.csv.gz", 25)


def test_values_are_converted_and_stripped() -> None:
    settings = Settings.from_env(env(
        DEFAULT_NUM_RESULTS=" 25 ", CACHE_TTL_SECONDS="60", CATALOG_REFRESH_SECONDS="2.5",
        PERSONALIZE_READ_TIMEOUT="0.75", CACHE_REDIS_URL=" redis://cache:6379/2 ", CACHE_DIR="/var/cache/recs",
        CATALOG_URI="  https://feeds.example.com/products.json  ",
    ))
    assert settings.default_num_results == 25
    assert settings.cache_ttl_seconds == 60
    assert settings.catalog_refresh_seconds == 2.5
    assert settings.personalize_read_timeout == 0.75
    assert settings.cache_redis_url == "redis://cache:6379/2"
    assert settings.cache_dir == "/var/cache/recs"
    assert settings.catalog_uri == "https://feeds.example.com/products.json"


def test_blank_variables_count_as_unset() -> None:
    settings = Settings.from_env(env(DEFAULT_NUM_RESULTS="   ", CACHE_REDIS_URL="", AWS_REGION=" "))
    assert (settings.default_num_results, settings.cache_redis_url, settings.aws_region) == (10, None, None)


def test_from_mapping_accepts_typed_values() -> None:
    settings = Settings.from_mapping({"catalog_uri": CATALOG, "recommendations_uri": BATCH,
                                      "default_num_results": 3, "catalog_refresh_seconds": 0.5})
    assert (settings.default_num_results, settings.catalog_refresh_seconds) == (3, 0.5)


def test_from_mapping_rejects_unknown_settings() -> None:
    with pytest.raises(ConfigError, match="Unknown setting.*catalog_url"):
        Settings.from_mapping({"catalog_uri": CATALOG, "recommendations_uri": BATCH, "catalog_url": "x"})


# --- required settings ---------------------------------------------------------------------------


@pytest.mark.parametrize("value", [None, "", "   "])
def test_missing_catalog_uri_names_the_variable(value: str | None) -> None:
    environ = {"RECOMMENDATIONS_URI": BATCH}
    if value is not None:
        environ["CATALOG_URI"] = value
    assert "CATALOG_URI" in config_error(environ)


def test_no_recommendation_source_names_both_variables() -> None:
    message = config_error({"CATALOG_URI": CATALOG})
    assert "PERSONALIZE_CAMPAIGN_ARN" in message
    assert "RECOMMENDATIONS_URI" in message


# --- the Personalize ARN and the region ----------------------------------------------------------


@pytest.mark.parametrize("arn", [
    "campaign/braze-recs",
    "arn:aws:personalize:eu-west-1:12345:campaign/x",  # account is not 12 digits
    "arn:aws:personalize:eu-west-1:123456789012:dataset/x",  # not a campaign or recommender
    "arn:aws:s3:eu-west-1:123456789012:campaign/x",  # not Personalize
    "arn:aws:personalize:eu-west-1:123456789012:campaign/",
    "arn:aws:personalize:eu-west-1:123456789012:campaign/has space",
])
def test_malformed_arn_is_rejected(arn: str) -> None:
    message = config_error({"CATALOG_URI": CATALOG, "PERSONALIZE_CAMPAIGN_ARN": arn})
    assert "PERSONALIZE_CAMPAIGN_ARN" in message
    assert repr(arn) in message


@pytest.mark.parametrize(("arn", "region"), [
    (ARN, "eu-west-1"),
    (RECOMMENDER_ARN, "ap-southeast-2"),
    ("arn:aws-cn:personalize:cn-north-1:123456789012:campaign/c", "cn-north-1"),
])
def test_region_comes_from_the_arn_when_aws_region_is_unset(arn: str, region: str) -> None:
    settings = Settings.from_env({"CATALOG_URI": CATALOG, "PERSONALIZE_CAMPAIGN_ARN": arn})
    assert settings.aws_region == region
    assert settings.personalize_campaign_arn == arn
    assert settings.personalize_campaign_arn is not None


@pytest.mark.parametrize("variable", ["AWS_REGION", "AWS_DEFAULT_REGION"])
def test_the_arn_region_wins_over_the_environment(variable: str) -> None:
    settings = Settings.from_env({"CATALOG_URI": CATALOG, "PERSONALIZE_CAMPAIGN_ARN": ARN, variable: "us-west-2"})
    assert settings.aws_region == ARN.split(":")[3]


def test_batch_source_takes_aws_region_as_given() -> None:
    assert Settings.from_env(env(AWS_REGION="us-west-2")).aws_region == "us-west-2"


# --- numbers ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("variable", "value", "expected"), [
    ("DEFAULT_NUM_RESULTS", "0", "between 1 and 100, got 0"),
    ("DEFAULT_NUM_RESULTS", "101", "between 1 and 100, got 101"),
    ("DEFAULT_NUM_RESULTS", "ten", "whole number, got 'ten'"),
    ("DEFAULT_NUM_RESULTS", "2.5", "whole number, got '2.5'"),
    ("CACHE_TTL_SECONDS", "0", "got 0"),
    ("CACHE_TTL_SECONDS", "-5", "got -5"),
    ("CATALOG_REFRESH_SECONDS", "0", "got 0.0"),
    ("CATALOG_REFRESH_SECONDS", "soon", "number, got 'soon'"),
    ("PERSONALIZE_READ_TIMEOUT", "nan", "PERSONALIZE_READ_TIMEOUT"),
    ("PERSONALIZE_CONNECT_TIMEOUT", "inf", "PERSONALIZE_CONNECT_TIMEOUT"),
    ("PERSONALIZE_MAX_ATTEMPTS", "0", "got 0"),
])
def test_bad_numbers_are_rejected_naming_the_variable(variable: str, value: str, expected: str) -> None:
    message = config_error(env(**{variable: value}))
    assert message.startswith(variable + " must be")
    assert expected in message


@pytest.mark.parametrize(("variable", "value", "field", "expected"), [
    ("DEFAULT_NUM_RESULTS", "1", "default_num_results", 1),
    ("DEFAULT_NUM_RESULTS", "100", "default_num_results", 100),
    ("CACHE_TTL_SECONDS", "1", "cache_ttl_seconds", 1),
])
def test_range_limits_are_inclusive(variable: str, value: str, field: str, expected: int) -> None:
    assert getattr(Settings.from_env(env(**{variable: value})), field) == expected


# --- the Redis URL ---------------------------------------------------------------------------------


@pytest.mark.parametrize("url", ["http://cache:6379", "cache:6379", "memcached://cache:11211"])
def test_bad_redis_url_scheme_is_rejected(url: str) -> None:
    message = config_error(env(CACHE_REDIS_URL=url))
    assert "CACHE_REDIS_URL" in message
    assert repr(url) in message


@pytest.mark.parametrize("url", ["redis://cache:6379/0", "rediss://:secret@cache:6380/1", "unix:///run/redis.sock"])
def test_good_redis_urls_are_accepted(url: str) -> None:
    assert Settings.from_env(env(CACHE_REDIS_URL=url)).cache_redis_url == url


# --- Redis Cluster and TLS --------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "expected"), [(None, None), ("", None), ("true", True), ("false", False),
                                                 ("yes", True), ("0", False)])
def test_cache_redis_cluster_is_true_false_or_unset(value: str | None, expected: bool | None) -> None:
    extra = {} if value is None else {"CACHE_REDIS_CLUSTER": value}
    settings = Settings.from_env(env(CACHE_REDIS_URL="redis://cache:6379", **extra))
    assert settings.cache_redis_cluster is expected


PASSWORD = "pa55-w0rd-never-shown"


@pytest.mark.parametrize(("values", "expected"), [
    ({"CACHE_REDIS_URL": "redis://cache:6379", "CACHE_REDIS_CLUSTER": "maybe"},
     "CACHE_REDIS_CLUSTER must be true or false, got 'maybe'."),
    ({"CACHE_REDIS_CLUSTER": "true"},
     "CACHE_REDIS_CLUSTER is set but CACHE_REDIS_URL is not: set CACHE_REDIS_URL"),
    ({"CACHE_REDIS_URL": "unix:///run/redis.sock", "CACHE_REDIS_CLUSTER": "true"},
     "CACHE_REDIS_CLUSTER=true needs a redis:// or rediss:// CACHE_REDIS_URL"),
    ({"CACHE_REDIS_URL": f"rediss://app:{PASSWORD}@cache:6379/3", "CACHE_REDIS_CLUSTER": "true"},
     "CACHE_REDIS_URL names database 3, but a Redis Cluster (CACHE_REDIS_CLUSTER=true) has only database 0"),
    ({"CACHE_REDIS_URL": f"redis://app:{PASSWORD}@cache:6379", "CACHE_REDIS_TLS_CA_FILE": "/etc/ssl/ca.pem"},
     "CACHE_REDIS_TLS_CA_FILE applies to TLS, but CACHE_REDIS_URL does not use it: start the URL with rediss://"),
    ({"CACHE_REDIS_URL": "redis://cache:6379", "CACHE_REDIS_TLS_VERIFY": "none"},
     "CACHE_REDIS_TLS_VERIFY applies to TLS, but CACHE_REDIS_URL does not use it"),
    ({"CACHE_REDIS_URL": "rediss://cache:6379", "CACHE_REDIS_TLS_VERIFY": "sometimes"},
     "CACHE_REDIS_TLS_VERIFY must be one of full, ca, none, got 'sometimes'."),
    ({"CACHE_REDIS_URL": "rediss://cache:6379", "CACHE_REDIS_TLS_CA_FILE": "/no/such/ca.pem"},
     "CACHE_REDIS_TLS_CA_FILE: cannot read PEM certificates from '/no/such/ca.pem' (No such file or directory)."),
    ({"CACHE_REDIS_TLS_CA_FILE": "/etc/ssl/ca.pem"}, "CACHE_REDIS_TLS_CA_FILE is set but CACHE_REDIS_URL is not"),
    ({"CACHE_REDIS_URL": f"rediss://app:{PASSWORD}@cache:port"},
     "CACHE_REDIS_URL is not a Redis URL"),
    ({"CACHE_REDIS_URL": f"http://app:{PASSWORD}@cache:6379"},
     "CACHE_REDIS_URL must start with redis://, rediss:// (TLS) or unix://, got 'http://app:***@cache:6379'."),
])
def test_redis_settings_that_cannot_work_stop_start_up_with_a_sentence(values: dict[str, str], expected: str) -> None:
    message = config_error(env(**values))
    assert expected in message
    assert PASSWORD not in message


def test_a_ca_file_that_is_not_pem_is_refused(tmp_path: Any) -> None:
    garbage = tmp_path / "ca.pem"
    garbage.write_text("not a certificate")
    message = config_error(env(CACHE_REDIS_URL="rediss://cache:6379", CACHE_REDIS_TLS_CA_FILE=str(garbage)))
    assert message.startswith("CACHE_REDIS_TLS_CA_FILE: cannot read PEM certificates from")


def test_the_settings_repr_never_shows_the_redis_password() -> None:
    settings = Settings.from_env(env(CACHE_REDIS_URL=f"rediss://app:{PASSWORD}@cache:6379"))
    assert PASSWORD not in repr(settings)


def test_redis_urls_for_elasticache_serverless_are_accepted() -> None:
    url = f"rediss://app:{PASSWORD}@my-cache-abc123.serverless.use1.cache.amazonaws.com:6379"
    settings = Settings.from_env(env(CACHE_REDIS_URL=url, CACHE_REDIS_CLUSTER="true"))
    assert (settings.cache_redis_url, settings.cache_redis_cluster, settings.cache_redis_tls_verify) == (url, True, "full")


# --- create_app checks the URIs' scheme and format -----------------------------------------------


@pytest.mark.parametrize(("settings", "variable", "expected"), [
    ({"catalog_uri": "ftp://files.example.com/catalog.csv"}, "CATALOG_URI", "unsupported scheme 'ftp'"),
    ({"catalog_uri": "sample/catalog.xml"}, "CATALOG_URI", "cannot tell the format"),
    ({"catalog_uri": "s3://bucket/catalog.parquet"}, "CATALOG_URI", "cannot tell the format"),
    ({"catalog_uri": "s3://bucket-only"}, "CATALOG_URI", "s3://bucket/key"),
    ({"recommendations_uri": "gopher://x/batch.json.out"}, "RECOMMENDATIONS_URI", "unsupported scheme 'gopher'"),
])
def test_create_app_rejects_unusable_uris(
    make_app: Callable[..., Flask], settings: dict[str, str], variable: str, expected: str
) -> None:
    with pytest.raises(ConfigError) as info:
        make_app(**settings)
    message = str(info.value)
    assert message.startswith(variable + ": ")
    assert expected in message


def test_create_app_accepts_the_sample_files(make_app: Callable[..., Flask]) -> None:
    app = make_app()
    assert app.config["SETTINGS"].catalog_uri.endswith("catalog.csv")
    assert app.config["SETTINGS"].default_num_results == 10


@pytest.mark.parametrize(("typo", "meant"), [("API_KEY", "API_KEYS"), ("ADMIN_API_KEY", "ADMIN_API_KEYS"),
                                             ("CATALOG_URL", "CATALOG_URI"), ("CACHE_REDIS_URI", "CACHE_REDIS_URL")])
def test_a_near_miss_of_a_setting_name_stops_start_up(typo: str, meant: str) -> None:
    """API_KEY=... for API_KEYS would otherwise start the service with no key at all, silently."""
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"CATALOG_URI": "sample/catalog.csv", "RECOMMENDATIONS_URI": "x.json", typo: "value"})
    assert f"{typo} is not a setting; did you mean {meant}?" in str(caught.value)


def test_other_variables_of_a_deployment_are_not_near_misses() -> None:
    env = {"CATALOG_URI": "sample/catalog.csv", "RECOMMENDATIONS_URI": "x.json"}
    env |= dict.fromkeys(["PORT", "HOST", "WEB_CONCURRENCY", "WEB_THREADS", "WORKER_TIMEOUT", "GRACEFUL_TIMEOUT",
                          "ACCESS_LOG", "AWS_DEFAULT_REGION", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                          "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_ENDPOINT_URL_PERSONALIZE_RUNTIME",
                          "PROMETHEUS_MULTIPROC_DIR", "GUNICORN_CMD_ARGS", "TMPDIR"], "8")
    assert Settings.from_env(env).catalog_uri == "sample/catalog.csv"
