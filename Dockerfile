# ustack in a container: run ustack, or your own test suite against it with the pytest
# plugin (`ustack_host` fixture).
#
#   docker build -t ustack .
#   # The container's own network namespace (Docker's default seccomp profile forbids
#   # creating more): TUN needs NET_ADMIN and the device.
#   docker run --rm --cap-add NET_ADMIN --device /dev/net/tun ustack
#   # A fresh namespace per test (unshare needs SYS_ADMIN; some engines also need
#   # --security-opt seccomp=unconfined):
#   docker run --rm --cap-add NET_ADMIN --cap-add SYS_ADMIN --device /dev/net/tun ustack
#   # Your own tests: mount them and run pytest on them.
#   docker run --rm --cap-add NET_ADMIN --device /dev/net/tun -v "$PWD/tests:/tests" \
#       ustack python -m pytest /tests
FROM python:3.11-slim-bookworm

RUN apt-get update \
    && apt-get install -y --no-install-recommends iproute2 tcpdump \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /src
COPY pyproject.toml README.md ./
COPY ustack ./ustack
COPY examples ./examples
RUN pip install --no-cache-dir '.[test]'

# USTACK_REQUIRE_NETNS=1: a missing capability or device fails the run instead of skipping.
ENV USTACK_REQUIRE_NETNS=1
CMD ["python", "-m", "pytest", "-q", "-p", "no:cacheprovider", "examples"]
