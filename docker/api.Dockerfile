# The API image: `vidq api`, `vidq migrate`, `vidq keys ...`. No torch and no CUDA: the API only
# validates requests against the model registry (`pip install .`, without the [engine] extra).
FROM python:3.12-slim

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src

# Dependencies first, from pyproject.toml alone: a code change does not reinstall them.
COPY pyproject.toml docker/requirements.py ./
RUN python requirements.py > /tmp/requirements.txt \
    && pip install --no-cache-dir -r /tmp/requirements.txt

# Then the project itself, as a regular (non-editable) install; the source folder is removed.
# (.dockerignore leaves out tests, benchmarks and local state.)
COPY . .
RUN pip install --no-cache-dir --no-deps . \
    && rm -rf /src \
    && useradd --create-home --uid 10001 vidq

WORKDIR /home/vidq
USER 10001
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=5s --retries=10 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz')"]
CMD ["vidq", "api", "--host", "0.0.0.0", "--port", "8000"]
