.PHONY: serve test test-long bench
serve:  ## install and start the server on http://127.0.0.1:8000 (SQLite in ./var)
	./scripts/serve.sh
test:  ## install test dependencies, start PostgreSQL if needed, run the whole suite
	./scripts/test.sh
