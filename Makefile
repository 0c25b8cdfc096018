.PHONY: run test lint bench

run:  ## set up and start the product (SQLite), printing the admin password and URL
	bash scripts/run.sh

test:  ## install what the tests need and run the whole suite (SQLite + PostgreSQL)
	bash scripts/test.sh

lint:
	.venv/bin/ruff check app tests bench config.py wsgi.py
	.venv/bin/mypy app/services app/proxy app/connector app/security.py

bench:
	.venv/bin/python bench/api_latency.py
