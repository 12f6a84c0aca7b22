# The sglang-cached proxy: SGLang's API with a response cache in front of it.
#   docker build -t sglang-cached .
#   docker run --rm -p 127.0.0.1:30001:30001 sglang-cached \
#       start --host 0.0.0.0 --port 30001 --sglang-url http://HOST:30000 --store memory
# docker-compose.gpu.yml builds this image and points it at its sglang and redis services.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Install the package from this checkout (not from PyPI), so the image runs the code it was built from.
WORKDIR /src
COPY pyproject.toml README.md ./
COPY sglang_client/ ./sglang_client/
# The gateway extra adds smg (SGLang's Model Gateway): the compose file's gateway runs this image.
RUN pip install --no-cache-dir '.[server,redis,gateway]'

# A fixed numeric uid lets orchestrators verify runAsNonRoot; /data holds the SQLite store.
RUN useradd --create-home --uid 10001 --user-group sglang \
    && mkdir -p /data \
    && chown sglang:sglang /data
USER 10001:10001
WORKDIR /data

EXPOSE 30001

# The slim image has no curl; urlopen raises (exit 1) on a refused connection or any non-2xx answer.
HEALTHCHECK --interval=10s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:30001/health', timeout=3)"]

ENTRYPOINT ["sglang-cached"]
# Inside a container the proxy must listen on 0.0.0.0; publish it on 127.0.0.1 on the host.
CMD ["start", "--host", "0.0.0.0", "--port", "30001", "--sglang-url", "http://sglang:30000", \
     "--store", "sqlite", "--cache-path", "/data"]
