# proxyd node image: Python 3.11 on Debian 12 with the data-path tools proxyd drives
# (iptables with both the nft and legacy variants, ipset, conntrack, iproute2).
#   docker build -t proxyd:0.1.0 .
# daemonset.yaml runs it as uid 0 with only NET_ADMIN and NET_RAW; see docs/deploy.md.

FROM python:3.11.9-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY proxyd ./proxyd
RUN pip install --no-cache-dir --no-compile --prefix=/install .

FROM python:3.11.9-slim-bookworm
LABEL org.opencontainers.image.title="proxyd" \
      org.opencontainers.image.description="Node-level kube-proxy replacement with topology-aware routing" \
      org.opencontainers.image.licenses="Apache-2.0"
# Debian 12 package versions, pinned: the restore syntax and nft/legacy detection are
# tested against these.
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      iptables=1.8.9-2 \
      ipset=7.17-1 \
      conntrack=1:1.4.7-1+b2 \
      iproute2=6.1.0-3 \
      kmod=30+20221128-1 \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /install /usr/local
# The image's default user cannot touch the data path: `proxyd plan`/`explain` need no
# privileges. `proxyd run` needs CAP_NET_ADMIN (iptables-restore, ipset, conntrack and
# IPVS all go through netlink/setsockopt calls the kernel reserves for it) and CAP_NET_RAW;
# daemonset.yaml therefore runs it as uid 0 with only those two capabilities.
RUN groupadd --system --gid 10256 proxyd \
 && useradd --system --uid 10256 --gid 10256 --no-create-home --shell /usr/sbin/nologin proxyd
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
USER 10256:10256
ENTRYPOINT ["proxyd", "run"]
