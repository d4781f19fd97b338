#!/usr/bin/env bash
# manage_dramatiq.sh: the convenient front for a dramactl fleet.
# A thin wrapper: every action is a dramactl, systemctl or journalctl call.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
VENV=${DRAMACTL_VENV:-/opt/dramactl/venv}
PACKAGES=(python3 python3-venv python3-dev gcc pkg-config libsystemd-dev redis-server)
# The test suite also boots systemd in nspawn, drives Chromium, and builds and lints the .deb
# (whose runtime python3-* must be installed here: the container that installs it is offline),
# and run Debian's node_exporter and Prometheus against the tick's metrics.
TEST_PACKAGES=(systemd-container polkitd chromium redis-tools curl git iproute2 procps util-linux adduser
  build-essential debhelper dh-python pybuild-plugin-pyproject python3-all python3-setuptools help2man
  python3-pytest lintian python3-redis python3-click python3-dotenv python3-pystemd python3-systemd
  prometheus prometheus-node-exporter)

die() { echo "manage_dramatiq.sh: $*" >&2; exit 1; }

dramactl_bin() {
  if [ -n "${DRAMACTL:-}" ]; then echo "$DRAMACTL"
  elif [ -x "$VENV/bin/dramactl" ]; then echo "$VENV/bin/dramactl"
  elif command -v dramactl >/dev/null 2>&1; then command -v dramactl
  elif [ -x "$HERE/.venv/bin/dramactl" ]; then echo "$HERE/.venv/bin/dramactl"
  else die "dramactl is not installed: run 'sudo $0 setup' first"
  fi
}
dctl() { "$(dramactl_bin)" "$@"; }

# Commands that change the system re-run themselves through sudo when not root.
as_root() {
  [ "$(id -u)" -eq 0 ] && return 0
  command -v sudo >/dev/null 2>&1 || die "'$1' changes the system: run it as root"
  exec sudo --preserve-env=CI,DRAMACTL,DRAMACTL_VENV,DRAMACTL_REQUIRE_SERVICES "$0" "$@"
}

systemd_running() { [ -d /run/systemd/system ]; }

apt_install() {
  local missing=()
  for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  echo "installing system packages: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}

make_venv() {  # make_venv DIR [EXTRAS]
  local dir=$1 spec=$HERE
  [ -n "${2:-}" ] && spec="$HERE[$2]"
  [ -x "$dir/bin/python" ] || /usr/bin/python3 -m venv "$dir"
  "$dir/bin/pip" install -q --upgrade pip >/dev/null
  if [ "$dir" = "$HERE/.venv" ]; then
    "$dir/bin/pip" install -q -e "$spec"
  else
    "$dir/bin/pip" install -q "$spec"
  fi
}

cmd_setup() {
  apt_install "${PACKAGES[@]}"
  systemd_running && systemctl enable --now redis-server >/dev/null 2>&1 || true
  echo "creating $VENV"
  make_venv "$VENV"
  if ! systemd_running; then
    echo "dramactl is installed in $VENV, but this host does not run systemd as PID 1 (a container?)."
    echo "The fleet needs systemd; to run the example worker in the foreground instead:"
    echo "  redis-server --daemonize yes && $0 start-dev"
    exit 0
  fi
  "$VENV/bin/dramactl" install
  systemctl enable --now dramactl.timer
  "$VENV/bin/dramactl" resume
  echo
  echo "The autoscaled fleet is running the example app. Next:"
  echo "  $0 load 200        # send a burst of example messages"
  echo "  $0 status          # watch the fleet grow and shrink"
  echo "  $0 follow          # worker output from the journal"
}

cmd_start() {
  if [ $# -ge 1 ]; then
    local threads=()
    [ $# -ge 2 ] && threads=(--threads "$2")
    dctl scale-to "$1" "${threads[@]}"
    echo "fixed size: autoscaling paused ('$0 start' with no numbers turns it back on)"
  else
    dctl resume
  fi
  systemctl start dramactl.timer
}

cmd_stop() {
  # First no tick: one still running could start an instance, whose Wants= on the target
  # would cancel the target's stop job. Then stopping the target stops every
  # dramatiq-worker@N (PartOf=), each draining first; a start job left by the tick is
  # replaced by the stop.
  systemctl stop dramactl.timer dramactl.service
  systemctl stop dramatiq-workers.target 'dramatiq-worker@*.service'
}

cmd_dev() {
  local threads=${1:-}
  if [ -n "$threads" ]; then exec "$(dramactl_bin)" dev --threads "$threads"; fi
  exec "$(dramactl_bin)" dev
}

cmd_test() {
  apt_install "${PACKAGES[@]}" "${TEST_PACKAGES[@]}"
  make_venv "$HERE/.venv" test
  cd "$HERE"
  # Two pytest-xdist workers, whole files each: a system test file keeps its booted container
  # (each worker boots its own session container; the system tests mostly wait on systemd).
  exec "$HERE/.venv/bin/python" -m pytest -ra -n 2 --dist loadfile --durations=25 "$@"
}

usage() {
  cat <<EOF
Usage: $0 COMMAND [ARGS]

  setup              install packages, dramactl ($VENV), units; start the autoscaled fleet
  start [P [T]]      P worker instances with T threads each (autoscaling paused);
                     with no numbers: autoscaling on
  stop               stop the timer and every worker (each drains first)
  restart [P [T]]    stop, then start (the queue gets no service meanwhile; see deploy)
  deploy [--batch K] rolling restart: each instance replaced by one running the code on
                     disk now, started (READY=1) before the old one drains; capacity kept
  status [--json]    queues, instances, limits, timer
  logs [N]           the last N (default 100) lines of all workers' output
  follow             follow all workers' output
  dashboard          web view on http://127.0.0.1:8080 (DASHBOARD_HOST/DASHBOARD_PORT)
  start-dev [T]      run one worker in the foreground, reloading on code change (no systemd)
  load N [--rate R]  enqueue N example messages
  test [PYTEST ARGS] run the test suite (installs what it needs, boots systemd: as root)
  help               this text

Settings: /etc/dramactl/dramactl.env (see 'dramactl check').
EOF
}

main() {
  local cmd=${1:-help}
  case "$cmd" in setup|start|stop|restart|deploy|test) as_root "$@" ;; esac
  [ $# -gt 0 ] && shift
  case "$cmd" in
    setup) cmd_setup ;;
    start) cmd_start "$@" ;;
    stop) cmd_stop ;;
    restart) cmd_stop; cmd_start "$@" ;;
    deploy) dctl restart "$@" ;;
    status) dctl status "$@" ;;
    logs) journalctl --no-pager -o short-iso -u 'dramatiq-worker@*' -n "${1:-100}" ;;
    follow) exec journalctl -f -o short-iso -u 'dramatiq-worker@*' ;;
    dashboard) exec "$(dramactl_bin)" dashboard "$@" ;;
    start-dev) cmd_dev "$@" ;;
    load) dctl load "$@" ;;
    test) cmd_test "$@" ;;
    test-packages) echo "${PACKAGES[@]}" "${TEST_PACKAGES[@]}" ;;
    help|-h|--help) usage ;;
    *) usage >&2; exit 2 ;;
  esac
}

main "$@"
