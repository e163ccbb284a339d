# The jamins name server: slim, pinned base, non-root, with a healthcheck.
# Secrets (signer key, database password) come from the environment or mounted files at
# run time; nothing secret is copied into the image.
FROM python:3.11.13-slim-bookworm AS build

ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY app ./app
COPY contracts ./contracts
COPY migrations ./migrations
# The same install as `make install`, without the editable mode and the test tools.
RUN python -m venv /opt/jamins \
 && /opt/jamins/bin/python -m pip install --quiet --upgrade pip \
 && /opt/jamins/bin/python -m pip install --quiet .

FROM python:3.11.13-slim-bookworm

COPY --from=build /opt/jamins /opt/jamins
RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/jamins --create-home jamins
USER jamins
WORKDIR /var/lib/jamins
ENV PATH=/opt/jamins/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    JAMINS_DATA_DIR=/var/lib/jamins
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
  CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=4).status != 200)"]
CMD ["jamins", "serve", "--host", "0.0.0.0", "--port", "8080"]
