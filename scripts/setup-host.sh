#!/usr/bin/env bash
# Install the Debian/Ubuntu packages imagebuilder drives. Idempotent: does
# nothing when every package is already installed. Uses sudo when not root.
set -euo pipefail
# arm64 bootstraps on another host run aarch64 programs through qemu-user-static:
# make sure binfmt_misc is mounted and its qemu-aarch64 entry enabled (idempotent).
enable_binfmt() {
  [ "$(uname -m)" != aarch64 ] || return 0
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  [ -e /proc/sys/fs/binfmt_misc/status ] ||
    $sudo mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
  grep -qx enabled /proc/sys/fs/binfmt_misc/qemu-aarch64 2>/dev/null ||
    $sudo update-binfmts --enable qemu-aarch64
}
PACKAGES=(
  qemu-system-x86 qemu-system-arm qemu-utils ovmf qemu-efi-aarch64
  nbdkit nbdfuse libnbd-bin python3-libnbd python3-guestfs guestfish fuse2fs
  mmdebstrap gpgv gpg e2fsprogs dosfstools fdisk gdisk xfsprogs
  python3-venv python3-dev pigz xz-utils bzip2 binfmt-support qemu-user-static arch-test parted
  debian-archive-keyring iproute2 mtools busybox
)
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  enable_binfmt
  exit 0
fi
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
echo "imagebuilder: installing ${missing[*]}" >&2
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
enable_binfmt
