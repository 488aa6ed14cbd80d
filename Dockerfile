# gradserve server image (CPU). For CUDA, build FROM an nvidia/cuda runtime image and
# install a CUDA build of torch after the constraints install.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app

COPY constraints.txt pyproject.toml README.md ./
COPY service ./service
RUN pip install -c constraints.txt --extra-index-url https://download.pytorch.org/whl/cpu . \
    && useradd --system --uid 10001 gradserve

USER gradserve
EXPOSE 8000 8001
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s \
    CMD python -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/readyz').status == 200 else 1)"
# SIGTERM starts the drain: readiness 503, queued work finishes, then exit.
STOPSIGNAL SIGTERM
ENTRYPOINT ["gradserve", "serve"]
