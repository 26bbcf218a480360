"""A broker that needs no system service: kombu's SQLAlchemy transport on the demo's PostgreSQL.

Two adjustments to kombu's transport, registered as the ``docpipe-sqla`` URL scheme
(``docpipe-sqla+postgresql+psycopg://…``):

- it polls every 0.1 s instead of every second (kombu would pass a ``polling_interval`` transport
  option on to ``create_engine`` and fail);
- its engine cache is per process: kombu caches engines per URL at class level, and a pooled connection
  inherited through Celery's prefork ``fork()`` must never be used by two processes.
"""

from __future__ import annotations

import os
from typing import ClassVar

from kombu.transport import TRANSPORT_ALIASES
from kombu.transport import sqlalchemy as kombu_sqla

__all__ = ["Channel", "Transport"]

SCHEME = "docpipe-sqla"


class Channel(kombu_sqla.Channel):
    _engines_by_pid: ClassVar[dict[tuple[int, str], tuple]] = {}

    def _open(self):
        key = (os.getpid(), self.connection.client.hostname)
        if key not in self._engines_by_pid:
            with kombu_sqla._MUTEX:
                if key not in self._engines_by_pid:
                    engine = self._engine_from_config()
                    kombu_sqla.metadata.create_all(engine)
                    self._engines_by_pid[key] = engine, kombu_sqla.sessionmaker(bind=engine)
        return self._engines_by_pid[key]


class Transport(kombu_sqla.Transport):
    Channel = Channel
    polling_interval = 0.1


TRANSPORT_ALIASES.setdefault(SCHEME, f"{__name__}:Transport")
