# The server image (product only: .dockerignore leaves out acs_trio/testing and acs_trio/demo): `docker build -t acs-trio . && docker run --env-file acs.env -p 8000:8000 acs-trio`
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY acs_trio ./acs_trio
RUN python -m pip install --no-cache-dir . && useradd --system --uid 10001 app
USER app
ENV HOST=0.0.0.0 PORT=8000
EXPOSE 8000
# SIGTERM drains: readyz turns 503, live calls get SHUTDOWN_GRACE_S, then are hung up.
STOPSIGNAL SIGTERM
# HOST and PORT are read by the server itself, so `docker run -e PORT=9000` works as documented.
CMD ["python", "-m", "acs_trio", "serve"]
