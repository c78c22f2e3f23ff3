# One image for every role (Prefect server, API, worker); the command picks the role.
# Every role runs as the unprivileged user `dspy`, which owns its home and /shared (a
# named volume mounted there starts with this ownership).
FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 LITELLM_LOCAL_MODEL_COST_MAP=True PREFECT_SERVER_ANALYTICS_ENABLED=false
WORKDIR /app
COPY pyproject.toml README.md prefect.yaml ./
COPY dspy_service ./dspy_service
COPY api ./api
COPY flows ./flows
COPY tasks ./tasks
COPY deployments ./deployments
RUN pip install --no-cache-dir '.[postgres]'
# bubblewrap: every job's engine runs in a sandbox (deployments/runtime/sandbox.py).
RUN apt-get update && apt-get install -y --no-install-recommends bubblewrap && rm -rf /var/lib/apt/lists/*
RUN useradd --create-home --uid 10001 dspy && mkdir -p /shared /home/dspy/.prefect/ui \
    && chown -R dspy:dspy /shared /home/dspy
USER dspy
# The Prefect server copies its UI into a writable directory at start (site-packages is root's).
ENV HOME=/home/dspy PREFECT_HOME=/home/dspy/.prefect DSPY_SERVICE_HOME=/home/dspy/.dspy-service \
    PREFECT_UI_STATIC_DIRECTORY=/home/dspy/.prefect/ui
