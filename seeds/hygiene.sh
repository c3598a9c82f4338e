#!/bin/sh
# imagebuilder: the last thing that runs in the build VM (as root, fed on stdin).
# Leaves the image as a first boot expects it, then powers the VM off:
# no build user, no build keys, no ssh host keys, no cloud-init instance state,
# an empty (not absent) machine-id, no build proxy, no apt lists or caches, no
# installer leftovers, and nothing that differs between two builds of the same
# inputs (random seeds, timer stamps, first-boot stamps, caches, backups, logs,
# byte-code python wrote during the build).
# Set by the lines imagebuilder puts in front of this script (not the environment,
# so sudo's log never holds them): IB_USER (build user), IB_KEY (base64 of its
# public key), IB_REMOVE_FSTAB (1 to remove /etc/fstab), IB_PROXY_FILE (apt proxy
# file), IB_SINCE (epoch seconds: files written after it were written by the build).
# Tests run single file-only parts against a tree: IB_ONLY="installer_leftovers ..."
# with IB_ROOT=<tree> (every path of those parts is under "$R").
set -eu
export DEBIAN_FRONTEND=noninteractive
R="${IB_ROOT:-}"
say() { echo "hygiene: $*"; }

# Remove what is inside directory $1 (not the directory itself); a no-op when absent.
# systemd-private-* are the private /tmp of running services: systemd removes them.
empty_dir() {
    if [ -d "$1" ]; then
        find "$1" -mindepth 1 -maxdepth 1 ! -name 'systemd-private-*' -exec rm -rf {} +
    fi
}

quiesce() {
    say "stopping timers and periodic jobs, so none runs while the image is cleaned"
    systemctl stop '*.timer' 2>/dev/null || true
    systemctl stop 'apt-daily*.service' 'dpkg-db-backup*.service' 'logrotate*.service' \
        'man-db*.service' 2>/dev/null || true
}

apt_state() {
    say "apt: autoremove, clean, drop lists and the build proxy"
    rm -f "$IB_PROXY_FILE"
    apt-get -y autoremove --purge
    apt-get clean
    rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin
}

grub_answers() {
    # grub-pc's postinst runs grub-install on these devices: the build's /dev/vda
    # does not exist on the machine MAAS deploys to. The answer outlives grub-pc (a
    # removed, not purged, grub-pc keeps it), so reset it wherever debconf holds it.
    if command -v debconf-set-selections >/dev/null 2>&1 &&
        grep -qx 'Name: grub-pc/install_devices' /var/cache/debconf/config.dat 2>/dev/null; then
        say "debconf: no build-time grub install devices"
        printf '%s\n' 'grub-pc grub-pc/install_devices multiselect ' \
            'grub-pc grub-pc/install_devices_disks_changed multiselect ' |
            debconf-set-selections
    fi
}

cloud_init_state() {
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
}

ssh_keys() {
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
}

build_user() {
    say "removing the build user $IB_USER"
    rm -f /etc/sudoers.d/90-cloud-init-users "/var/lib/sudo/lectured/$IB_USER"
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
}

# Exit 0 if the ifupdown file $1 configures an interface other than lo.
configures_more_than_lo() {
    awk '
        $1 == "iface" && $2 != "lo" { found = 1 }
        $1 == "mapping" { found = 1 }
        $1 == "auto" || $1 ~ /^allow-/ { for (i = 2; i <= NF; i++) if ($i != "lo") found = 1 }
        END { exit found ? 0 : 1 }
    ' "$1"
}

installer_leftovers() {
    say "installer leftovers: its network configuration, cloud-init overrides and logs"
    # subiquity (Ubuntu): MAAS and cloud-init configure the network of a deployed machine
    rm -f "$R"/etc/netplan/00-installer-config*.yaml \
        "$R/etc/cloud/cloud.cfg.d/99-installer.cfg" \
        "$R/etc/cloud/cloud.cfg.d/subiquity-disable-cloudinit-networking.cfg" \
        "$R/etc/cloud/cloud.cfg.d/90-installer-network.cfg"
    rm -rf "$R/var/log/installer"
    # debian-installer: ifupdown configured the install's NIC; back to loopback only
    eni="$R/etc/network/interfaces"
    if [ -f "$eni" ] && configures_more_than_lo "$eni"; then
        for f in "$R"/etc/network/interfaces.d/*; do
            if [ -f "$f" ] && configures_more_than_lo "$f"; then
                rm -f "$f"
            fi
        done
        cat > "$eni" <<'EOF'
# This file describes the network interfaces available on your system
# and how to activate them. For more information, see interfaces(5).

source /etc/network/interfaces.d/*

# The loopback network interface
auto lo
iface lo inet loopback
EOF
    fi
}

stop_writers() {
    say "stopping what writes state at the poweroff (random seed, utmp, clock, journal)"
    for unit in systemd-random-seed.service systemd-update-utmp.service \
                systemd-timesyncd.service; do
        systemctl stop "$unit" 2>/dev/null || true
    done
    # systemd writes a wtmp record when a getty exits: now, before wtmp is emptied
    systemctl stop '*getty*.service' 2>/dev/null || true
    if [ -d /var/log/journal ]; then
        # journald keeps logging to /run until the poweroff
        journalctl --relinquish-var 2>/dev/null || true
    fi
}

run_state() {
    say "state that differs between two builds: seeds, stamps, caches, backups, temp files"
    rm -f "$R/var/lib/systemd/random-seed" "$R/var/lib/systemd/credential.secret" \
        "$R/var/lib/systemd/timesync/clock" "$R/etc/.updated" "$R/var/.updated" \
        "$R/var/cache/ldconfig/aux-cache" "$R/var/lib/logrotate/status" \
        "$R/var/lib/apt/daily_lock" "$R"/var/cache/debconf/*-old "$R"/var/lib/dpkg/*-old \
        "$R"/var/lib/dhcp/*.leases "$R"/var/lib/dhcp/*.lease
    for d in "$R/var/lib/systemd/timers" "$R/var/lib/apt/periodic" "$R/var/cache/man" \
             "$R/var/backups" "$R/var/tmp" "$R/tmp"; do
        empty_dir "$d"
    done
    # shadow's tools keep the previous file as a backup: it still lists the build user
    for f in passwd group shadow gshadow subuid subgid; do
        if [ -f "$R/etc/$f-" ]; then
            if [ -f "$R/etc/$f" ]; then
                cat "$R/etc/$f" > "$R/etc/$f-"
            else
                rm -f "$R/etc/$f-"
            fi
        fi
    done
}

python_caches() {
    say "python: byte-code written during the build (python writes it again when needed)"
    n=$(find "$R/" -xdev -type f -name '*.pyc' -path '*/__pycache__/*' \
            -newermt "@$IB_SINCE" -print -delete | wc -l)
    find "$R/" -xdev -type d -name __pycache__ -empty -newermt "@$IB_SINCE" -delete
    say "removed $n .pyc files"
}

logs() {
    say "logs: the build's journal, package and cloud-init logs, login records"
    if [ -d "$R/var/log/journal" ]; then
        find "$R/var/log/journal" -mindepth 1 -maxdepth 1 -exec rm -rf {} +
    fi
    if [ -d "$R/var/log" ]; then
        rm -f "$R/var/log/dpkg.log" "$R/var/log/alternatives.log" "$R"/var/log/apt/*.log \
            "$R"/var/log/cloud-init*.log
        find "$R/var/log" -type f \( -name '*.[0-9]' -o -name '*.gz' -o -name '*.xz' \
            -o -name '*.old' \) -delete
        # what stays (login records, logs packages made) stays, empty, owner and mode kept
        find "$R/var/log" -type f ! -size 0 -exec truncate -s 0 {} +
    fi
}

if [ -n "${IB_ONLY:-}" ]; then
    : "${IB_ROOT:?IB_ONLY runs against a tree: set IB_ROOT}" "${IB_SINCE:=0}"
    for part in $IB_ONLY; do
        "$part"
    done
    exit 0
fi

: "${IB_USER:?}" "${IB_KEY:?}" "${IB_PROXY_FILE:?}" "${IB_REMOVE_FSTAB:=1}"
# default: written since this boot. No margin before it: a base bootstrapped a minute
# ago has byte-code that old, and removing it in one build only would differ.
: "${IB_SINCE:=$(awk '/^btime/ {print $2}' /proc/stat)}"
quiesce
apt_state
grub_answers
cloud_init_state
ssh_keys
build_user
installer_leftovers
stop_writers
run_state
python_caches
logs

sync
say "complete; powering off"
systemctl poweroff --no-block
