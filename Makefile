# The two commands of the README, plus a few conveniences.
.PHONY: run test bench kafka-start kafka-stop lint schema

run:        ## local Kafka + dev token issuer + gateway in dev mode; prints the demo URL
	bash scripts/run.sh

test:       ## lint, type-check and run every test against a real Kafka broker
	bash scripts/test.sh

bench:      ## benchmarks against the real broker and a baseline, prints figures
	bash scripts/bench.sh

kafka-start:
	bash scripts/kafka.sh start

kafka-stop:
	bash scripts/kafka.sh stop

lint:
	.venv/bin/ruff check . && .venv/bin/ruff format --check . && .venv/bin/mypy

schema:     ## regenerate schemas/session-status.schema.json from the pydantic models
	.venv/bin/python -m schemas
