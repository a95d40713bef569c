#!/bin/sh
# PID 1 of the qemu-rs test guest (built by qemu-testkit's guest module).
# Mounts the kernel file systems, loads the virtio and ACPI button modules,
# starts acpid (power button -> poweroff) and, when a virtio-serial port named
# org.qemu.guest_agent.0 exists, qemu-ga on it; prints the ready marker and
# runs a shell on the serial console, forever.
export PATH=/bin:/sbin:/usr/bin:/usr/sbin HOME=/root PS1='guest# '
mount -t devtmpfs devtmpfs /dev
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
mkdir -p /dev/pts /dev/virtio-ports /run/qemu-ga
echo "qemu-rs-guest: init on $(uname -r)"

# In dependency order (computed when the image was built).
kdir=/lib/modules/$(uname -r)
while read -r module; do
    insmod "$kdir/$module" || echo "qemu-rs-guest: insmod $module failed"
done </etc/modules

# The ACPI power button (system_powerdown) powers the guest off.
acpid -c /etc/acpi -l /run/acpid.log -p /run/acpid.pid ||
    echo "qemu-rs-guest: acpid failed to start"

# virtio-serial ports are announced by the host after the driver is up:
# wait (bounded) for the agent's, name it as udev would, and start qemu-ga.
if ls /sys/bus/virtio/drivers/virtio_console 2>/dev/null | grep -q '^virtio'; then
    (
        port=/dev/virtio-ports/org.qemu.guest_agent.0
        tries=0
        while [ ! -e "$port" ] && [ $tries -lt 200 ]; do
            for p in /sys/class/virtio-ports/*; do
                [ -r "$p/name" ] || continue
                name=$(cat "$p/name")
                [ -n "$name" ] && ln -sf "../${p##*/}" "/dev/virtio-ports/$name" 2>/dev/null
            done
            [ -e "$port" ] || sleep 0.05
            tries=$((tries + 1))
        done
        if [ -e "$port" ]; then
            echo "qemu-rs-guest: agent starting"
            exec qemu-ga -m virtio-serial -p "$port" -t /run/qemu-ga -f /run/qemu-ga.pid -l /run/qemu-ga.log
        fi
        echo "qemu-rs-guest: no guest agent port"
    ) &
fi

echo "qemu-rs-guest: ready"
while :; do
    setsid cttyhack sh
done
