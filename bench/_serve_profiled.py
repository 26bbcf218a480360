"""Run ``spanmeter serve`` (exactly ``spanmeter.cli.main(["serve", ...])``) with the bench's stage timers.

    python bench/_serve_profiled.py [--no-instrument] -- serve --otlp-endpoint 127.0.0.1:4317 ...

See _profiler.py: a few functions are wrapped with CPU/wall timers in this process only; windows are opened
and closed with ``start`` / ``stop PATH`` lines on stdin.

``BENCH_SERVE_PRELOAD=/path/a.py:/path/b.py`` runs those files first (before the timers are installed): a way
to try a product change on a private copy (monkeypatching spanmeter in this process) without editing the repo.
"""

from __future__ import annotations

import os
import runpy
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _profiler import Profiler, control_from_stdin, instrument_spanmeter


def main() -> int:
    argv = sys.argv[1:]
    instrument = True
    if argv[:1] == ["--no-instrument"]:
        instrument = False
        argv = argv[1:]
    if argv[:1] == ["--"]:
        argv = argv[1:]
    for path in filter(None, os.environ.get("BENCH_SERVE_PRELOAD", "").split(":")):
        runpy.run_path(path, run_name="bench_preload")
        print(f"bench: preloaded {path}", file=sys.stderr, flush=True)
    if instrument:
        instrument_spanmeter()
    control_from_stdin(Profiler())
    from spanmeter.cli import main as spanmeter_main

    return spanmeter_main(argv)


if __name__ == "__main__":
    raise SystemExit(main())
