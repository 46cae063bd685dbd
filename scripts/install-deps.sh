#!/usr/bin/env bash
# Installs strata's build and test dependencies from Debian 12's packages.
# Idempotent: does nothing when everything is already there. With --gpu
# also hipcc and the HIP runtime, so that the hip backend builds (and its
# tests SKIP without an AMD GPU); CUDA is not in Debian's main archive: the
# cuda backend builds where /usr/local/cuda has nvcc.
set -euo pipefail
pkgs=(build-essential autoconf automake libtool pkg-config
      libconfig-dev check libsubunit-dev libevent-dev libjansson-dev
      libpcre2-dev libxxhash-dev
      curl jq nodejs clang libclang-rt-14-dev)
[ "${1:-}" = --gpu ] && pkgs+=(hipcc libamdhip64-dev)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# The server tests drive strata serve with curl (+ jq) and with the official
# `openai` npm package. A nodejs from NodeSource bundles npm (and conflicts
# with Debian's npm package), so npm is only added when no npm is present.
command -v npm >/dev/null 2>&1 || missing+=(npm)
[ ${#missing[@]} -eq 0 ] && exit 0
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
echo "installing: ${missing[*]}"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
