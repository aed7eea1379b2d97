"""`flask --app wsgi load-batch [URI]`: load a Personalize batch inference job into the batch store before a send.

URI (default RECOMMENDATIONS_URI) names one output file, a folder or an s3://bucket/prefix/ of them. The job
is streamed, written in pipelines and switched to whole once complete; the version served until then stays,
and is removed after a grace period. Rerunning it after an interruption starts that version again; rerunning
it on a job already served does nothing. Exit 0 with a one-line summary; 1 when nothing could be loaded
(unreadable files, no usable line, the store failed); 2 when another load holds the lock.
"""
from __future__ import annotations

import click
from flask import current_app
from flask.cli import with_appcontext

from app.catalog.files import FileError, open_files
from app.commands.progress import Progress
from app.components import components
from app.sources.batch_load import LoadBusy, load_job
from app.sources.batch_store import GRACE_SECONDS

EXIT_BUSY = 2


@click.command("load-batch")
@click.argument("uri", required=False)
@click.option("--grace", type=click.FloatRange(0), default=GRACE_SECONDS, show_default=True,
              help="Seconds the previous version stays readable after the switch, before it is removed.")
@with_appcontext
def load_batch(uri: str | None, grace: float) -> None:
    """Load the batch inference output at URI (default RECOMMENDATIONS_URI) into the shared store."""
    parts = components(current_app)
    uri = uri or parts.settings.recommendations_uri
    if not uri:
        raise click.UsageError("Give the job's URI (a file, a folder or s3://bucket/prefix/) or set "
                               "RECOMMENDATIONS_URI.")
    store = parts.batch_store
    try:
        files = open_files(uri, parts.aws.s3)
        report = load_job(files, store, grace=grace,
                          progress=lambda total: Progress("load-batch", total, "users"))
    except LoadBusy:
        click.echo("load-batch: another load of the batch store is running (a worker or another load-batch); "
                   "run again once it is done.", err=True)
        raise SystemExit(EXIT_BUSY) from None
    except FileError as exc:
        raise click.ClickException(str(exc)) from None
    except store.errors as exc:
        raise click.ClickException(f"The batch store ({store.kind}) failed: {exc}") from None
    if report.bad:
        click.echo(f"load-batch: {report.bad:,} bad lines skipped; the first {len(report.first_bad)}:", err=True)
        for line in report.first_bad:
            click.echo(f"  {line}", err=True)
    click.echo(report.summary(uri))
