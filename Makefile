# The two commands of the README. Each creates the environment when it is missing.
#   make demo   IterIT on the demo pool with SmolLM2-135M-Instruct (local Ray, CPU is fine)
#   make test   lint + the test suite (what .ci/run calls)
#   make reliability   the slow cases: fault injection, the multi-node cluster

VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test reliability lint bench clean

demo: $(STAMP)
	$(PY) jobs/iterit.py

test: $(STAMP)
	$(PY) -m ruff check raysel jobs tests benchmarks
	$(PY) -m pytest -q -m "not reliability" --durations=15

# The slow cases: faults injected through the job, the bad-input matrix, the multi-node cluster.
reliability: $(STAMP)
	$(PY) -m pytest -q -m reliability --durations=0

bench: $(STAMP)
	$(PY) benchmarks/scoring.py
	$(PY) benchmarks/selection.py

# torch is held at the CPU wheel (constraints.txt) so that nothing pulls the CUDA build;
# DeepSpeed compiles its few ops on first use instead of at install.
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q -c constraints.txt torch==2.13.0
	DS_BUILD_OPS=0 $(PY) -m pip install -q -c constraints.txt -e '.[cpu,dev]'
	touch $(STAMP)

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
