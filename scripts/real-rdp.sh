#!/usr/bin/env bash
# Manual helper: a private xrdp (port 33890) + xrdp-sesman (33891) on loopback, isolated the
# same way as the RDP test harness (tests/rdp/harness.rs explains why): a mount + pid
# namespace with private /etc/xrdp, /run/xrdp and /tmp. Needs root and
#   apt-get install -y --no-install-recommends xrdp xorgxrdp freerdp2-x11 xvfb xauth
#
#   scripts/real-rdp.sh serve            # until Ctrl-C (or SIGTERM to its process group);
#                                        # every process in the namespace dies with it
#   scripts/real-rdp.sh login HOST:PORT [USER [PASSWORD]] [xfreerdp args...]
#                                        # one xfreerdp login under xvfb-run (Ctrl-C to end)
# The test user is ghrdp / gh-rdp-Pass1 (created by `serve` if missing).
set -euo pipefail

XRDP_PORT=${XRDP_PORT:-33890}
SESMAN_PORT=${SESMAN_PORT:-33891}
USER_NAME=ghrdp
USER_PASS=gh-rdp-Pass1

[ "$(id -u)" = 0 ] || { echo "real-rdp.sh: needs root" >&2; exit 1; }

case "${1:-}" in
serve)
    id -u "$USER_NAME" >/dev/null 2>&1 || useradd -m -s /bin/sh "$USER_NAME"
    echo "$USER_NAME:$USER_PASS" | chpasswd
    home=$(getent passwd "$USER_NAME" | cut -d: -f6)
    printf '#!/bin/sh\nexec sleep 900\n' >"$home/.xsession"
    chmod 755 "$home/.xsession"; chown "$USER_NAME:" "$home/.xsession"

    D=$(mktemp -d /var/tmp/real-rdp.XXXXXX)
    trap 'rm -rf "$D"' EXIT
    chmod 755 "$D"; mkdir "$D/etc" "$D/run" "$D/tmp" "$D/log"
    cp -a /etc/xrdp/. "$D/etc/"
    rm -f "$D/etc/key.pem" "$D/etc/cert.pem"
    cp /etc/xrdp/key.pem /etc/xrdp/cert.pem "$D/etc/"   # follows the snakeoil symlinks
    chown xrdp: "$D/etc/key.pem" "$D/log"; chmod 600 "$D/etc/key.pem"
    sed -i -e "s|^port=3389\$|port=tcp://127.0.0.1:$XRDP_PORT|" \
        -e "s|^LogFile=.*|LogFile=$D/log/xrdp.log|" -e 's/^EnableSyslog=.*/EnableSyslog=false/' \
        "$D/etc/xrdp.ini"
    sed -i -e "s|^ListenPort=.*|ListenPort=$SESMAN_PORT|" \
        -e "s|^LogFile=.*|LogFile=$D/log/sesman.log|" -e 's/^EnableSyslog=.*/EnableSyslog=false/' \
        "$D/etc/sesman.ini"
    echo "xrdp on 127.0.0.1:$XRDP_PORT, logs in $D/log (removed at exit); Ctrl-C stops"
    # Inside: pid 1 is this sh; when it ends the kernel kills the whole namespace.
    unshare --mount --pid --fork --mount-proc --propagation private --kill-child sh -c '
        set -eu; D=$1
        mkdir -p /run/xrdp
        mount --bind "$D/etc" /etc/xrdp; mount --bind "$D/run" /run/xrdp; mount --bind "$D/tmp" /tmp
        mkdir -p /run/xrdp/sockdir /tmp/.X11-unix
        chown root:xrdp /run/xrdp /run/xrdp/sockdir; chmod 2775 /run/xrdp; chmod 3777 /run/xrdp/sockdir
        chmod 1777 /tmp /tmp/.X11-unix
        xrdp-sesman --nodaemon &
        setpriv --reuid=xrdp --regid=xrdp --init-groups -- xrdp --nodaemon &
        trap "kill -s TERM -1 2>/dev/null; sleep 0.5; exit 0" INT TERM
        tail -F "$D/log/xrdp.log" "$D/log/sesman.log" &
        wait
    ' sh "$D"
    ;;
login)
    target=${2:?HOST:PORT}
    user=${3:-$USER_NAME}
    pass=${4:-$USER_PASS}
    shift $(($# < 4 ? $# : 4))
    exec timeout -s INT 20 xvfb-run -a xfreerdp "/v:$target" "/u:$user" "/p:$pass" \
        /cert:ignore /log-level:INFO "$@"
    ;;
*)
    sed -n '2,12p' "$0"
    exit 2
    ;;
esac
