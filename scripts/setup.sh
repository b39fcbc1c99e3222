#!/usr/bin/env bash
# Everything a fresh Debian 12 machine needs for kvm-harness, as root:
# system packages (QEMU, the kernel source, build deps, the guest image's
# programs) and a virtualenv with the harness and its test dependencies.
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=(
    qemu-system-x86 qemu-utils            # the VM
    linux-source-6.12                     # the default kernel source
    linux-source-6.1                      # a kernel of another age (tests/test_integration_old_kernel.py)
    build-essential bc bison flex libelf-dev libssl-dev ccache cpio xz-utils kmod rsync git
    bubblewrap                            # the sandbox a series' build steps run in (harness/sandbox.py)
    python3 python3-venv
    chromium                              # the tests render the nightly's HTML page in it (headless)
)
# The guest initramfs's programs (vm-images/packages: `<package> <program>...`); trace-cmd also reads
# the captured trace.dat on the host.
while read -r pkg _; do
    case "$pkg" in ''|'#'*) continue ;; esac
    PACKAGES+=("$pkg")
done < vm-images/packages
missing=()
for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "setup: missing packages ${missing[*]}: run as root" >&2
        exit 2
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

VENV=${KVM_HARNESS_VENV:-.venv}
if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
fi
"$VENV/bin/pip" install -q --upgrade pip
"$VENV/bin/pip" install -q -e '.[test]'
echo "setup: done (virtualenv $VENV; cache ${KVM_HARNESS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kvm-harness})"
