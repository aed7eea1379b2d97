"""`flask --app wsgi check-send FILE`: what each recipient of a send would get, asked of the service's own source.

Each user id goes through the request path's own code (the query schema, then views.answer, as the route and
/preview do), in probe mode: the source is asked even when the cache holds a fresh answer, and nothing is
written back, so a check neither warms the cache for the send with answers that will have expired nor is
fooled by answers cached earlier (README, "Check before you send").
"""
from __future__ import annotations

import csv
import dataclasses
import io
import math
import os
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
from flask import current_app
from flask.cli import with_appcontext
from werkzeug.datastructures import MultiDict

from app.catalog.files import FileError
from app.commands.pacing import Pace
from app.commands.progress import Progress
from app.components import components
from app.errors import InvalidParameterError, ServiceError
from app.pinpoint.serving import UnknownRecommenderError
from app.recommendations.query import QueryParser
from app.recommendations.service import Result
from app.recommendations.views import answer
from app.settings import ConfigError, fraction
from app.sources.batch import BatchRecommender

# Calls a second to Personalize: a fraction of what a campaign sized for a send is provisioned for, so a check
# run beside live traffic does not push it into scaling up (which Personalize says may lose transactions).
DEFAULT_TPS = 5.0
EXTERNAL_ID = "external_id"  # the user id column of a Braze segment export
SOURCES = ("personalize", "batch", "stale", "fallback")  # always listed, in this order, even at 0
ERROR = "error"  # no answer at all: the request would fail (e.g. no_recommendations)
NOT_UTF8 = "not valid UTF-8"
FIRST_PROBLEMS = 5
REPORT_COLUMNS = ("user_id", "source", "cache", "fallback_reason", "items", "backfilled", "ms")
ITEM_SEPARATOR = "|"
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
PLACEHOLDER_USER = "check-send"  # checks the options once, before any user id is read


@dataclass
class UserList:
    """The recipients a file names, unique, in file order; and what was left out, and why."""

    ids: list[str] = field(default_factory=list)
    export: bool = False  # a Braze export (CSV with external_id), else one id per line
    duplicates: int = 0
    blank: int = 0
    malformed: list[tuple[int, str]] = field(default_factory=list)  # (line number, what is wrong)


def read_user_list(data: bytes, problem: Callable[[str], str | None]) -> UserList:
    """Read a Braze segment export (a CSV whose header has external_id) or a file of one user id per line.

    problem(user_id) says why the service would refuse the id (None: it would not); such ids are counted with
    their line numbers and never sent. Blank lines (or rows without external_id) are skipped, duplicates
    checked once. Raise click.UsageError for a CSV that cannot be parsed.
    """
    text = data.decode("utf-8", errors="surrogateescape").removeprefix("\ufeff")
    users = UserList()
    seen: set[str] = set()
    for number, user_id in _user_ids(text, users):
        if not user_id:
            users.blank += 1
            continue
        why = NOT_UTF8 if _not_utf8(user_id) else problem(user_id)
        if why is not None:
            users.malformed.append((number, why))
        elif user_id in seen:
            users.duplicates += 1
        else:
            seen.add(user_id)
            users.ids.append(user_id)
    return users


def _user_ids(text: str, users: UserList) -> Iterator[tuple[int, str]]:
    """Yield (line number, user id) for each line or CSV row; an empty id for a blank one."""
    lines = text.split("\n")
    if text.endswith("\n"):
        lines.pop()
    first = next((line for line in lines if line.strip()), "")
    header = [cell.strip().lower() for cell in next(csv.reader([first]), [])]
    if EXTERNAL_ID not in header:
        for number, line in enumerate(lines, start=1):
            yield number, line.removesuffix("\r")
        return
    users.export = True
    column = header.index(EXTERNAL_ID)
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        for row in reader:  # up to the header
            if any(cell.strip() for cell in row):
                break
        for row in reader:
            yield reader.line_num, row[column] if column < len(row) else ""
    except csv.Error as exc:
        raise click.UsageError(f"line {reader.line_num} of the CSV cannot be read: {exc}.") from None


def _not_utf8(user_id: str) -> bool:
    try:
        user_id.encode("utf-8")  # bytes that were not UTF-8 were decoded as lone surrogates
    except UnicodeEncodeError:
        return True
    return False


def refusal(parser: QueryParser, pairs: Sequence[tuple[str, str]]) -> Callable[[str], str | None]:
    """Return what says why the request path would refuse a user id with these options (None: it would not)."""

    def problem(user_id: str) -> str | None:
        try:
            parser.parse(MultiDict([("user_id", user_id), *pairs]))
        except InvalidParameterError as exc:  # its messages never repeat the id
            return " ".join(" ".join(map(str, problems)) for problems in (exc.errors or {}).values())
        return None

    return problem


@dataclass(frozen=True)
class Outcome:
    """What one recipient would get: the answer's source and headers, or the error the request would end in."""

    source: str
    cache: str
    fallback_reason: str | None
    item_ids: list[str]
    backfilled: int
    answered: int  # ids in the source's (or stale, or batch) answer
    unknown: int  # of those, ids the catalog does not have (or has out of stock)

    @classmethod
    def of(cls, result: Result) -> Outcome:
        known = len(result.catalog.known(result.answered))
        return cls(result.source, result.cache, result.fallback_reason, result.item_ids, result.backfilled,
                   len(result.answered), len(result.answered) - known)

    @classmethod
    def failed(cls, exc: ServiceError) -> Outcome:
        return cls(ERROR, "", exc.code, [], 0, 0, 0)

    @property
    def fell_back(self) -> bool:
        """Say whether the recipient would get anything but the source's own answer for them."""
        return self.fallback_reason is not None or self.source in ("stale", "fallback", ERROR)


@dataclass
class Tally:
    """Counts over every recipient checked."""

    sources: Counter[str] = field(default_factory=Counter)
    reasons: Counter[str] = field(default_factory=Counter)
    fell_back: int = 0
    answered: int = 0
    unknown: int = 0
    latencies_ms: list[float] = field(default_factory=list)

    @property
    def recipients(self) -> int:
        return sum(self.sources.values())

    def add(self, outcome: Outcome, ms: float) -> None:
        self.sources[outcome.source] += 1
        if outcome.fallback_reason is not None:
            self.reasons[outcome.fallback_reason] += 1
        self.fell_back += outcome.fell_back
        self.answered += outcome.answered
        self.unknown += outcome.unknown
        self.latencies_ms.append(ms)


class Share(click.ParamType):
    """A share of recipients: a fraction (0.05) or a percentage (5%)."""

    name = "share"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        if isinstance(value, float):
            return value
        try:
            return fraction("--max-fallback", value, 0.0)
        except ConfigError as exc:
            self.fail(str(exc), param, ctx)


def _name_values(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> list[tuple[str, str]]:
    """Split repeated NAME=VALUE options."""
    pairs = []
    for value in values:
        name, equals, given = value.partition("=")
        if not equals or not name:
            raise click.BadParameter(f"give NAME=VALUE, got {value!r}.")
        pairs.append((name, given))
    return pairs


@click.command("check-send")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--num-results", metavar="N", help="Items per recipient, as the template's num_results "
                                                 "(default: DEFAULT_NUM_RESULTS).")
@click.option("--filter", "filter_name", metavar="NAME", help="A filter named in FILTERS, as filter=NAME.")
@click.option("--filter-value", "filter_values", multiple=True, callback=_name_values, metavar="NAME=VALUE",
              help="A value for the filter's $NAME placeholder, as filter.NAME=VALUE; repeatable.")
@click.option("--context", "contexts", multiple=True, callback=_name_values, metavar="NAME=VALUE",
              help="A Personalize context value, as context.NAME=VALUE; repeatable.")
@click.option("--recommender", metavar="ID", help="A stored recommender configuration's Id, as recommender=ID.")
@click.option("--tps", type=click.FloatRange(min=0.001), default=DEFAULT_TPS, show_default=True,
              help="Most calls a second to Personalize (a batch-only service is not capped).")
@click.option("--report", type=click.Path(dir_okay=False, path_type=Path),
              help="Write one CSV line per recipient to this file (made 0600: it holds user ids).")
@click.option("--max-fallback", type=Share(), metavar="SHARE",
              help="Exit 1 when more than this share of recipients (5% or 0.05) would get a fallback.")
@with_appcontext
def check_send(file: Path, num_results: str | None, filter_name: str | None, filter_values: list[tuple[str, str]],
               contexts: list[tuple[str, str]], recommender: str | None, tps: float, report: Path | None,
               max_fallback: float | None) -> None:
    """Say what each recipient in FILE would get from this service now, to check a send before it goes out.

    FILE is a Braze segment export (a CSV with an external_id column) or one user id per line. The summary
    counts recipients per source and fallback reason, the recommended ids the catalog does not know and the
    latency per call; it never prints a user id. Exit 0, or 1 when --max-fallback is exceeded, 2 for a usage error.
    """
    from app import warm_up  # app/__init__.py imports this module to register it

    parts = components(current_app)
    pairs = _query_pairs(num_results, filter_name, filter_values, contexts, recommender)
    try:
        base = parts.query_parser.parse(MultiDict([("user_id", PLACEHOLDER_USER), *pairs]))
    except InvalidParameterError as exc:
        raise click.UsageError(_options_problem(exc)) from None
    users = read_user_list(file.read_bytes(), refusal(parts.query_parser, pairs))
    try:
        warm_up(current_app)
    except (ServiceError, FileError) as exc:
        raise click.ClickException(f"The service cannot answer: {exc}") from None
    live = base.recommender is not None or parts.service.recommender.name != BatchRecommender.name
    cap = tps if live else None  # a batch output in memory costs nothing per call
    tally = Tally()
    with Pace(cap) as pace, _report_file(report) as write, \
            Progress("check-send", len(users.ids)) as progress:
        for user_id in users.ids:
            pace.wait()
            started = time.monotonic()
            try:
                result, _ = answer(parts, dataclasses.replace(base, user_id=user_id), started, probe=True)
                outcome = Outcome.of(result)
            except UnknownRecommenderError as exc:
                raise click.UsageError(exc.message) from None
            except ServiceError as exc:
                outcome = Outcome.failed(exc)
            ms = (time.monotonic() - started) * 1000
            tally.add(outcome, ms)
            write(user_id, outcome, ms)
            progress.advance()
    for line in summary(users, tally, cap):
        click.echo(line)
    if max_fallback is not None and not _passes(tally, max_fallback):
        click.get_current_context().exit(1)


def _query_pairs(num_results: str | None, filter_name: str | None, filter_values: list[tuple[str, str]],
                 contexts: list[tuple[str, str]], recommender: str | None) -> list[tuple[str, str]]:
    """Return the options as the query parameters a template would send."""
    pairs = [(name, value) for name, value in (("num_results", num_results), ("filter", filter_name),
                                               ("recommender", recommender)) if value is not None]
    pairs += [(f"filter.{name}", value) for name, value in filter_values]
    pairs += [(f"context.{name}", value) for name, value in contexts]
    return pairs


def _options_problem(exc: InvalidParameterError) -> str:
    """Say what is wrong with the options, named as on the command line (--num-results, --context NAME)."""
    def option(parameter: str) -> str:
        prefix, dot, name = parameter.partition(".")
        if dot:
            return f"--{'filter-value' if prefix == 'filter' else prefix} {name}"
        return "--" + parameter.replace("_", "-")

    return "; ".join(f"{option(name)}: {' '.join(map(str, problems))}"
                     for name, problems in sorted((exc.errors or {}).items()))


def spreadsheet_safe(cell: str) -> str:
    """Return a cell a spreadsheet shows as text: ids come from a Braze export and the batch file, and a cell
    starting with = + - @ (or a tab or CR) would run as a formula when QA opens the report (CSV injection)."""
    return "'" + cell if cell[:1] in FORMULA_STARTS else cell


@contextmanager
def _report_file(path: Path | None) -> Iterator[Callable[[str, Outcome, float], None]]:
    """Yield what writes one recipient's line to the report (0600: user ids are personal data); or nothing."""
    if path is None:
        yield lambda user_id, outcome, ms: None
        return
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(fd, 0o600)  # a file that was there keeps its mode through O_CREAT
    except OSError as exc:
        raise click.BadParameter(f"cannot write {path}: {exc.strerror}.", param_hint="--report") from None
    with open(fd, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(REPORT_COLUMNS)

        def write(user_id: str, outcome: Outcome, ms: float) -> None:
            writer.writerow([spreadsheet_safe(user_id), outcome.source, outcome.cache, outcome.fallback_reason or "",
                             spreadsheet_safe(ITEM_SEPARATOR.join(outcome.item_ids)), outcome.backfilled, f"{ms:.1f}"])

        yield write


def summary(users: UserList, tally: Tally, tps: float | None) -> list[str]:
    """Return the summary's lines: what was read, the tables per source and reason, unknown ids, latency."""
    checked = tally.recipients
    pace = f"at most {tps:g} calls/s" if tps is not None else "uncapped (a batch output answers)"
    kind = f"a Braze export ({EXTERNAL_ID} column)" if users.export else "a list of one id per line"
    blank = f"row without an {EXTERNAL_ID}" if users.export else "blank line"
    lines = [f"Checked {_count(checked, 'recipient')} read from {kind}, {pace}."]
    left_out = [text for count, text in (
        (users.duplicates, f"{_count(users.duplicates, 'duplicate id')} (each user is checked once)"),
        (users.blank, _count(users.blank, blank)),
        (len(users.malformed), f"{_count(len(users.malformed), 'malformed line')} (never sent)")) if count]
    if left_out:
        lines.append(f"Left out: {', '.join(left_out)}.")
    if users.malformed:
        lines.append(f"Malformed lines (the first {min(FIRST_PROBLEMS, len(users.malformed))}):")
        lines += [f"  line {number}: {why}" for number, why in users.malformed[:FIRST_PROBLEMS]]
    lines += ["", *_table("source", [*SOURCES, *sorted(set(tally.sources) - set(SOURCES))], tally.sources, checked)]
    if tally.reasons:
        lines += ["", *_table("fallback reason", sorted(tally.reasons), tally.reasons, checked)]
    lines.append("")
    lines.append(f"Answered by a fallback: {tally.fell_back:,} of {_count(checked, 'recipient')} "
                 f"({_share(tally.fell_back, checked)})")
    lines.append(f"Recommended ids the catalog does not know: {tally.unknown:,} of {tally.answered:,} "
                 f"({_share(tally.unknown, tally.answered)})")
    if tally.latencies_ms:
        ordered = sorted(tally.latencies_ms)
        lines.append(f"Latency per call: p50 {percentile(ordered, 0.5):.1f} ms, "
                     f"p99 {percentile(ordered, 0.99):.1f} ms")
    return lines


def _table(title: str, names: Sequence[str], counts: Counter[str], total: int) -> list[str]:
    width = max(len(title), *(len(name) for name in names))
    rows = [f"{title:<{width}}  {'recipients':>10}  {'share':>6}"]
    rows += [f"{name:<{width}}  {counts[name]:>10,}  {_share(counts[name], total):>6}" for name in names]
    return rows


def _count(count: int, noun: str) -> str:
    return f"{count:,} {noun}{'' if count == 1 else 's'}"


def _share(part: int, whole: int) -> str:
    return f"{part / whole:.1%}" if whole else "-"


def percentile(ordered: Sequence[float], share: float) -> float:
    """Return the nearest-rank percentile of sorted values (p99 of 10 values is the largest)."""
    return ordered[max(0, math.ceil(share * len(ordered)) - 1)]


def _passes(tally: Tally, max_fallback: float) -> bool:
    """Say whether the send may go: at most max_fallback of the recipients answered by a fallback."""
    if not tally.recipients:
        click.echo("--max-fallback: no recipient could be checked, so the check fails.")
        return False
    share = tally.fell_back / tally.recipients
    if share > max_fallback:
        click.echo(f"--max-fallback {max_fallback:.1%}: {share:.1%} of recipients would get a fallback; "
                   "do not send yet (exit 1).")
        return False
    click.echo(f"--max-fallback {max_fallback:.1%}: {share:.1%} of recipients would get a fallback; within it.")
    return True
