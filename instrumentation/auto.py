"""The one import: ``import spanmeter.instrumentation.auto``.

Put it at the top of ``settings.py`` (Django) and of the module that defines the Celery app. It calls
:func:`spanmeter.instrumentation.bootstrap.instrument` once per process (importing it again is harmless);
``spanmeter.instrumentation.uninstrument()`` undoes it. See :mod:`spanmeter.instrumentation` for the
guide and :mod:`.config` for the settings.
"""

from __future__ import annotations

from .bootstrap import instrument, uninstrument

__all__ = ["instrument", "uninstrument"]

instrument()
