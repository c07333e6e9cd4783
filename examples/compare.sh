#!/usr/bin/env bash
# Compares `quic-peer get` with scp in one run on loopback (scp against a
# private sshd this script starts and stops), for one big file and for a
# directory of small files. Each transfer writes its output; rounds alternate
# between the tools and the median of each is printed, with its ratio to the
# quic-peer row. (sendme has no row yet.)
#
#   bash examples/compare.sh [SIZE_MIB] [ROUNDS]     (defaults: 1024 and 3)
#
# Needs /usr/sbin/sshd and scp (Debian: openssh-server) for the scp rows,
# which are left out without them.
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE_MIB=${1:-1024}
ROUNDS=${2:-3}
SMALL_FILES=1000

cargo build --release --quiet
QP=$PWD/target/release/quic-peer
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
"$QP" --listen 127.0.0.1:0 --data-dir "$WORK/holder" --no-http > "$WORK/holder.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 50); do grep -q STARTED "$WORK/holder.log" && break; sleep 0.1; done
HOLDER=$(grep -o 'active on [0-9.:]*' "$WORK/holder.log" | cut -d' ' -f3)
put_id() { "$QP" put "$1" --public --replicas 1 --bootstrap "$HOLDER" 2>/dev/null | sed -n 's/^id: //p'; }
# A put from a client stores on the holder.
BIG_ID=$(put_id "$WORK/big.bin")
SMALL_ID=$(put_id "$WORK/small")

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

# Seconds one command takes.
secs() { local t0 t1; t0=$(date +%s.%N); "$@" > /dev/null 2>&1; t1=$(date +%s.%N); awk "BEGIN {print $t1 - $t0}"; }
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

declare -A T
run() { # name, command...
  local name=$1; shift
  rm -rf "$WORK/out"
  T[$name]+="$(secs "$@") "
}
for r in $(seq 1 "$ROUNDS"); do
  run "quic-peer get" "$QP" get "$BIG_ID" -o "$WORK/out" --bootstrap "$HOLDER"
  if [ $HAVE_SSH = 1 ]; then
    run "scp (aes128-gcm)" "${SCP[@]}" -c aes128-gcm@openssh.com "root@127.0.0.1:$WORK/big.bin" "$WORK/out"
    run "scp (aes128-gcm), then sync" sh -c "$(printf '%q ' "${SCP[@]}") -c aes128-gcm@openssh.com root@127.0.0.1:$WORK/big.bin $WORK/out && sync"
    run "scp (default cipher)" "${SCP[@]}" "root@127.0.0.1:$WORK/big.bin" "$WORK/out"
  fi
  run "quic-peer get, $SMALL_FILES small files" "$QP" get "$SMALL_ID" -o "$WORK/out" --bootstrap "$HOLDER"
  if [ $HAVE_SSH = 1 ]; then
    run "scp -r, $SMALL_FILES small files" "${SCP[@]}" -r "root@127.0.0.1:$WORK/small" "$WORK/out"
  fi
done

big=$(echo ${T["quic-peer get"]} | tr ' ' '\n' | median)
small=$(echo ${T["quic-peer get, $SMALL_FILES small files"]} | tr ' ' '\n' | median)
printf '| %-40s | %8s | %8s | %12s |\n' transfer seconds "MB/s" "this / get"
printf '|%s|%s|%s|%s|\n' "$(printf -- '-%.0s' {1..42})" ---------- ---------- --------------
for name in "quic-peer get" "scp (aes128-gcm)" "scp (aes128-gcm), then sync" "scp (default cipher)" \
            "quic-peer get, $SMALL_FILES small files" "scp -r, $SMALL_FILES small files"; do
  [ -n "${T[$name]:-}" ] || continue
  m=$(echo ${T[$name]} | tr ' ' '\n' | median)
  case $name in *small*) base=$small; bytes=$((SMALL_FILES * 4096));; *) base=$big; bytes=$((SIZE_MIB << 20));; esac
  printf '| %-40s | %8.2f | %8.0f | %12.2f |\n' "$name" "$m" "$(awk "BEGIN {print $bytes / $m / 1e6}")" "$(awk "BEGIN {print $m / $base}")"
done
