"""Nothing read from the answer cache runs: entries are JSON data, and the folders the service keeps are its own."""
from __future__ import annotations

import os
import pickle
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from app.caching.answers import AnswerCache
from app.extensions import cache as cache_extension
from app.settings import ConfigError
from app.storage import private_file, private_folder
from tests.conftest import FakeRecommender


class WritesAFile:
    """Unpickling this creates a file: what an attacker who can write the cache would do with os.system."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.path), "w"))


def crafted_pickle(marker: Path) -> bytes:
    data = pickle.dumps(WritesAFile(marker))
    assert b"WritesAFile" not in data  # it names only builtins.open: any pickle.loads would run it
    return data


def test_a_crafted_file_cache_entry_does_not_run(make_app: Callable[..., Flask], tmp_path: Path) -> None:
    fake = FakeRecommender({"u1": ["1000", "1037"]})
    app = make_app({"recommender": fake})
    client = app.test_client()
    first = client.get("/recommendations?user_id=u1")
    backend = app.extensions["cache"][cache_extension]
    filename = backend._get_filename(AnswerCache.key(fake.key, "u1", {"num_results": 10}))
    marker = tmp_path / "ran"
    with open(filename, "wb") as fh:  # cachelib's layout: a 4-byte expiry (0: never), then the pickle
        fh.write(struct.pack("I", 0) + crafted_pickle(marker))

    resp = client.get("/recommendations?user_id=u1")

    assert not marker.exists()
    assert resp.status_code == 200 and resp.headers["X-Cache"] == "MISS"
    assert resp.get_json() == first.get_json()
    with open(filename, "rb") as fh:
        assert fh.read()[4:].startswith(b'{"items":["1000","1037"]')  # the answer as JSON replaced it


def test_cache_files_are_private(make_app: Callable[..., Flask], cache_dir: str) -> None:
    app = make_app({"recommender": FakeRecommender({"u1": ["1000"]})})
    app.test_client().get("/recommendations?user_id=u1")
    assert os.stat(cache_dir).st_mode & 0o777 == 0o700
    files = list(Path(cache_dir).iterdir())
    assert files and all(f.stat().st_mode & 0o777 == 0o600 for f in files)


def test_the_default_folders_are_made_private_in_data_dir(make_app: Callable[..., Flask], tmp_path: Path) -> None:
    data = tmp_path / "fresh" / "data"
    make_app(data_dir=str(data), cache_dir=None, admin_api_keys="k" * 24)
    assert (data.stat().st_mode & 0o777, (data / "cache").stat().st_mode & 0o777) == (0o700, 0o700)
    assert (data / "recommenders.sqlite3").stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize("variable", ["CACHE_DIR", "DATA_DIR"])
def test_a_cache_folder_others_can_write_is_refused(make_app: Callable[..., Flask], tmp_path: Path,
                                                    variable: str) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)  # what the attack found: another user's folder, mode 777
    where = {"cache_dir": str(shared)} if variable == "CACHE_DIR" else {"data_dir": str(shared), "cache_dir": None}
    with pytest.raises(ConfigError, match=f"^{variable}: .* may be written by other users"):
        make_app(**where)


def test_a_folder_of_another_user_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "theirs"
    folder.mkdir(mode=0o700)
    monkeypatch.setattr(os, "geteuid", lambda: folder.stat().st_uid + 1)  # the service runs as someone else
    with pytest.raises(ConfigError, match="^CACHE_DIR: .* belongs to another user"):
        private_folder(str(folder), "CACHE_DIR")


def test_a_database_file_others_can_write_is_refused(make_app: Callable[..., Flask], tmp_path: Path) -> None:
    db = tmp_path / "state" / "r.sqlite3"
    db.parent.mkdir(mode=0o700)
    db.write_bytes(b"")
    db.chmod(0o666)
    with pytest.raises(ConfigError, match="^RECOMMENDER_DB_PATH: .* may be written by other users"):
        make_app(admin_api_keys="k" * 24, recommender_db_path=str(db))


def test_a_symlink_is_refused(tmp_path: Path) -> None:
    (tmp_path / "real").write_bytes(b"")
    (tmp_path / "link").symlink_to(tmp_path / "real")
    with pytest.raises(ConfigError, match="RECOMMENDER_DB_PATH"):
        private_file(str(tmp_path / "link"), "RECOMMENDER_DB_PATH")


def test_a_garbage_entry_count_does_not_stop_writes(make_app: Callable[..., Flask]) -> None:
    app = make_app({"recommender": FakeRecommender({"u1": ["1000"]})})
    backend = app.extensions["cache"][cache_extension]
    with open(backend._get_filename(backend._fs_count_file), "wb") as fh:  # an older release's, or anyone's
        fh.write(struct.pack("I", 0) + b"\x80\x05K\x03.")
    client = app.test_client()
    assert client.get("/recommendations?user_id=u1").headers["X-Cache"] == "MISS"
    assert client.get("/recommendations?user_id=u1").headers["X-Cache"] == "HIT"
