.PHONY: serve model test ci mutate fuzz-long soak-long
serve:  ## install and start the server on http://127.0.0.1:8000 (SQLite in ./var)
	./scripts/serve.sh
model:  ## install the model side (pinned CPU PyTorch, then .[model,data]) to play against a model listener
	./scripts/setup.sh --model
test:  ## install test dependencies, start PostgreSQL if needed, run the whole suite (CI=1: skips fail)
	./scripts/test.sh
ci:  ## what CI runs: the whole suite with CI=1 (any skip not allow-listed in tests/conftest.py fails)
	./.ci/run
mutate:  ## mutation testing (mutmut, [tool.mutmut] in pyproject.toml); MUTANTS="app.game.rules*" narrows it
	./scripts/setup.sh --test && .venv/bin/pip install -q -e ".[mutate]"
	HYPOTHESIS_PROFILE=mutate HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 .venv/bin/mutmut run --max-children $${MUTATE_JOBS:-2} $(MUTANTS) || true
	.venv/bin/mutmut results
	.venv/bin/mutmut export-cicd-stats >/dev/null && cat mutants/mutmut-cicd-stats.json
fuzz-long:  ## the fuzzing suite's long mode: 10,000 websocket sequences, 500 HTTP cases per operation
	MULTIREF_FUZZ_EXAMPLES=10000 MULTIREF_FUZZ_API_EXAMPLES=500 ./scripts/test.sh tests/test_fuzz.py -p no:cacheprovider
	cat test-artifacts/fuzz-summary.txt
soak-long:  ## 200 concurrent bot games for 30 minutes against a real server (bench/soak.py --long)
	./scripts/setup.sh --test && .venv/bin/python bench/soak.py --long
