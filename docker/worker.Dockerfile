# The GPU worker image: `vidq worker`. Built on PyTorch's CUDA runtime image, whose torch is kept
# (pip is told not to replace it); everything else comes from pyproject.toml with the [engine] extra.
FROM pytorch/pytorch:2.11.0-cuda13.0-cudnn9-runtime

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIDQ_MODELS_DIR=/models \
    HF_HOME=/models/huggingface
WORKDIR /src

# Dependencies first, from pyproject.toml alone: a code change does not reinstall them.
COPY pyproject.toml docker/requirements.py ./
RUN python requirements.py engine --without torch > /tmp/requirements.txt \
    && pip install --no-cache-dir -r /tmp/requirements.txt

# Then the project itself, as a regular (non-editable) install; the source folder is removed.
# (.dockerignore leaves out tests, benchmarks and local state.)
COPY . .
RUN pip install --no-cache-dir --no-deps . \
    && rm -rf /src \
    && useradd --create-home --uid 10001 vidq \
    && mkdir -p /models/huggingface \
    && chown -R vidq:vidq /models

# Model folders and the Hugging Face cache live here; a new named volume takes this ownership.
VOLUME /models
WORKDIR /home/vidq
USER 10001
EXPOSE 9101
CMD ["vidq", "worker"]
