# stoq image: the CLI and the Celery workers (`celery -A stoq worker`). Not built in CI: Docker does
# not run on the project's machines; the same topology runs without Docker (see docs/architecture.md).
FROM python:3.11-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends libmagic1 file p7zip-full libarchive-tools unar gnupg libimage-exiftool-perl \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/stoq
COPY pyproject.toml README.md celeryconfig.py manage.py ./
COPY stoq ./stoq
COPY plugins ./plugins
# Workers and clients run as `stoq` (uid 10001), never as root: a worker parses hostile files, and
# Celery warns against root workers. /data (the archive volume) belongs to it, and dirmon's volumes (/incoming, /incoming-done).
RUN pip install --no-cache-dir '.[flower,s3,mongodb]' && useradd --create-home --uid 10001 stoq && mkdir -p /data /incoming /incoming-done \
    && chown stoq /data /incoming /incoming-done
USER stoq
ENTRYPOINT ["stoq"]
