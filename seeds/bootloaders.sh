#!/bin/sh
# imagebuilder: make a Debian-family image deployable by curtin on BIOS and on UEFI
# with nothing to install at deploy time (an air-gapped MAAS site has no mirror).
# Runs as root in the build VM (fed on stdin), after the kernel step, before hygiene.
#
# curtin's built-in hooks want, in the target: grub-pc on a BIOS amd64 machine;
# grub-efi-<arch> (+ -signed, shim-signed where the deploy host's apt knows them,
# efibootmgr) on UEFI; what is missing is apt-installed at deploy, which fails with
# no mirror. grub-pc and grub-efi-<arch> conflict, so the image keeps the one it has
# (or grub-efi-<arch>), every *-bin, signed grub and shim, and carries the other
# as a .deb of the very same version in /curtin/debs; imagebuilder's curtin hook
# installs it offline on the firmware that needs it, and removes /curtin.
# Set in front of this script: IB_OFFLINE (1: no package source; only warn).
set -eu
export DEBIAN_FRONTEND=noninteractive
say() { echo "bootloaders: $*"; }
installed() { dpkg-query -W -f '${db:Status-Abbrev}' "$1" 2>/dev/null | grep -q '^[ih]i'; }

arch=$(dpkg --print-architecture)
case "$arch" in
    amd64) metas="grub-efi-amd64 grub-pc"
           parts="grub-pc-bin grub-efi-amd64-bin grub-efi-amd64-signed shim-signed efibootmgr" ;;
    arm64) metas="grub-efi-arm64"
           parts="grub-efi-arm64-bin grub-efi-arm64-signed shim-signed efibootmgr" ;;
    *) say "no bootloader recipe for $arch: left as it is"; exit 0 ;;
esac

kept=""
for m in $metas; do
    if installed "$m"; then kept="$m"; break; fi
done
missing=""
for p in $parts ${kept:-${metas%% *}}; do
    installed "$p" || missing="$missing $p"
done
if [ -n "$missing" ]; then
    if [ "${IB_OFFLINE:-0}" = 1 ]; then
        say "warning: offline build, cannot install:$missing (curtin will want them at deploy)"
    else
        say "installing:$missing"
        # shellcheck disable=SC2086
        apt-get -y install --no-install-recommends $missing
    fi
fi

mkdir -p /curtin/debs
for m in $metas; do
    installed "$m" && continue
    bin="$m-bin"
    if ! installed "$bin"; then
        say "warning: $bin missing, so no $m for curtin"
        continue
    fi
    version=$(dpkg-query -W -f '${Version}' "$bin")
    if ls /curtin/debs/"${m}_"*.deb >/dev/null 2>&1; then
        say "$m already in /curtin/debs"
    elif [ "${IB_OFFLINE:-0}" = 1 ]; then
        say "warning: offline build, cannot fetch $m $version: a $m machine needs a mirror to deploy"
    else
        say "fetching $m $version for curtin (installed offline at deploy)"
        (cd /curtin/debs && apt-get download "$m=$version")
    fi
done
rmdir /curtin/debs 2>/dev/null || true
ls /curtin/debs 2>/dev/null | sed 's/^/bootloaders: carried: /' || true
