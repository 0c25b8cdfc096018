.PHONY: run test lint bench

run:  ## set up and start the product (SQLite), printing the admin password and URL
	bash scripts/run.sh

test:  ## install what the tests need and run the whole suite (SQLite + PostgreSQL)
	bash scripts/test.sh

lint:
	.venv/bin/ruff check app tests bench config.py wsgi.py
	.venv/bin/mypy app/services app/engines app/connector app/security.py

bench:  ## every benchmark (the fan-out one starts 50 nginx nodes: a few minutes)
	.venv/bin/python bench/api_latency.py
	.venv/bin/python bench/render.py
	.venv/bin/python bench/ssh_pool.py
	.venv/bin/python bench/deploy_fanout.py
