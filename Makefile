# Two commands on a fresh machine: `make run` (the service on the sample data) and `make test`.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed-$(shell cat requirements.txt requirements-dev.txt | cksum | cut -d' ' -f1)

.PHONY: run test test-fast install

install: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt
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
