#!/usr/bin/env bash
# Headless OpenGL for MuJoCo rendering (vla.sim): EGL through Mesa, OSMesa as fallback.
# Idempotent: installs only the packages that are missing. Needs root (or sudo) when it installs.
set -euo pipefail

PACKAGES=(libegl1 libegl-mesa0 libgl1-mesa-dri libosmesa6)

missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "system deps: all present (${PACKAGES[*]})"
  exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
  echo "system deps missing (${missing[*]}) and apt-get is not available: install the equivalent" \
       "EGL/OSMesa packages with your system's package manager." >&2
  exit 1
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
    echo "system deps missing (${missing[*]}): run this script as root (or install sudo)." >&2
    exit 1
  fi
fi

echo "system deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
