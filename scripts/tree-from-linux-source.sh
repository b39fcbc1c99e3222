#!/usr/bin/env bash
# Make a kernel git tree (for `kvm-harness boot-test --tree`) from Debian's linux-source-VERSION package:
#   scripts/tree-from-linux-source.sh 6.1 DIR
# Installs the package if it is missing (as root), unpacks /usr/src/linux-source-VERSION.tar.xz into DIR
# and commits it as one commit. An existing DIR is left alone if it already holds that commit.
# Exit codes: 0 done, 2 usage or a DIR that holds something else.
set -euo pipefail

if [ $# -ne 2 ]; then
    echo "usage: $0 VERSION DIR   (e.g. $0 6.1 ~/linux-6.1)" >&2
    exit 2
fi
version=$1 dir=$2
pkg=linux-source-$version
tarball=/usr/src/$pkg.tar.xz

if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "$0: $pkg is not installed: run as root, or apt-get install $pkg" >&2
        exit 2
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$pkg"
fi
deb_version=$(dpkg-query -W -f='${Version}' "$pkg")
subject="Debian $pkg $deb_version"

if [ -e "$dir" ]; then
    if [ "$(git -C "$dir" log -1 --format=%s 2>/dev/null || true)" = "$subject" ]; then
        echo "$dir: already $subject"
        exit 0
    fi
    echo "$0: $dir exists and is not a git tree of $subject: give another DIR" >&2
    exit 2
fi

tmp=$dir.partial.$$
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp"
tar -xaf "$tarball" -C "$tmp" --strip-components=1
git -C "$tmp" init -q
# Debian's packaging .gitignore ignores everything at the top level (`/*`): add past it.
git -C "$tmp" add -f .
git -C "$tmp" -c user.name=kvm-harness -c user.email=kvm-harness@kvm-harness.invalid \
    commit -q -m "$subject"
mv "$tmp" "$dir"
trap - EXIT
echo "$dir: $subject ($(make -s -C "$dir" kernelversion)) at $(git -C "$dir" rev-parse --short HEAD)"
