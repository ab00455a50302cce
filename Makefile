# The two commands of the README, plus a few conveniences.
# Arguments for the script behind a target go in ARGS, e.g. `make bench ARGS=--quick` or
# `make test ARGS="-k browser"` (make itself has no --quick option).
.PHONY: run test bench bench-quick kafka-start kafka-stop lint schema docs help
ARGS ?=

run:        ## local Kafka + gateway in dev mode (with its dev token issuer); prints the demo URL
	bash scripts/run.sh

test:       ## lint, type-check and run every test against a real Kafka broker (pytest options: ARGS=...)
	bash scripts/test.sh $(ARGS)

bench:      ## benchmarks against the real broker and a baseline (options: ARGS=--quick, ARGS="--only 3")
	bash scripts/bench.sh $(ARGS)

bench-quick: ## the same at small scale, about 2 minutes (= make bench ARGS=--quick)
	bash scripts/bench.sh --quick $(ARGS)

kafka-start:
	bash scripts/kafka.sh start

kafka-stop:
	bash scripts/kafka.sh stop

lint:
	.venv/bin/ruff check . && .venv/bin/ruff format --check . && .venv/bin/mypy

docs:       ## regenerate docs/configuration.md from the settings (a test fails when it is stale)
	.venv/bin/python -m gateway.cli.configuration_reference

schema:     ## regenerate schemas/session-status.schema.json from the pydantic models
	.venv/bin/python -m schemas

help:       ## this list
	@grep -E '^[a-z-]+:.*## ' Makefile | sed 's/:.*## /\t/'
