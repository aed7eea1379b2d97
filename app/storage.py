"""The folders and files the service keeps on disk (DATA_DIR): created private to its user, refused when others
could write them.

Whoever can write a folder the service reads from can change what it serves (or, with a format that runs
code, run code in it): so every folder is made 0700 and every file 0600, and one that another user owns or
that group or others may write stops the start with a sentence naming the setting.
"""
from __future__ import annotations

import os
import sqlite3
import stat
import threading

from app.settings import ConfigError

FOLDER_MODE = 0o700
FILE_MODE = 0o600


def private_folder(path: str, variable: str) -> str:
    """Create the folder (and missing parents) 0700, or check an existing one; return its absolute path.

    Raise ConfigError, naming variable, when it cannot be made, is not a folder, belongs to another user
    or may be written by group or others.
    """
    path = os.path.abspath(path)
    try:
        os.makedirs(path, mode=FOLDER_MODE, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"{variable}: cannot create the folder {path} ({exc.strerror}); point {variable} at a "
                          "folder the service's user may create or owns.") from None
    _check_private(path, variable, "folder", stat.S_ISDIR)
    return path


def private_file(path: str, variable: str) -> str:
    """Create the file 0600 in a private folder if it is missing, or check an existing one; return its path."""
    path = os.path.abspath(path)
    private_folder(os.path.dirname(path), variable)
    try:
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY | os.O_NOFOLLOW, FILE_MODE))
    except OSError as exc:
        raise ConfigError(f"{variable}: cannot create the file {path} ({exc.strerror}).") from None
    _check_private(path, variable, "file", stat.S_ISREG)
    return path


def _check_private(path: str, variable: str, kind: str, is_kind: object) -> None:
    info = os.lstat(path)
    if not is_kind(info.st_mode):  # type: ignore[operator]
        raise ConfigError(f"{variable}: {path} is not a {kind} (a symbolic link is refused too).")
    if info.st_uid != os.geteuid():
        raise ConfigError(f"{variable}: the {kind} {path} belongs to another user (uid {info.st_uid}); the service "
                          f"keeps its data only where its own user (uid {os.geteuid()}) owns it.")
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise ConfigError(f"{variable}: the {kind} {path} may be written by other users (mode "
                          f"{stat.S_IMODE(info.st_mode):o}); make it private (chmod {'700' if kind == 'folder' else '600'}) "
                          f"or point {variable} elsewhere.")


class SQLiteFile:
    """A SQLite file private to the service (0600, WAL): one connection per thread and process, since a
    connection must not cross gunicorn's fork; schema runs on each new connection (CREATE ... IF NOT EXISTS)."""

    def __init__(self, path: str, variable: str, schema: str) -> None:
        self.path = path
        self.variable = variable
        self.schema = schema
        self._local = threading.local()

    def connection(self) -> sqlite3.Connection:
        """Return this thread's connection, opening it first; raise sqlite3.Error, OSError or ConfigError."""
        local = self._local
        if getattr(local, "pid", None) != os.getpid():
            private_file(self.path, self.variable)  # SQLite gives its -wal and -shm files the file's mode
            connection = sqlite3.connect(self.path, timeout=5, isolation_level=None)
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA busy_timeout=5000")
            connection.executescript(self.schema)
            local.connection, local.pid = connection, os.getpid()
        return local.connection
