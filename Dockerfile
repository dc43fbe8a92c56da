# posmon's image: one image for the scorer (`posmon run`, the default command) and the pager
# (`posmon dispatch`), with the shipped anomaly model inside (package data).
#
#   docker build -t posmon:0.1.0 .
#   docker run --read-only --tmpfs /tmp -p 9464:9464 posmon:0.1.0 run --bootstrap-servers kafka:9092
#
# It runs as a numeric non-root user, writes nothing outside /tmp (a read-only root filesystem
# works: mount /tmp as an emptyDir), and never writes bytecode at run time: the build compiles it.
# `make test` lints this file with hadolint (tests/test_dockerfile.py).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY monitor ./monitor
COPY models ./models
# A virtual environment at the path it keeps in the final image; the check proves the entry
# point and the shipped model load.
RUN python -m venv /opt/posmon \
    && /opt/posmon/bin/pip install --no-cache-dir --disable-pip-version-check . \
    && /opt/posmon/bin/posmon schema alert > /dev/null \
    && /opt/posmon/bin/python -c "from monitor.cli.anomaly import DEFAULT_MODEL; from monitor.scoring.model import load_model; load_model(DEFAULT_MODEL)"

FROM ${PYTHON_IMAGE}
ENV PATH=/opt/posmon/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    MPLCONFIGDIR=/tmp
COPY --from=build /opt/posmon /opt/posmon
USER 10001:10001
WORKDIR /tmp
EXPOSE 9464
# `/healthz` of `posmon run` (and of `posmon dispatch` on its port): the loop is turning.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:9464/healthz', timeout=4).status != 200)"]
ENTRYPOINT ["posmon"]
CMD ["run"]
