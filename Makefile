.PHONY: serve model test fuzz-long soak-long
serve:  ## install and start the server on http://127.0.0.1:8000 (SQLite in ./var)
	./scripts/serve.sh
model:  ## install the model side (pinned CPU PyTorch, then .[model,data]) to play against a model listener
	./scripts/setup.sh --model
test:  ## install test dependencies, start PostgreSQL if needed, run the whole suite
	./scripts/test.sh
fuzz-long:  ## the fuzzing suite's long mode: 10,000 websocket sequences, 500 HTTP cases per operation
	MULTIREF_FUZZ_EXAMPLES=10000 MULTIREF_FUZZ_API_EXAMPLES=500 ./scripts/test.sh tests/test_fuzz.py -p no:cacheprovider
	cat test-artifacts/fuzz-summary.txt
soak-long:  ## 200 concurrent bot games for 30 minutes against a real server (bench/soak.py --long)
	./scripts/setup.sh --test && .venv/bin/python bench/soak.py --long
