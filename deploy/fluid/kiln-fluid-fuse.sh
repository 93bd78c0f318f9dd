#!/bin/sh
# Fluid ThinRuntime FUSE entry point for kiln cache: reads the mount configuration Fluid writes
# (/etc/fluid/config/config.json: targetPath, the Dataset's mounts with their options, and the
# encrypt options as paths of files holding the secret values), turns it into kiln cache's
# KILN_CACHE_* / AWS_* environment and runs `kiln cache mount` at the target path in the
# foreground. Installed in the image as /usr/local/bin/kiln-fluid-fuse (deploy/docker/Dockerfile).
#
# Dataset mount options (spec.mounts[0].options, or sharedOptions):
#   endpoint, region                          -> KILN_CACHE_ENDPOINT, KILN_CACHE_REGION
#   access-key-id, secret-access-key          -> AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY
#     (encryptOptions: Fluid passes the path of the mounted Secret key; the value is read here)
# ThinRuntime fuse options (spec.fuse.options, config.json's runtimeOptions):
#   cache-dir, memory-size, disk-size, block-size, metadata-ttl, read-timeout, fuse-threads,
#   admin-addr                                -> the KILN_CACHE_* variable of the same name
# Values from the config file override the container's environment.
set -eu

CONFIG=${FLUID_CONFIG:-/etc/fluid/config/config.json}
KILN=${KILN_BIN:-kiln}

die() { echo "kiln-fluid-fuse: $*" >&2; exit 1; }

[ -r "$CONFIG" ] || die "cannot read $CONFIG"
command -v jq >/dev/null 2>&1 || die "jq is required"

n=$(jq '.mounts | length' "$CONFIG")
[ "$n" = 1 ] || die "the Dataset must have exactly one mount (it has $n): kiln cache mounts one source"

target=$(jq -r '.targetPath // empty' "$CONFIG")
[ -n "$target" ] || target=${MOUNT_POINT:-}
[ -n "$target" ] || die "no targetPath in $CONFIG and no MOUNT_POINT"

KILN_CACHE_SOURCE=$(jq -r '.mounts[0].mountPoint // empty' "$CONFIG")
[ -n "$KILN_CACHE_SOURCE" ] || die "mounts[0].mountPoint is empty"
export KILN_CACHE_SOURCE

# mount option $1, or empty
opt() { jq -r --arg k "$1" '.mounts[0].options[$k] // empty' "$CONFIG"; }
# runtime (ThinRuntime fuse) option $1, or empty
ropt() { jq -r --arg k "$1" '.runtimeOptions[$k] // empty' "$CONFIG"; }
# the contents of the file named by mount option $1 (an encrypt option), or empty
secret() {
  f=$(opt "$1")
  [ -z "$f" ] && return 0
  [ -r "$f" ] || die "option $1: cannot read $f"
  cat "$f"
}

v=$(opt endpoint); [ -z "$v" ] || export KILN_CACHE_ENDPOINT="$v"
v=$(opt region); [ -z "$v" ] || export KILN_CACHE_REGION="$v"
v=$(secret access-key-id); [ -z "$v" ] || export AWS_ACCESS_KEY_ID="$v"
v=$(secret secret-access-key); [ -z "$v" ] || export AWS_SECRET_ACCESS_KEY="$v"

for name in cache-dir memory-size disk-size block-size metadata-ttl read-timeout fuse-threads admin-addr; do
  v=$(ropt "$name")
  [ -z "$v" ] && continue
  var=KILN_CACHE_$(echo "$name" | tr 'a-z-' 'A-Z_')
  [ "$var" = KILN_CACHE_CACHE_DIR ] && var=KILN_CACHE_DIR
  export "$var=$v"
done

# other pods (the Dataset's consumers) read the mount
export KILN_CACHE_ALLOW_OTHER=true
mkdir -p "$target"
exec "$KILN" cache mount "$target"
