# `make run`: export, fold, verify and benchmark the built-in default model.
# `make test`: ruff, mypy and the test suite. Both create .venv on first use.
# `make test-fast`: ruff, mypy and the tests not marked slow (no zoo exports, no fresh-process README runs).
# `make fuzz`: the property tests' long profile (FUZZ_EXAMPLES per test); summary in benchmarks/results/fuzz.txt.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PIP_FLAGS ?= --quiet --disable-pip-version-check

.PHONY: venv run test test-fast fuzz clean

$(STAMP): pyproject.toml constraints-cpu.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install $(PIP_FLAGS) --upgrade pip
	$(BIN)/python -m pip install $(PIP_FLAGS) -c constraints-cpu.txt -e '.[torch,ort,openvino,plot,dev]'
	touch $(STAMP)

venv: $(STAMP)

run: $(STAMP)
	$(BIN)/foldnorm bench

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/python -m pytest -q

test-fast: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/python -m pytest -q -m "not slow"

FUZZ_EXAMPLES ?= 1000
FUZZ_OUT := benchmarks/results/fuzz.txt
RULE_PROPERTIES := tests/fold/rules/test_rep_branches.py::test_random_blocks_merge_or_refuse_with_a_reason

fuzz: $(STAMP)
	mkdir -p $(dir $(FUZZ_OUT))
	{ echo "make fuzz FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) ($$(date -u '+%Y-%m-%d %H:%M UTC'))"; \
	  FOLDNORM_FUZZ=1 FOLDNORM_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(BIN)/python -m pytest -q -p no:cacheprovider \
	    tests/fold/test_properties.py $(RULE_PROPERTIES) --hypothesis-show-statistics 2>&1; \
	  echo "exit status: $$?"; } \
	  > $(FUZZ_OUT).tmp
	mv $(FUZZ_OUT).tmp $(FUZZ_OUT)
	tail -n 3 $(FUZZ_OUT)
	grep -q "exit status: 0" $(FUZZ_OUT)

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache build *.egg-info
