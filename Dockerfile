# evlink's image: the runtime and the playground's bundles, no dev tools, run as a user
# of its own. The same steps as `make install` without `.[dev]`:
#   python -m evlink.playground.vendor   (npm ci of the pinned bundles)
#   pip install .                        (evlink and its runtime dependencies)
# Build from the repository's root: `docker build -t evlink .` (docs/compose.yaml does).

# 1. The playground's bundles: npm ci of assets/playground/, copied into the package.
FROM node:20-bookworm-slim AS playground
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY assets/playground/ assets/playground/
COPY evlink/ evlink/
RUN python3 -m evlink.playground.vendor

# 2. evlink and its runtime dependencies in a virtualenv, bundles included.
FROM python:3.11-slim AS build
RUN python -m venv /opt/evlink
WORKDIR /src
COPY pyproject.toml README.md ./
COPY evlink/ evlink/
COPY --from=playground /src/evlink/playground/static/vendor/ evlink/playground/static/vendor/
RUN /opt/evlink/bin/pip install --no-cache-dir --upgrade pip \
    && /opt/evlink/bin/pip install --no-cache-dir .

# 3. What runs: the virtualenv alone, as an unprivileged user.
FROM python:3.11-slim
RUN useradd --create-home --uid 10001 evlink
COPY --from=build /opt/evlink /opt/evlink
ENV PATH=/opt/evlink/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    EVLINK_HOST=0.0.0.0
USER evlink
# The default SQLite database is var/evlink.sqlite3 here; use PostgreSQL beyond one machine.
WORKDIR /home/evlink
EXPOSE 8000
CMD ["evlink", "serve"]
