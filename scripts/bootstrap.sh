#!/usr/bin/env bash
# Sets up this machine as the controller of a lab (and as the `local` lab itself):
# the distribution packages the harness and its tests need, then the harness with
# its Python dependencies. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

apt_packages=(
  sudo git curl ca-certificates iproute2 procps psmisc   # ansible become, probes, ss
  python3-venv                                           # molecule's pip installs
  chromium                                               # report rendering test
)
if [ "$(id -u)" -eq 0 ]; then
  as_root=()
else
  as_root=(sudo)
fi
missing=()
for pkg in "${apt_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "bootstrap: installing ${missing[*]}"
  "${as_root[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${as_root[@]}" apt-get install -y -qq --no-install-recommends \
    "${missing[@]}" >/dev/null
fi

python3 -m pip install -q --disable-pip-version-check -e '.[test]'
echo "bootstrap: $(cvmharness --version), $(ansible --version | head -1)"
