# Two commands on a fresh machine: `make run` (the service on the sample data) and `make test`.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed-$(shell cat requirements.txt requirements-dev.txt | cksum | cut -d' ' -f1)
# The oldest Python the code runs on (it uses 3.11's datetime.UTC); the Docker image has 3.11 too.
MIN_PYTHON := 3.11
IS_NEW_ENOUGH := -c 'import sys; sys.exit(sys.version_info < tuple(map(int, "$(MIN_PYTHON)".split("."))))'

.PHONY: run test test-fast install check-python

install: $(STAMP)

# A .venv made by an older Python would make every later command fail with a SyntaxError and no hint.
check-python:
	@if [ -e $(VENV) ] && ! $(VENV)/bin/python $(IS_NEW_ENOUGH) 2>/dev/null; then \
		echo "$(VENV) was made by $$($(VENV)/bin/python --version 2>/dev/null || echo 'a Python that is gone'), but" \
			"this service needs Python $(MIN_PYTHON) or newer: remove it with 'rm -rf $(VENV)' and run make" \
			"again (add PYTHON=python$(MIN_PYTHON) if $(PYTHON) is older)." >&2; \
		exit 1; \
	fi
	@if [ ! -e $(VENV) ] && ! $(PYTHON) $(IS_NEW_ENOUGH) 2>/dev/null; then \
		echo "$(PYTHON) is $$($(PYTHON) --version 2>/dev/null || echo 'missing'), but this service needs Python" \
			"$(MIN_PYTHON) or newer: install it and run e.g. 'make PYTHON=python$(MIN_PYTHON)'." >&2; \
		exit 1; \
	fi

$(STAMP): requirements.txt requirements-dev.txt | check-python
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	rm -f $(VENV)/.installed-* && touch $@

# The bundled sample: a 40-item catalog and a Personalize batch inference output for 20 users.
run: $(STAMP)
	env -u PERSONALIZE_CAMPAIGN_ARN CATALOG_URI=sample/catalog.csv RECOMMENDATIONS_URI=sample/batch-output.json.out \
	$(VENV)/bin/gunicorn wsgi:app

test: $(STAMP)
	$(VENV)/bin/python -m pytest

# Quick feedback while coding: every tier but e2e (which starts gunicorn many times over).
test-fast: $(STAMP)
	$(VENV)/bin/python -m pytest --ignore=tests/e2e
