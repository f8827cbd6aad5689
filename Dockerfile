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
# torch comes from the base image (the engine runs on torch 2.11): install every other dependency
# from pyproject.toml, then the project itself without letting pip replace torch.
RUN python -c "import tomllib; deps = tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']; \
open('/tmp/requirements.txt', 'w').write(chr(10).join(d for d in deps if not d.startswith('torch')))" && \
    pip install -r /tmp/requirements.txt && \
    pip install --no-deps -e .
RUN useradd --create-home vidq
USER vidq
EXPOSE 8000
CMD ["vidq", "api", "--host", "0.0.0.0", "--port", "8000"]
