#!/usr/bin/env bash
# Installs every Debian package that jimbot-infra needs to build, run and test.
#
# Idempotent and quiet: when everything is already installed it prints nothing
# and touches nothing. Called by `make run` and `make test`, so both work on a
# fresh Debian machine as root. Services that packages would start on install
# (redis-server, nats-server) are kept from starting: tests start their own
# servers on loopback in temporary folders.
set -euo pipefail

packages=(
  # Toolchain and checks.
  build-essential cmake pkg-config clang clang-format clang-tidy cppcheck
  libclang-rt-14-dev
  # Serialization and RPC.
  protobuf-compiler libprotobuf-dev protobuf-c-compiler libprotobuf-c-dev
  libgrpc-dev protobuf-compiler-grpc
  # Engine libraries.
  libuv1-dev libyaml-dev libssl-dev libhiredis-dev libnats-dev
  # Tests: unit framework, real peers, Python clients.
  libcmocka-dev redis-server nats-server
  python3 python3-grpcio python3-protobuf python3-yaml python3-redis
  # The Python wheel (make python-wheel, test_wheel.sh): built offline, installed in a venv.
  python3-pip python3-setuptools python3-wheel python3-venv
)

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
  echo "deps.sh: missing packages: ${missing[*]}" >&2
  echo "deps.sh: run as root (or: sudo apt-get install ${missing[*]})" >&2
  exit 1
fi

echo "deps.sh: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
# Keep package scripts from starting daemons; remove the guard afterwards
# only if we created it.
guard=/usr/sbin/policy-rc.d
created_guard=0
if [ ! -e "$guard" ]; then
  printf '#!/bin/sh\nexit 101\n' >"$guard"
  chmod +x "$guard"
  created_guard=1
fi
trap '[ $created_guard -eq 1 ] && rm -f "$guard"' EXIT

apt-get update -qq >/dev/null || apt-get update
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
