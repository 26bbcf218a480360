# One entry point for routine tasks. The README's two commands are ./scripts/run.sh and ./scripts/test.sh.
.PHONY: run test unit integration lint fmt bench clean-db

run:
	./scripts/run.sh

test:
	./scripts/test.sh

lint:
	./scripts/bootstrap.sh && .venv/bin/ruff check . && .venv/bin/ruff format --check . && ./scripts/typecheck.sh

unit:
	./scripts/bootstrap.sh && .venv/bin/pytest -q -m unit

integration:
	./scripts/bootstrap.sh && .venv/bin/pytest -m integration -n 3 --dist loadfile

fmt:
	./scripts/bootstrap.sh && .venv/bin/ruff format . && .venv/bin/ruff check --fix .

bench:
	./scripts/bootstrap.sh && .venv/bin/pip install -q -e '.[test,bench]' && .venv/bin/python bench/ingest_bench.py --repeat 3

clean-db:
	.venv/bin/spanmeter db stop; rm -rf .spanmeter
