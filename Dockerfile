# One image for every role (API, worker); the command picks the role.
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
