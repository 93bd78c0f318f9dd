#!/usr/bin/env bash
# Installs the Debian packages the build needs when they are missing (needs root or sudo):
# a C compiler and linker, and what rdkafka's bundled librdkafka (feature cmake-build) is built
# with: cmake, a C++ compiler, and the zlib and curl headers (wanted even with curl support off);
# and Prometheus and Alertmanager (promtool, amtool) for the alert-rule and monitoring tests.
# Does nothing when everything is present. Called by scripts/serve.sh and scripts/test.sh.
set -euo pipefail

have_deb() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }

missing=()
command -v cc >/dev/null 2>&1 || missing+=(gcc libc6-dev)
command -v cmake >/dev/null 2>&1 || missing+=(cmake)
command -v g++ >/dev/null 2>&1 || missing+=(g++)
if command -v dpkg-query >/dev/null 2>&1; then
  have_deb zlib1g-dev || missing+=(zlib1g-dev)
  have_deb libcurl4-openssl-dev || missing+=(libcurl4-openssl-dev)
fi
# promtool and amtool check the alert rules; the monitoring test runs Prometheus and Alertmanager
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
command -v amtool >/dev/null 2>&1 || missing+=(prometheus-alertmanager)
# jq: the Fluid FUSE entry point (deploy/fluid/kiln-fluid-fuse.sh) and its test
command -v jq >/dev/null 2>&1 || missing+=(jq)
[ ${#missing[@]} -eq 0 ] && exit 0

sudo=()
if [ "$(id -u)" != 0 ]; then
  if command -v sudo >/dev/null 2>&1; then
    sudo=(sudo)
  else
    echo "setup-system.sh: missing Debian packages: ${missing[*]} (install them as root)" >&2
    exit 1
  fi
fi
echo "setup-system.sh: installing Debian packages: ${missing[*]}" >&2
"${sudo[@]}" apt-get update -qq
DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
