# The server image: `docker build -t acs-trio . && docker run --env-file acs.env -p 8000:8000 acs-trio`
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY acs_trio ./acs_trio
RUN python -m pip install --no-cache-dir . && useradd --system --uid 10001 app
USER app
EXPOSE 8000
# SIGTERM drains: readyz turns 503, live calls get SHUTDOWN_GRACE_S, then are hung up.
STOPSIGNAL SIGTERM
CMD ["python", "-m", "acs_trio", "serve", "--host", "0.0.0.0", "--port", "8000"]
