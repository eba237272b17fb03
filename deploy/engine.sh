#!/bin/sh
# A Docker engine and Compose for the deployment test (and an operator trying the stack on a bare Debian host).
#
#   deploy/engine.sh start   # install what is missing, start a daemon when none answers
#   deploy/engine.sh stop    # stop the daemon `start` started (none started: nothing to do)
#
# start: installs Debian's docker.io when `dockerd` is missing and docker-compose (v1) when neither
# `docker compose` (v2) nor `docker-compose` runs (apt-get, as root); when `docker info` gets no answer,
# starts `dockerd` in the background with its defaults (log in $OCYCLE_DOCKERD_LOG) and waits up to 60 s for
# it. Prints the compose command to use on its last line ("compose: docker compose" or "compose:
# docker-compose"). Exits 1 when the engine cannot be started: the caller decides whether that is a failure.
set -eu

STATE=${OCYCLE_DOCKERD_STATE:-/run/ocycle-dockerd.pid}
LOG=${OCYCLE_DOCKERD_LOG:-/var/log/ocycle-dockerd.log}

say() { echo "engine: $*" >&2; }

apt_install() {
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
        say "missing $*: install them (Debian: sudo apt-get install $*)"
        return 1
    fi
    say "installing $* (apt-get)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

compose_command() {
    if docker compose version >/dev/null 2>&1; then echo "docker compose"
    elif command -v docker-compose >/dev/null && docker-compose version >/dev/null 2>&1; then echo "docker-compose"
    else return 1; fi
}

start() {
    missing=""
    command -v dockerd >/dev/null && command -v docker >/dev/null || missing="docker.io"
    [ -z "$missing" ] && compose_command >/dev/null || missing="$missing docker-compose"
    # shellcheck disable=SC2086
    [ -z "$missing" ] || apt_install $missing iptables ca-certificates
    if docker info >/dev/null 2>&1; then
        say "a daemon already runs: using it"
    else
        say "starting dockerd (log: $LOG)"
        nohup dockerd >"$LOG" 2>&1 &
        echo $! >"$STATE"
        i=0
        until docker info >/dev/null 2>&1; do
            i=$((i + 1))
            if [ $i -gt 120 ] || ! kill -0 "$(cat "$STATE")" 2>/dev/null; then
                say "dockerd did not start; its log ends:"
                tail -n 20 "$LOG" >&2 || true
                rm -f "$STATE"
                return 1
            fi
            sleep 0.5
        done
        say "dockerd $(cat "$STATE") answers"
    fi
    echo "compose: $(compose_command)"
}

stop() {
    [ -f "$STATE" ] || return 0
    pid=$(cat "$STATE")
    rm -f "$STATE"
    kill "$pid" 2>/dev/null || return 0
    i=0
    while kill -0 "$pid" 2>/dev/null && [ $i -lt 60 ]; do i=$((i + 1)); sleep 0.5; done
    say "dockerd $pid stopped"
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
