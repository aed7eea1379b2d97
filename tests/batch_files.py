"""Batch inference output files as Personalize writes them, generated fast for tests and the benchmark."""
from __future__ import annotations

import gzip
from collections.abc import Callable, Sequence
from pathlib import Path

import orjson

LINES_PER_WRITE = 20_000


def job_line(user_id: str, items: Sequence[str], kind: str = "userId") -> bytes:
    """Return one line of batch output for a user (or, kind="itemId", an item's related items)."""
    return orjson.dumps({"input": {kind: user_id}, "output": {"recommendedItems": list(items),
                                                                "scores": [0.5] * len(items)}, "error": None})


def write_job(path: Path, user_ids: Sequence[str], items: Callable[[int], Sequence[str]], kind: str = "userId",
              level: int = 1) -> Path:
    """Write one output file with a line per user (gzipped at level when the name ends in .gz); return path.

    items(i) gives the i-th user's items. The lines share one template with the user id spliced in, so a
    million users take seconds, not minutes.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    opener = (lambda: gzip.open(path, "wb", compresslevel=level)) if path.name.endswith(".gz") else (
        lambda: open(path, "wb"))
    templates: dict[tuple[str, ...], tuple[bytes, bytes]] = {}
    with opener() as fh:
        buffer: list[bytes] = []
        for index, user_id in enumerate(user_ids):
            answer = tuple(items(index))
            if answer not in templates:
                head, tail = job_line("@@USER@@", answer, kind).split(b"@@USER@@")
                templates[answer] = (head, tail)
            head, tail = templates[answer]
            buffer.append(head + orjson.dumps(user_id)[1:-1] + tail + b"\n")
            if len(buffer) >= LINES_PER_WRITE:
                fh.write(b"".join(buffer))
                buffer.clear()
        fh.write(b"".join(buffer))
    return path


def write_folder(folder: Path, users: int, files: int, items: Callable[[int], Sequence[str]],
                 suffix: str = ".json.out.gz", prefix: str = "user") -> list[Path]:
    """Split users (prefix0 .. prefixN-1) over several files of one job in folder, as a batch job writes them."""
    per_file = -(-users // files)
    return [write_job(folder / f"part-{number:03d}{suffix}",
                      [f"{prefix}{i}" for i in range(start, min(start + per_file, users))],
                      lambda i, start=start: items(start + i))
            for number, start in enumerate(range(0, users, per_file))]
