# The service under gunicorn, as a non-root user. Build: docker build -t braze-recs .
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PORT=8000
WORKDIR /srv

COPY requirements.txt .
RUN pip install --no-cache-dir --disable-pip-version-check -r requirements.txt

COPY app ./app
COPY sample ./sample
COPY wsgi.py gunicorn.conf.py ./

# The one folder the service writes (DATA_DIR's default, ./data): its user's alone, as the service requires.
RUN useradd --system --uid 10001 --no-create-home recs && install -d -o recs -g recs -m 0700 /srv/data
USER recs
VOLUME /srv/data

EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=3s CMD python -c "import os,urllib.request; urllib.request.urlopen(f'http://127.0.0.1:{os.environ.get(\"PORT\", \"8000\")}/healthz', timeout=2)"
CMD ["gunicorn", "wsgi:app"]
