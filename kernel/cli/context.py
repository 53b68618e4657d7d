"""What every command gets: the settings, a lazily resolved database, and output helpers."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import click

from kernel.db.connect import Database
from kernel.settings import Settings

__all__ = ["CliContext", "echo_json", "pass_cli"]


@dataclass
class CliContext:
    settings: Settings
    debug: bool = False
    _db: Database | None = field(default=None, repr=False)

    @classmethod
    def from_env(cls, *, debug: bool = False) -> CliContext:
        return cls(settings=Settings.from_env(), debug=debug)

    @property
    def db(self) -> Database:
        if self._db is None:
            self._db = Database(self.settings)
        return self._db


pass_cli = click.make_pass_decorator(CliContext)


def echo_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, sort_keys=True, default=str))
