#!/usr/bin/env bash
# Installs Debian's mosquitto and mosquitto-clients when missing (the broker e2e tests run a real broker).
# The package's service is never started: tests start their own brokers on loopback.
set -euo pipefail
if command -v mosquitto >/dev/null 2>&1 || [[ -x /usr/sbin/mosquitto ]]; then
  if command -v mosquitto_pub >/dev/null 2>&1; then exit 0; fi
fi
echo "[ensure-mosquitto] installing mosquitto and mosquitto-clients from Debian" >&2
SUDO=""; [[ $(id -u) -eq 0 ]] || SUDO=sudo
export DEBIAN_FRONTEND=noninteractive
# policy-rc.d 101 = "do not start services from maintainer scripts"
if [[ ! -e /usr/sbin/policy-rc.d ]]; then
  printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null; $SUDO chmod +x /usr/sbin/policy-rc.d
  trap '$SUDO rm -f /usr/sbin/policy-rc.d' EXIT
fi
$SUDO apt-get update -qq >/dev/null || echo "[ensure-mosquitto] apt-get update failed; trying the cached lists" >&2
$SUDO apt-get install -y -qq --no-install-recommends mosquitto mosquitto-clients >/dev/null
/usr/sbin/mosquitto -h 2>&1 | head -1 >&2 || true
