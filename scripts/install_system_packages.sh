#!/usr/bin/env bash
# Debian packages the Python environment needs at run time: open3d-cpu loads libusb-1.0.
# Installs only what is missing; as root directly, otherwise through sudo when it exists.
set -euo pipefail
missing=()
ldconfig -p 2>/dev/null | grep -q 'libusb-1.0.so.0' || missing+=(libusb-1.0-0)
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -eq 0 ]; then
  as_root=()
elif command -v sudo >/dev/null 2>&1; then
  as_root=(sudo -n)
else
  echo "make setup: please install the Debian package(s) ${missing[*]} (apt-get install ${missing[*]}): open3d needs them" >&2
  exit 1
fi
echo "make setup: apt-get install ${missing[*]}"
if ! "${as_root[@]}" apt-get install -y -q "${missing[@]}" >/dev/null 2>&1; then
  "${as_root[@]}" apt-get update -q >/dev/null
  "${as_root[@]}" apt-get install -y -q "${missing[@]}" >/dev/null
fi
