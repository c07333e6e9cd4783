#!/usr/bin/env bash
# Compares `quic-peer get` with a bare quinn stream, scp and sendme in one run
# on loopback (scp against a private sshd this script starts and stops;
# sendme with its relay off), for one big file and for a directory of small
# files. Each transfer writes its output (a get also syncs it); rounds
# alternate between the tools and the median of each is printed, with the
# CPU time the whole machine spent per GiB moved (sender plus receiver, from
# /proc/stat: run it on an idle machine) and the ratio of get's speed to it.
#
#   bash examples/compare.sh [SIZE_MIB] [ROUNDS]     (defaults: 1024 and 3)
#   HUGE=1 bash examples/compare.sh                  (adds 100,000 files, once;
#                                                    HUGE_PUBLIC=1: --public too, minutes)
#
# scp rows need /usr/sbin/sshd and scp (Debian: openssh-server); sendme rows
# need `sendme` on PATH (or SENDME=/path/to/sendme). Rows without their tool
# are left out.
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE_MIB=${1:-1024}
ROUNDS=${2:-3}
SMALL_FILES=1000

cargo build --release --quiet
QP=$PWD/target/release/quic-peer
SENDME=${SENDME:-$(command -v sendme || true)}
WORK=$(mktemp -d /tmp/quic-peer-compare.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

echo "# $(date -u +%Y-%m-%d), $(nproc) cores; ${SIZE_MIB} MiB of random bytes, and $SMALL_FILES files of 4 KiB; median of $ROUNDS"
head -c $((SIZE_MIB << 20)) /dev/urandom > "$WORK/big.bin"
mkdir "$WORK/small"
for i in $(seq 1 $SMALL_FILES); do head -c 4096 /dev/urandom > "$WORK/small/f$i"; done

# One holder; the getter is a separate client process.
"$QP" --listen 127.0.0.1:0 --data-dir "$WORK/holder" --no-http --max-storage 64G > "$WORK/holder.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 50); do grep -q STARTED "$WORK/holder.log" && break; sleep 0.1; done
HOLDER=$(grep -o 'active on [0-9.:]*' "$WORK/holder.log" | cut -d' ' -f3)
# A put from a client stores on the holder. Prints what get needs: the id,
# and the key of an encrypted file.
put_target() {
  "$QP" put "$@" --replicas 1 --bootstrap "$HOLDER" 2>/dev/null |
    awk '/^id: /{id=$2} /^key: /{key=" --key " $2} END{print id key}'
}
BIG_PUBLIC=$(put_target "$WORK/big.bin" --public)
BIG_SEALED=$(put_target "$WORK/big.bin")
SMALL_PUBLIC=$(put_target "$WORK/small" --public)
SMALL_SEALED=$(put_target "$WORK/small")

HAVE_SSH=0
if [ -x /usr/sbin/sshd ] && command -v scp >/dev/null; then
  mkdir -p "$WORK/ssh" /run/sshd
  ssh-keygen -q -t ed25519 -N "" -f "$WORK/ssh/host"
  ssh-keygen -q -t ed25519 -N "" -f "$WORK/ssh/client"
  cat > "$WORK/ssh/config" <<CONF
Port 2299
ListenAddress 127.0.0.1
HostKey $WORK/ssh/host
AuthorizedKeysFile $WORK/ssh/client.pub
PasswordAuthentication no
PermitRootLogin prohibit-password
PidFile $WORK/ssh/pid
StrictModes no
UsePAM no
Subsystem sftp /usr/lib/openssh/sftp-server
CONF
  if /usr/sbin/sshd -f "$WORK/ssh/config"; then
    sleep 0.5
    PIDS+=($(cat "$WORK/ssh/pid"))
    HAVE_SSH=1
  fi
fi
SCP=(scp -q -P 2299 -i "$WORK/ssh/client" -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null)

# sendme: one sender per payload, each in its own directory (it keeps its
# blob store in the working directory); receivers write into the output.
sendme_send() { # dir, path
  mkdir -p "$1"
  (cd "$1" && exec "$SENDME" send "$2" --relay disabled --ticket-type addresses --no-progress > send.log 2>&1) &
  PIDS+=($!)
}
sendme_ticket() { # dir
  for _ in $(seq 300); do grep -qo 'blob[a-z0-9]*' "$1/send.log" 2>/dev/null && break; sleep 0.1; done
  grep -o 'blob[a-z0-9]*' "$1/send.log" | head -1
}
if [ -n "$SENDME" ]; then
  sendme_send "$WORK/sendme-big" "$WORK/big.bin"
  sendme_send "$WORK/sendme-small" "$WORK/small"
  BIG_TICKET=$(sendme_ticket "$WORK/sendme-big")
  SMALL_TICKET=$(sendme_ticket "$WORK/sendme-small")
  SENDME_ROW="sendme $("$SENDME" --version | cut -d' ' -f2), relay off"
fi
sendme_get() { mkdir -p "$WORK/out" && cd "$WORK/out" && "$SENDME" receive "$1" --relay disabled --no-progress; }

# Busy CPU seconds of the whole machine so far (user, nice, system, irq,
# softirq, steal).
busy() { awk '/^cpu /{print ($2+$3+$4+$7+$8+$9)/100}' /proc/stat; }
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

declare -A T C
run() { # name, command...
  local name=$1; shift
  rm -rf "$WORK/out"
  local t0 t1 c0 c1
  c0=$(busy); t0=$(date +%s.%N)
  ( "$@" ) > /dev/null 2>&1 || { echo "failed: $name" >&2; return 1; }
  t1=$(date +%s.%N); c1=$(busy)
  T[$name]+="$(awk "BEGIN {print $t1 - $t0}") "
  C[$name]+="$(awk "BEGIN {print $c1 - $c0}") "
}
get() { "$QP" get $1 -o "$WORK/out" --bootstrap "$HOLDER"; }

BIG_ROWS=("quic-peer get (encrypted)" "quic-peer get (--public)" "bare quinn stream, bytes discarded")
SMALL_ROWS=("quic-peer get (encrypted), small files" "quic-peer get (--public), small files")
for r in $(seq 1 "$ROUNDS"); do
  run "bare quinn stream, bytes discarded" "$QP" bench-bare --size-mib "$SIZE_MIB"
  run "quic-peer get (encrypted)" get "$BIG_SEALED"
  run "quic-peer get (--public)" get "$BIG_PUBLIC"
  if [ $HAVE_SSH = 1 ]; then
    run "scp (aes128-gcm)" "${SCP[@]}" -c aes128-gcm@openssh.com "root@127.0.0.1:$WORK/big.bin" "$WORK/out"
    run "scp (aes128-gcm), then sync" sh -c "$(printf '%q ' "${SCP[@]}") -c aes128-gcm@openssh.com root@127.0.0.1:$WORK/big.bin $WORK/out && sync"
    run "scp (default cipher)" "${SCP[@]}" "root@127.0.0.1:$WORK/big.bin" "$WORK/out"
  fi
  [ -n "$SENDME" ] && run "$SENDME_ROW" sendme_get "$BIG_TICKET"
  run "quic-peer get (encrypted), small files" get "$SMALL_SEALED"
  run "quic-peer get (--public), small files" get "$SMALL_PUBLIC"
  if [ $HAVE_SSH = 1 ]; then
    run "scp -r, small files" "${SCP[@]}" -r "root@127.0.0.1:$WORK/small" "$WORK/out"
  fi
  [ -n "$SENDME" ] && run "sendme, small files" sendme_get "$SMALL_TICKET"
done
[ $HAVE_SSH = 1 ] && BIG_ROWS+=("scp (aes128-gcm)" "scp (aes128-gcm), then sync" "scp (default cipher)") && SMALL_ROWS+=("scp -r, small files")
[ -n "$SENDME" ] && BIG_ROWS+=("$SENDME_ROW") && SMALL_ROWS+=("sendme, small files")

table() { # bytes, rows... (the first is the base of the ratios)
  local bytes=$1; shift
  local base
  base=$(echo ${T["$1"]} | tr ' ' '\n' | median)
  for name in "$@"; do
    local m c
    m=$(echo ${T[$name]} | tr ' ' '\n' | median)
    c=$(echo ${C[$name]} | tr ' ' '\n' | median)
    printf '| %-40s | %8.2f | %8.0f | %8.2f | %8.2f |\n' "$name" "$m" \
      "$(awk "BEGIN {print $bytes / $m / 1e6}")" "$(awk "BEGIN {print $c / ($bytes / 1073741824)}")" \
      "$(awk "BEGIN {print $m / $base}")"
  done
}
echo
echo "Ratio: this row's time over the first row's of its table (above 1: that quic-peer get is faster)."
echo "CPU: busy seconds of the whole machine (sender and receiver) per GiB moved."
echo
printf '| %-40s | %8s | %8s | %8s | %8s |\n' transfer seconds "MB/s" "CPU s/GiB" "ratio"
printf '|%s|%s|%s|%s|%s|\n' "$(printf -- '-%.0s' {1..42})" ---------- ---------- ---------- ----------
table $((SIZE_MIB << 20)) "${BIG_ROWS[@]}"
table $((SMALL_FILES * 4096)) "${SMALL_ROWS[@]}"

if [ "${HUGE:-0}" = 1 ]; then
  echo
  echo "100,000 files of 1 KiB in 100 directories, once each:"
  mkdir "$WORK/huge"
  python3 - "$WORK/huge" <<'PY'
import os, sys
for d in range(100):
    p = f"{sys.argv[1]}/d{d}"
    os.makedirs(p)
    for i in range(1000):
        with open(f"{p}/f{i}", "wb") as f:
            f.write(os.urandom(1024))
PY
  for mode in "" ${HUGE_PUBLIC:+--public}; do
    t0=$(date +%s.%N); id=$(put_target "$WORK/huge" $mode); t1=$(date +%s.%N)
    echo "- put ${mode:-(encrypted)}: $(awk "BEGIN {printf \"%.1f\", $t1 - $t0}") s"
    rm -rf "$WORK/out"; run "huge" get "$id"
    echo "- get ${mode:-(encrypted)}: $(echo ${T[huge]} | awk '{printf "%.1f", $NF}') s, $(find "$WORK/out" -type f | wc -l) files"
  done
  if [ $HAVE_SSH = 1 ]; then
    run "huge scp" "${SCP[@]}" -r "root@127.0.0.1:$WORK/huge" "$WORK/out"
    echo "- scp -r: $(echo ${T["huge scp"]} | awk '{printf "%.1f", $NF}') s"
  fi
fi
