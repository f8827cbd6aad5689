# The vidq image: API and worker share it (`vidq api`, `vidq worker`).
# Built on the PyTorch CUDA runtime so the worker finds the GPU; the API simply never touches it.
FROM pytorch/pytorch:2.11.0-cuda13.0-cudnn9-runtime

ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY pyproject.toml README.md alembic.ini ./
COPY api api
COPY worker worker
COPY engine engine
COPY jobs jobs
COPY vidq vidq
COPY migrations migrations
# torch comes from the base image; install the rest without replacing it.
RUN pip install --no-deps -e . && \
    pip install "$(python -c 'import tomllib;d=tomllib.load(open("pyproject.toml","rb"));print(" ".join(x for x in d["project"]["dependencies"] if not x.startswith("torch")))' | tr ' ' '\n' | xargs)"
RUN useradd --create-home vidq
USER vidq
EXPOSE 8000
CMD ["vidq", "api", "--host", "0.0.0.0", "--port", "8000"]
