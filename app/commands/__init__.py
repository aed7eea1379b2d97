"""Operator commands run with `flask --app wsgi COMMAND` (README): registered on the app by create_app."""
from __future__ import annotations

from flask import Flask

from app.commands.check_send import check_send
from app.commands.import_pinpoint import import_pinpoint
from app.commands.ingest_currents import ingest_currents
from app.commands.load_batch import load_batch


def register_commands(app: Flask) -> None:
    """Add the operator commands to `flask --app wsgi`."""
    app.cli.add_command(check_send)
    app.cli.add_command(import_pinpoint)
    app.cli.add_command(ingest_currents)
    app.cli.add_command(load_batch)
