# `make run`: export, fold, verify and benchmark the built-in default model.
# `make test`: ruff, mypy and the test suite. Both create .venv on first use.
# `make test-fast`: ruff, mypy and the tests not marked slow (no zoo exports, no fresh-process README runs).
# `make fuzz`: the long profiles of the fold property tests (FUZZ_EXAMPLES per test; summary in
# benchmarks/results/fuzz.txt) and of the hostile-model fuzzer (HOSTILE_FUZZ_EXAMPLES; hostile_fuzz.txt).
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
HOSTILE_FUZZ_EXAMPLES ?= 5000
RULE_PROPERTIES := tests/fold/rules/test_rep_branches.py::test_random_blocks_merge_or_refuse_with_a_reason

# $(call fuzz_run,SUMMARY FILE,EXAMPLES,TESTS): the long hypothesis profile of TESTS, its statistics in SUMMARY FILE.
define fuzz_run
	mkdir -p $(dir $(1))
	{ echo "make fuzz: $(3) with $(2) examples per test ($$(date -u '+%Y-%m-%d %H:%M UTC'))"; \
	  FOLDNORM_FUZZ=1 FOLDNORM_FUZZ_EXAMPLES=$(2) $(BIN)/python -m pytest -q -p no:cacheprovider \
	    $(3) --hypothesis-show-statistics 2>&1; echo "exit status: $$?"; } > $(1).tmp
	mv $(1).tmp $(1)
	tail -n 3 $(1)
	grep -q "exit status: 0" $(1)
endef

fuzz: $(STAMP)
	$(call fuzz_run,benchmarks/results/fuzz.txt,$(FUZZ_EXAMPLES),tests/fold/test_properties.py $(RULE_PROPERTIES))
	$(call fuzz_run,benchmarks/results/hostile_fuzz.txt,$(HOSTILE_FUZZ_EXAMPLES),tests/hostile/test_fuzz.py)

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache build *.egg-info
