#!/usr/bin/env bash
# Bring up the project's local Slurm 22.05 test cluster on 127.0.0.1 (see README.md):
# munged, MariaDB + slurmdbd, slurmctld and two slurmd virtual nodes n1, n2 with 2 fake GPUs each.
# Idempotent: returns at once when the cluster is already up and healthy, and starts only the
# daemons that are missing otherwise. Progress goes to stderr; stdout gets one line,
# `export SLURM_CONF=...`, so `eval "$(slurm/dev/start.sh)"` works.
# Exit status: 0 up; 3 this machine cannot host it (not root, packages unavailable); 1 failure.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

t_start=$(date +%s.%N)
elapsed() { awk -v a="$t_start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }

unavailable() { log "UNAVAILABLE: $*"; exit "$EX_UNAVAILABLE"; }

daemon_logs() {  # log files worth showing when daemon $1 fails
  case $1 in
    munged) printf '%s\n' "$MUNGE_DIR/munged.log" "$LOGS/munged.out" ;;
    mariadbd) printf '%s\n' "$DB_RUN/mariadb.err" "$LOGS/mariadbd.out" ;;
    *) printf '%s\n' "$LOGS/$1.log" "$LOGS/$1.out" ;;
  esac
}

fail() {  # fail MESSAGE DAEMON...: print the tail of each daemon's logs, exit 1
  local msg=$1 name f
  shift
  log "ERROR: $msg"
  for name in "$@"; do
    while IFS= read -r f; do
      [[ -s $f ]] || continue
      log "---- tail of $f"
      tail -n 30 "$f" >&2
    done < <(daemon_logs "$name")
  done
  log "state dir: $STATE (logs in $LOGS); stop what did start with slurm/dev/stop.sh"
  exit 1
}

# wait_for SECONDS "DAEMON..." CMD...: poll CMD until it succeeds. Fails early if one of the
# daemons has died (after a 3 s grace period: pid files appear only once they have daemonized).
wait_for() {
  local secs=$1 t0=$SECONDS name names
  read -ra names <<<"$2"
  shift 2
  until "$@" >/dev/null 2>&1; do
    if (( SECONDS - t0 >= 3 )); then
      for name in "${names[@]}"; do
        daemon_alive "$name" || fail "$name is not running (see its log)" "$name"
      done
    fi
    (( SECONDS - t0 < secs )) || fail "timed out after ${secs}s waiting for: $*" "${names[@]}"
    sleep 0.25
  done
}

# --- 0. fast path: already up -------------------------------------------------------------
if cluster_healthy; then
  [[ -w $STATE ]] && print_env >"$ENV_FILE"
  log "already up ($(elapsed)s): $(sl sinfo -h -o '%P %D %T' | tr '\n' ' ')"
  print_env
  exit 0
fi

[[ $(id -u) == 0 ]] || unavailable "not running and starting it needs root (daemons run as root, packages, /etc/hosts)"
command -v flock >/dev/null || unavailable "flock (util-linux) missing"

mkdir -p "$STATE"
# Serialise concurrent start/stop (e.g. two pytest sessions); then re-check.
# Every daemon is started with 9>&-: one that inherited the lock would hold it forever.
exec 9>"$STATE/.lock"
flock -w 600 9 || fail "could not lock $STATE/.lock within 600 s"
if cluster_healthy; then
  log "already up (started concurrently, $(elapsed)s)"
  print_env >"$ENV_FILE"
  print_env
  exit 0
fi

# --- 1. packages (only when something is missing) --------------------------------------------
need=(
  /usr/sbin/munged:munge /usr/sbin/slurmctld:slurmctld /usr/sbin/slurmd:slurmd
  /usr/bin/sbatch:slurm-client /usr/sbin/slurmdbd:slurmdbd
  /usr/sbin/mariadbd:mariadb-server /usr/bin/mariadb-install-db:mariadb-server
  /usr/bin/mariadb:mariadb-client-core
)
[[ -s $STATE/bindlo.so && $STATE/bindlo.so -nt $DEV_DIR/bindlo.c ]] ||
  need+=(/usr/bin/gcc:gcc /usr/include/dlfcn.h:libc6-dev)
missing=()
for item in "${need[@]}"; do
  [[ -e ${item%%:*} ]] || missing+=("${item#*:}")
done
if ((${#missing[@]})); then
  mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
  command -v apt-get >/dev/null || unavailable "missing ${missing[*]} and no apt-get"
  log "installing: ${missing[*]}"
  mkdir -p "$LOGS"
  # Without systemd's help the postinst scripts must not start system-wide munge/mariadb/slurm
  # services (they would take our ports): a temporary policy-rc.d forbids it.
  policy_added=0
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    policy_added=1
  fi
  apt_install() {
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
      -o DPkg::Lock::Timeout=300 "${missing[@]}" >>"$LOGS/apt.log" 2>&1
  }
  # Try the existing package lists first; refresh them only if that fails (none yet, or stale).
  apt_ok=0
  if apt_install || { apt-get update -q -o DPkg::Lock::Timeout=300 >>"$LOGS/apt.log" 2>&1 && apt_install; }; then
    apt_ok=1
  fi
  if [[ $policy_added == 1 ]]; then
    rm -f /usr/sbin/policy-rc.d
    trap - EXIT
  fi
  if [[ $apt_ok != 1 ]]; then
    tail -n 20 "$LOGS/apt.log" >&2
    unavailable "apt-get could not install ${missing[*]} (full log: $LOGS/apt.log)"
  fi
  log "packages installed ($(elapsed)s)"
fi

# --- 2. configuration ---------------------------------------------------------------------------
mkdir -p "$ETC" "$RUN" "$LOGS" "$STATE/state" "$STATE/dev"
for n in "${NODES[@]}"; do mkdir -p "$STATE/spool/$n"; done

render() {  # render TEMPLATE OUT: substitute @NAME@; rewrite OUT only when its content changes
  local text old=""
  text=$(<"$1")
  text=${text//@CLUSTER@/$CLUSTER}
  text=${text//@STATE@/$STATE}
  text=${text//@MUNGE_SOCKET@/$MUNGE_SOCKET}
  text=${text//@NODE_CPUS@/$NODE_CPUS}
  text=${text//@NODE_GPUS@/$NODE_GPUS}
  text=${text//@MEM_MB@/$mem_mb}
  [[ -f $2 ]] && old=$(<"$2")
  if [[ $text != "$old" ]]; then
    printf '%s\n' "$text" >"$2.tmp"
    mv "$2.tmp" "$2"
    if [[ -n $old ]] && { daemon_alive slurmctld || daemon_alive slurmdbd; }; then
      log "note: $2 changed; running daemons keep the old one (stop.sh, then start.sh)"
    fi
  fi
}
mem_mb=$(awk '/^MemTotal:/ {print int($2 / 1024)}' /proc/meminfo)
render "$DEV_DIR/slurm.conf.in" "$SLURM_CONF"
render "$DEV_DIR/slurmdbd.conf.in" "$ETC/slurmdbd.conf"
chmod 600 "$ETC/slurmdbd.conf"   # slurmdbd refuses a readable config (it holds the DB password)

# Fake GPUs: Slurm needs character devices (plain files give an empty CUDA_VISIBLE_DEVICES);
# c 1 3 is /dev/null's major/minor.
gres="AutoDetect=off"
for n in "${NODES[@]}"; do
  files=()
  for ((g = 0; g < NODE_GPUS; g++)); do
    f=$STATE/dev/$n-nvidia$g
    if [[ ! -c $f ]]; then
      rm -f "$f"
      mknod -m 666 "$f" c 1 3 || fail "mknod $f failed (fake GPU device)"
    fi
    files+=("$f")
  done
  gres+=$'\n'"NodeName=$n Name=gpu File=$(IFS=,; echo "${files[*]}")"
done
[[ -f $ETC/gres.conf && $(<"$ETC/gres.conf") == "$gres" ]] || printf '%s\n' "$gres" >"$ETC/gres.conf"

# Clients without SLURM_CONF fall back to /etc/slurm/slurm.conf (then to a DNS SRV lookup that
# fails). Never replace a real file there.
mkdir -p /etc/slurm
if [[ -L /etc/slurm/slurm.conf || ! -e /etc/slurm/slurm.conf ]]; then
  ln -sfn "$SLURM_CONF" /etc/slurm/slurm.conf
else
  log "note: /etc/slurm/slurm.conf is a real file; left alone (clients need SLURM_CONF=$SLURM_CONF)"
fi
# Jobs see SLURM_JOB_NODELIST=n[1-2]; submitit/TorchX derive MASTER_ADDR from it.
for n in "${NODES[@]}"; do
  getent hosts "$n" >/dev/null || printf '127.0.0.1 %s\n' "$n" >>/etc/hosts
done

# --- 3. munged: our own instance and socket, so a system munged is neither needed nor touched ---
if [[ ! -s /etc/munge/munge.key ]]; then
  mungekey --create --keyfile=/etc/munge/munge.key
  chown munge:munge /etc/munge/munge.key
  chmod 400 /etc/munge/munge.key
fi
install -d -o munge -g munge -m 0755 "$MUNGE_DIR"
munge_ok() { munge -S "$MUNGE_SOCKET" -n | unmunge -S "$MUNGE_SOCKET"; }
if ! daemon_alive munged; then
  runuser -u munge -- /usr/sbin/munged --socket="$MUNGE_SOCKET" \
    --pid-file="$MUNGE_DIR/munged.pid" --log-file="$MUNGE_DIR/munged.log" \
    --seed-file="$MUNGE_DIR/munged.seed" 9>&- </dev/null >>"$LOGS/munged.out" 2>&1 ||
    fail "munged did not start" munged
fi
wait_for 30 munged munge_ok

# --- 4. accounting: MariaDB (unix socket only) + slurmdbd ---------------------------------------
export MYSQL_UNIX_PORT=$DB_SOCKET  # read by the mariadb client and by slurmdbd's client library
db_sql() { mariadb --no-defaults --socket="$DB_SOCKET" -u root -e "$1"; }
if [[ ! -d $DB_DIR/mysql ]]; then
  rm -rf "$DB_DIR"
  install -d -o mysql -g mysql -m 0700 "$DB_DIR"
  mariadb-install-db --no-defaults --user=mysql --datadir="$DB_DIR" --skip-test-db \
    --auth-root-authentication-method=socket >"$LOGS/mariadb-install.log" 2>&1 || {
    tail -n 30 "$LOGS/mariadb-install.log" >&2
    rm -rf "$DB_DIR"
    fail "mariadb-install-db failed"
  }
fi
install -d -o mysql -g mysql -m 0755 "$DB_RUN"
if ! daemon_alive mariadbd; then
  # mariadbd writes its pid file only once InnoDB is up, which can take longer than
  # wait_for's 3 s grace on a busy machine; a stale pid file of an earlier run would meanwhile
  # make the new one look dead. So drop the stale file and watch the process we started.
  rm -f "$DB_RUN/mariadbd.pid"
  setsid /usr/sbin/mariadbd --no-defaults --user=mysql --datadir="$DB_DIR" --skip-networking \
    --socket="$DB_SOCKET" --pid-file="$DB_RUN/mariadbd.pid" --log-error="$DB_RUN/mariadb.err" \
    --innodb-buffer-pool-size=32M --innodb-lock-wait-timeout=900 \
    9>&- </dev/null >>"$LOGS/mariadbd.out" 2>&1 &
  db_pid=$! t0=$SECONDS
  until db_sql 'select 1' >/dev/null 2>&1; do
    pid_running "$db_pid" || daemon_alive mariadbd || fail "mariadbd exited while starting" mariadbd
    (( SECONDS - t0 < 120 )) || fail "timed out after 120s waiting for mariadbd" mariadbd
    sleep 0.25
  done
fi
wait_for 120 mariadbd db_sql 'select 1'
chmod a+r "$DB_RUN/mariadbd.pid"  # created 0660; check.sh/start.sh may run as another user
db_sql "CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurm';
        GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';"

# slurmdbd has no bind-address option: the shim turns its 0.0.0.0:6819 into 127.0.0.1:6819.
if [[ ! -s $STATE/bindlo.so || $DEV_DIR/bindlo.c -nt $STATE/bindlo.so ]]; then
  gcc -shared -fPIC -O2 -o "$STATE/bindlo.so" "$DEV_DIR/bindlo.c" -ldl || fail "building the bind shim failed"
fi
if ! daemon_alive slurmdbd; then
  LD_PRELOAD=$STATE/bindlo.so slurmdbd 9>&- </dev/null >>"$LOGS/slurmdbd.out" 2>&1 ||
    fail "slurmdbd did not start" slurmdbd
fi
wait_for 60 "slurmdbd mariadbd" sl sacctmgr -n show cluster
if ! sl sacctmgr -n -P show cluster format=cluster | grep -qx "$CLUSTER"; then
  sl sacctmgr -i add cluster "$CLUSTER" >/dev/null || fail "sacctmgr add cluster failed" slurmdbd
fi

# --- 5. controller and one slurmd per virtual node ----------------------------------------------
if ! daemon_alive slurmctld; then
  slurmctld 9>&- </dev/null >>"$LOGS/slurmctld.out" 2>&1 || fail "slurmctld did not start" slurmctld
fi
wait_for 60 slurmctld ctld_up
for n in "${NODES[@]}"; do
  if ! daemon_alive "slurmd-$n"; then
    slurmd -N "$n" 9>&- </dev/null >>"$LOGS/slurmd-$n.out" 2>&1 || fail "slurmd -N $n did not start" "slurmd-$n"
  fi
done
slurmds=("${NODES[@]/#/slurmd-}")
wait_for 60 "slurmctld ${slurmds[*]}" nodes_ready
wait_for 60 "slurmdbd slurmctld" accounting_ready
cluster_healthy || fail "started, but the health check still fails" slurmctld slurmdbd "${slurmds[@]}"

print_env >"$ENV_FILE"
sl sinfo -N -o '%N %P %T %c %m %G' >&2
log "up in $(elapsed)s; clients: source $ENV_FILE"
print_env
