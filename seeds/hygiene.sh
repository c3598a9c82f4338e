#!/bin/sh
# imagebuilder: the last thing that runs in the build VM (as root, fed on stdin).
# Leaves the image as a first boot expects it, then powers the VM off:
# no build user, no build keys, no ssh host keys, no cloud-init instance state,
# an empty (not absent) machine-id, no build proxy, no apt lists or caches.
# Set by the lines imagebuilder puts in front of this script (not the environment,
# so sudo's log never holds them): IB_USER (build user), IB_KEY (base64 of its
# public key), IB_REMOVE_FSTAB (1 to remove /etc/fstab), IB_PROXY_FILE (apt proxy file).
set -eu
: "${IB_USER:?}" "${IB_KEY:?}" "${IB_PROXY_FILE:?}" "${IB_REMOVE_FSTAB:=1}"
export DEBIAN_FRONTEND=noninteractive
say() { echo "hygiene: $*"; }

say "apt: autoremove, clean, drop lists and the build proxy"
rm -f "$IB_PROXY_FILE"
apt-get -y autoremove --purge
apt-get clean
rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin

say "cloud-init: clean instance state and logs"
if ! cloud-init clean --logs --machine-id 2>/dev/null; then
    cloud-init clean --logs
fi
rm -rf /var/lib/cloud/instances /var/lib/cloud/instance /var/lib/cloud/data
: > /etc/machine-id
if [ -e /var/lib/dbus/machine-id ] && [ ! -L /var/lib/dbus/machine-id ]; then
    rm -f /var/lib/dbus/machine-id
fi
rm -f /etc/netplan/50-cloud-init.yaml
if [ "$IB_REMOVE_FSTAB" = 1 ]; then
    rm -f /etc/fstab
fi

say "ssh: host keys, build key"
rm -f /etc/ssh/ssh_host_*
if [ -f /root/.ssh/authorized_keys ]; then
    grep -v -F "$IB_KEY" /root/.ssh/authorized_keys > /root/.ssh/authorized_keys.ib || true
    if grep -q '^[^#]' /root/.ssh/authorized_keys.ib; then
        cat /root/.ssh/authorized_keys.ib > /root/.ssh/authorized_keys
    else
        rm -f /root/.ssh/authorized_keys
    fi
    rm -f /root/.ssh/authorized_keys.ib
    rmdir /root/.ssh 2>/dev/null || true
fi

say "removing the build user $IB_USER"
rm -f /etc/sudoers.d/90-cloud-init-users
home=$(getent passwd "$IB_USER" | cut -d: -f6)
userdel --force --remove "$IB_USER" 2>&1 || [ $? -eq 12 ]
if getent group "$IB_USER" > /dev/null; then
    groupdel "$IB_USER"
fi
rm -rf "${home:-/home/$IB_USER}"
if getent passwd "$IB_USER" > /dev/null; then
    say "FAILED: $IB_USER still exists"
    exit 1
fi
if grep -rqs -F "$IB_KEY" /root /home /etc/ssh /etc/sudoers.d; then
    say "FAILED: the build key is still on the disk"
    exit 1
fi

say "logs: the build's journal, login records and syslog"
if [ -d /var/log/journal ]; then
    # journald keeps logging to /run until the poweroff; the build's files go
    journalctl --relinquish-var 2>/dev/null || true
    find /var/log/journal -type f -name '*.journal*' -delete
fi
for f in /var/log/wtmp /var/log/btmp /var/log/lastlog /var/log/auth.log /var/log/syslog \
         /var/log/messages /var/log/secure; do
    if [ -f "$f" ]; then
        : > "$f"
    fi
done

sync
say "complete; powering off"
systemctl poweroff --no-block
