#!/bin/sh
# Kernel IPVS-TUN and the lbadm director on the same bed, inside the stock kernel (which has
# IPVS and ipip): the same client traffic through each director to the same two tunl0 real
# servers. Both must deliver every connection; the relative forwarding cost is printed
# (indicative only: under qemu TCG absolute numbers mean nothing).
#
#   client   eth0 198.18.0.10 ───── c0 ─┐
#   director eth0 198.18.0.2 ────── d0 ─┤ br0 (namespace ivl-br)
#            VIP 198.18.0.100/32        │
#   realN    eth0 198.18.0.1N ───── rN ─┘  `lbadm realserver setup --decap tunl0`, server :6033
#
# Each round runs the same load three ways: straight to the reals' own addresses (no director,
# the baseline), through kernel IPVS (`ipvsadm -i`, lbadm detached), and through lbadm (attached
# with native XDP on the director's eth0, IPVS cleared). The load: CONNS sequential
# connections (a short request, the real answers "NAME BYTES" and closes) and BULK_N uploads of
# BULK_BYTES each. Per run: wall time, and busy/softirq jiffies of the whole guest from
# /proc/stat (client, director and reals share the vCPUs; the client's and reals' work is the
# same in every run, so differences come from the forwarding path).
# After one unrecorded warm-up run, rounds alternate the order (IPVS first, then lbadm first)
# to cancel drift. IVL_CONNS, IVL_BULK_N, IVL_BULK_BYTES, IVL_ROUNDS override the sizes.
#
# Usage: ipvs-vs-lbadm.sh /path/to/lbadm     Last line: `ipvs-vs-lbadm: PASS ...` or `... FAIL ...`
# Everything (namespaces, processes, pins, files) is removed on exit, also on failure.
set -u
PATH="$(dirname "${1:-/nonexistent/lbadm}"):$PATH"
CONNS=${IVL_CONNS:-200}
BULK_N=${IVL_BULK_N:-6}
BULK_BYTES=${IVL_BULK_BYTES:-8388608}
ROUNDS=${IVL_ROUNDS:-2}
NS=ivl
VIP=198.18.0.100
PORT=6033
PY=/usr/bin/python3
[ -x "$PY" ] || PY=python3
export LBADM_PIN_DIR=/sys/fs/bpf/lbadm-ivl
T=$(mktemp -d /tmp/ipvs-vs-lbadm.XXXXXX)
# Background processes: each writes its own pid to $T/NAME.pid (`ip netns exec` may fork, so
# $! is not necessarily the process to end).
PIDS=""

say() { echo "ipvs-vs-lbadm: $*"; }
fail() {
  say "FAIL: $*"
  exit 1
}
in_ns() { _ns="$NS-$1"; shift; ip netns exec "$_ns" "$@"; }
# lbadm director commands: only the network namespace changes (`ip netns exec` would remount
# /sys and hide the bpffs that holds the pins).
lbadm_dir() { nsenter --net="/run/netns/$NS-director" lbadm "$@"; }

cleanup() {
  set +e
  own=$(cat "$T"/*.pid 2>/dev/null)
  for p in $own $PIDS; do kill "$p" 2>/dev/null; done
  i=0
  for p in $own; do
    while kill -0 "$p" 2>/dev/null && [ $i -lt 50 ]; do i=$((i + 1)); sleep 0.1; done
    kill -9 "$p" 2>/dev/null
  done
  for p in $PIDS; do wait "$p" 2>/dev/null; done
  if [ -e "$LBADM_PIN_DIR" ]; then
    lbadm_dir detach >/dev/null 2>&1 || rm -rf "$LBADM_PIN_DIR"
  fi
  in_ns director ipvsadm -C 2>/dev/null
  for n in client director real1 real2 br; do ip netns del "$NS-$n" 2>/dev/null; done
  rm -rf "$T"
}
trap cleanup EXIT
trap 'exit 1' INT TERM HUP

for tool in ip ipvsadm ethtool nsenter timeout lbadm "$PY"; do
  command -v "$tool" >/dev/null || fail "$tool is not installed"
done
modprobe ipip && modprobe ip_vs && modprobe ip_vs_rr && modprobe ip_vs_wlc ||
  fail "cannot load ipip / ip_vs / ip_vs_rr / ip_vs_wlc"
for n in client director real1 real2 br; do
  ip netns list | grep -q "^$NS-$n\b" && fail "namespace $NS-$n exists already (a previous run?)"
done

# --- the bed ---------------------------------------------------------------------------------
ip netns add "$NS-br" || fail "ip netns add"
in_ns br sh -c 'echo 1 >/proc/sys/net/ipv6/conf/all/disable_ipv6' 2>/dev/null
ip -n "$NS-br" link add br0 type bridge && ip -n "$NS-br" link set br0 up || fail "bridge"
host() { # NAME PORT ADDR
  ip netns add "$NS-$1" || return 1
  in_ns "$1" sh -c 'echo 1 >/proc/sys/net/ipv6/conf/all/disable_ipv6' 2>/dev/null
  ip -n "$NS-br" link add "$2" type veth peer name eth0 netns "$NS-$1" &&
    ip -n "$NS-br" link set "$2" master br0 &&
    in_ns br ethtool -K "$2" tx off gro on >/dev/null &&
    ip -n "$NS-br" link set "$2" up &&
    in_ns "$1" ethtool -K eth0 tx off >/dev/null &&
    ip -n "$NS-$1" addr add "$3/24" dev eth0 &&
    ip -n "$NS-$1" link set eth0 up &&
    ip -n "$NS-$1" link set lo up
}
host client c0 198.18.0.10 || fail "client namespace"
host director d0 198.18.0.2 || fail "director namespace"
host real1 r1 198.18.0.11 || fail "real1 namespace"
host real2 r2 198.18.0.12 || fail "real2 namespace"
# MTU-sized segments on the wire (XDP forwards frames, not GSO super-frames).
in_ns client ethtool -K eth0 tso off >/dev/null || fail "client offloads"
ip -n "$NS-director" addr add "$VIP/32" dev eth0 || fail "VIP on the director"

# An XDP_PASS program on d0 (the director's peer): veth only delivers XDP_TX frames to a peer
# whose NAPI runs, i.e. one with an XDP program. Attached for every run, so all pay the same.
cat >"$T/pass.py" <<'EOF'
import ctypes, os, socket, struct, sys, time
open(sys.argv[2] + ".pid", "w").write("%d\n" % os.getpid())
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
def bpf(cmd, attr):
    r = libc.syscall(321, ctypes.c_int(cmd), attr, ctypes.c_uint(len(attr)))
    if r < 0:
        raise OSError(ctypes.get_errno(), "bpf(%d)" % cmd)
    return r
insns = ctypes.create_string_buffer(bytes.fromhex("b700000002000000" "9500000000000000"), 16)
lic = ctypes.create_string_buffer(b"GPL")
a = ctypes.create_string_buffer(128)  # BPF_PROG_LOAD: XDP, r0 = XDP_PASS; exit
struct.pack_into("=IIQQIIQII16sII", a, 0, 6, 2, ctypes.addressof(insns), ctypes.addressof(lic),
                 0, 0, 0, 0, 0, b"ivl_pass", 0, 37)
prog = bpf(5, a)
l = ctypes.create_string_buffer(64)  # BPF_LINK_CREATE: BPF_XDP, XDP_FLAGS_DRV_MODE
struct.pack_into("=IIII", l, 0, prog, socket.if_nametoindex(sys.argv[1]), 37, 4)
bpf(28, l)
open(sys.argv[2] + ".ready", "w").write("ok\n")
while True:
    time.sleep(3600)
EOF
# --- the real servers ------------------------------------------------------------------------
cat >"$T/server.py" <<'EOF'
import os, socketserver, sys
open(sys.argv[3], "w").write("%d\n" % os.getpid())
name = sys.argv[1].encode()
class H(socketserver.BaseRequestHandler):
    def handle(self):
        n = 0
        while True:
            b = self.request.recv(262144)
            if not b:
                break
            n += len(b)
        self.request.sendall(name + b" %d\n" % n)
class S(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True
    request_queue_size = 128
S(("0.0.0.0", int(sys.argv[2])), H).serve_forever()
EOF
for i in 1 2; do
  mkdir -p "$T/real$i"
  in_ns "real$i" lbadm realserver setup --vip "$VIP" --decap tunl0 --iface eth0 \
    --sysctl-file "$T/real$i/sysctl.conf" --state-file "$T/real$i/state.json" >"$T/real$i/setup.log" 2>&1 ||
    { cat "$T/real$i/setup.log"; fail "lbadm realserver setup in real$i"; }
  in_ns "real$i" lbadm realserver check --vip "$VIP" --decap tunl0 --iface eth0 \
    --state-file "$T/real$i/state.json" >"$T/real$i/check.log" 2>&1 ||
    { cat "$T/real$i/check.log"; fail "lbadm realserver check in real$i"; }
done
say "real1, real2: lbadm realserver setup --decap tunl0 done, check healthy"
# Nothing that can fail between starting these and the readiness loop (which waits for their
# pid files too), so that the cleanup knows every pid.
ip netns exec "$NS-br" "$PY" "$T/pass.py" d0 "$T/pass" 2>"$T/pass.err" &
PIDS="$PIDS $!"
for i in 1 2; do
  ip netns exec "$NS-real$i" "$PY" "$T/server.py" "real$i" "$PORT" "$T/real$i.pid" 2>"$T/real$i/server.err" &
  PIDS="$PIDS $!"
done
i=0
until [ -s "$T/pass.pid" ] && [ -s "$T/real1.pid" ] && [ -s "$T/real2.pid" ] && [ -s "$T/pass.ready" ] &&
  in_ns real1 ss -Hltn "sport = :$PORT" | grep -q . && in_ns real2 ss -Hltn "sport = :$PORT" | grep -q .; do
  i=$((i + 1))
  [ $i -le 300 ] || { cat "$T/pass.err" "$T"/real*/server.err; fail "servers / XDP pass not ready"; }
  sleep 0.1
done

# --- the client load -------------------------------------------------------------------------
cat >"$T/client.py" <<'EOF'
import socket, sys, time
host, port, conns, bulk_n, bulk_bytes = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
hosts = host.split(",")
def cpu():
    v = [int(x) for x in open("/proc/stat").readline().split()[1:9]]
    return sum(v) - v[3] - v[4], v[6]  # busy (all but idle, iowait), softirq
def request(h, payload, chunk=262144):
    s = socket.create_connection((h, port), timeout=10)
    try:
        for off in range(0, len(payload), chunk):
            s.sendall(payload[off:off + chunk])
        s.shutdown(socket.SHUT_WR)
        reply = b""
        while True:
            b = s.recv(4096)
            if not b:
                break
            reply += b
    finally:
        s.close()
    name, n = reply.decode().split()
    if int(n) != len(payload):
        raise ValueError("%s received %s of %d bytes" % (name, n, len(payload)))
    return name
def run(count, payload):
    seen, errors = {}, 0
    b0, s0, t0 = *cpu(), time.monotonic()
    for i in range(count):
        try:
            name = request(hosts[i % len(hosts)], payload)
            seen[name] = seen.get(name, 0) + 1
        except Exception as e:
            errors += 1
            if errors <= 3:
                print("ipvs-vs-lbadm:   connection %d: %s" % (i, e), file=sys.stderr)
    t1, (b1, s1) = time.monotonic(), cpu()
    return seen, errors, t1 - t0, b1 - b0, s1 - s0
seen, err, secs, busy, sirq = run(conns, b"hello\n")
bseen, berr, bsecs, bbusy, bsirq = run(bulk_n, bytes(bulk_bytes))
fmt = lambda d: ",".join("%s:%d" % kv for kv in sorted(d.items())) or "-"
print("answered=%d errors=%d per_real=%s secs=%.3f busy=%d softirq=%d "
      "bulk_answered=%d bulk_errors=%d bulk_per_real=%s bulk_secs=%.3f bulk_busy=%d bulk_softirq=%d"
      % (sum(seen.values()), err, fmt(seen), secs, busy, sirq,
         sum(bseen.values()), berr, fmt(bseen), bsecs, bbusy, bsirq))
EOF
: >"$T/results"
problems=0
# load MODE TARGETS [CONNS BULK_N BULK_BYTES]: runs the client, checks that every connection
# was answered, by both reals; records the figures (except for MODE warmup).
load() {
  c=${3:-$CONNS} bn=${4:-$BULK_N} bb=${5:-$BULK_BYTES}
  out=$(timeout 120 ip netns exec "$NS-client" "$PY" "$T/client.py" "$2" "$PORT" "$c" "$bn" "$bb" 2>&1)
  rc=$?
  say "  $1: $(printf '%s\n' "$out" | tr '\n' ' ')"
  line=$(printf '%s\n' "$out" | grep '^answered=')
  [ $rc = 0 ] && [ -n "$line" ] || { problems=$((problems + 1)); say "  $1: ERROR: client failed (exit $rc)"; return 1; }
  [ "$1" = warmup ] || echo "mode=$1 round=$r $line" >>"$T/results"
  case "$line" in
    "answered=$c errors=0 per_real=real1:"*",real2:"*" "*"bulk_answered=$bn bulk_errors=0 "*) ;;
    *) problems=$((problems + 1)); say "  $1: ERROR: not every connection was answered by a real (both reals expected)";;
  esac
}
# The service's connection count in `-L -n --stats --exact` output (ipvsadm's or lbadm's).
dir_conns() {
  awk -v s="$VIP:$PORT" '$1 == "TCP" && $2 == s { print $3 }'
}
expect=$((CONNS + BULK_N))
run_ipvs() {
  in_ns director ipvsadm -A -t "$VIP:$PORT" -s rr &&
    in_ns director ipvsadm -a -t "$VIP:$PORT" -r 198.18.0.11 -i -w 1 &&
    in_ns director ipvsadm -a -t "$VIP:$PORT" -r 198.18.0.12 -i -w 1 ||
    { problems=$((problems + 1)); say "  ipvs: ERROR: ipvsadm configuration failed"; return; }
  load ipvs "$VIP"
  # IPVS folds its per-CPU counters into what it reports every 2 s (the rate estimator).
  i=0
  while c=$(in_ns director ipvsadm -L -n --stats --exact | dir_conns) &&
    [ "${c:-0}" != "$expect" ] && [ $i -lt 16 ]; do
    i=$((i + 1))
    sleep 0.5
  done
  say "  ipvs: kernel IPVS counted ${c:-?} connections (expected $expect)"
  [ "${c:-0}" = "$expect" ] || { problems=$((problems + 1)); say "  ipvs: ERROR: the traffic did not all cross IPVS"; }
  in_ns director ipvsadm -C
}
run_lbadm() {
  a=$(lbadm_dir attach --iface eth0 2>&1) ||
    { problems=$((problems + 1)); say "  lbadm: ERROR: attach failed: $a"; return; }
  say "  lbadm: $(printf '%s' "$a" | tr '\n' ' ')"
  lbadm_dir -A -t "$VIP:$PORT" -s rr &&
    lbadm_dir -a -t "$VIP:$PORT" -r 198.18.0.11 -i -w 1 &&
    lbadm_dir -a -t "$VIP:$PORT" -r 198.18.0.12 -i -w 1 ||
    { problems=$((problems + 1)); say "  lbadm: ERROR: lbadm configuration failed"; lbadm_dir detach >/dev/null 2>&1; return; }
  load lbadm "$VIP"
  c=$(lbadm_dir -L -n --stats --exact | dir_conns)
  say "  lbadm: lbadm counted ${c:-?} connections (expected $expect)"
  [ "${c:-0}" = "$expect" ] || { problems=$((problems + 1)); say "  lbadm: ERROR: the traffic did not all cross lbadm"; }
  lbadm_dir detach >/dev/null || { problems=$((problems + 1)); say "  lbadm: ERROR: detach failed"; }
}

say "kernel $(uname -r), $(nproc) vCPUs; $CONNS connections + $BULK_N x $BULK_BYTES-byte uploads per run, $ROUNDS rounds"
started=$(date +%s)
r=0
load warmup 198.18.0.11,198.18.0.12 50 2 1048576
r=1
while [ $r -le "$ROUNDS" ]; do
  say "round $r"
  load direct 198.18.0.11,198.18.0.12
  if [ $((r % 2)) = 1 ]; then run_ipvs; run_lbadm; else run_lbadm; run_ipvs; fi
  say "round $r done after $(($(date +%s) - started)) s"
  r=$((r + 1))
done

# --- wlc, side by side -----------------------------------------------------------------------
# Held connections through each director under wlc, ipvsadm's default: where each new one lands
# (the counts, the weights, a quiesced real coming back, ties) must be the same sequence under
# kernel IPVS and under lbadm.
cat >"$T/held.py" <<'EOF'
import socket, sys, time
# Commands on stdin: "open N" opens N connections (held; one at a time, so that each handshake
# has reached the director before the next SYN), "close" ends them all and prints the real that
# answered each, in order. Each command answers one line.
host, port = sys.argv[1], int(sys.argv[2])
held = []
for line in sys.stdin:
    cmd = line.split()
    if cmd[0] == "open":
        for _ in range(int(cmd[1])):
            held.append(socket.create_connection((host, port), timeout=10))
            time.sleep(0.2)
        print("opened %d" % len(held), flush=True)
    elif cmd[0] == "close":
        names = []
        for s in held:
            s.shutdown(socket.SHUT_WR)
            reply = b""
            while True:
                b = s.recv(4096)
                if not b:
                    break
                reply += b
            s.close()
            names.append(reply.decode().split()[0] if reply else "none")
        print(" ".join(names), flush=True)
        held = []
EOF
# ask CMD N: sends CMD to held.py and waits for its N-th line of answers.
ask() {
  echo "$1" >&3
  i=0
  until [ "$(wc -l <"$T/held.out")" -ge "$2" ]; do
    i=$((i + 1))
    [ $i -le 600 ] || { cat "$T/held.err"; return 1; }
    sleep 0.1
  done
}
# wlc_sequence KIND: the reals of 14 held connections through KIND (ipvs | lbadm), one line.
wlc_sequence() {
  if [ "$1" = ipvs ]; then dir() { in_ns director ipvsadm "$@"; }; else dir() { lbadm_dir "$@"; }; fi
  rm -f "$T/held.in" "$T/held.out"
  mkfifo "$T/held.in" || return 1
  ip netns exec "$NS-client" "$PY" "$T/held.py" "$VIP" "$PORT" <"$T/held.in" >"$T/held.out" 2>"$T/held.err" &
  hp=$!
  exec 3>"$T/held.in"
  dir -A -t "$VIP:$PORT" &&
    dir -a -t "$VIP:$PORT" -r 198.18.0.11 -i -w 1 &&
    dir -a -t "$VIP:$PORT" -r 198.18.0.12 -i -w 0 &&
    ask "open 4" 1 &&
    dir -e -t "$VIP:$PORT" -r 198.18.0.12 -i -w 1 &&
    ask "open 6" 2 &&
    dir -e -t "$VIP:$PORT" -r 198.18.0.11 -i -w 3 &&
    ask "open 4" 3 &&
    ask "close" 4
  ok=$?
  exec 3>&-
  wait "$hp" 2>/dev/null
  [ $ok = 0 ] && sed -n 4p "$T/held.out"
}
ipvs_seq=$(wlc_sequence ipvs)
in_ns director ipvsadm -C
lbadm_dir attach --iface eth0 >/dev/null 2>&1 || { problems=$((problems + 1)); say "ERROR: lbadm attach for wlc failed"; }
lbadm_seq=$(wlc_sequence lbadm)
lbadm_dir detach >/dev/null 2>&1
say "wlc, kernel IPVS: ${ipvs_seq:-(failed)}"
say "wlc, lbadm:       ${lbadm_seq:-(failed)}"
if [ -z "$ipvs_seq" ] || [ "$ipvs_seq" != "$lbadm_seq" ]; then
  problems=$((problems + 1))
  say "ERROR: wlc placed the held connections differently from kernel IPVS"
fi

# --- summary ---------------------------------------------------------------------------------
"$PY" - "$T/results" "$CONNS" "$BULK_N" "$BULK_BYTES" <<'EOF'
import sys
rows = [dict(kv.split("=", 1) for kv in line.split()) for line in open(sys.argv[1])]
conns, bulk_n, bulk_bytes = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
mib = bulk_n * bulk_bytes / 1048576
tot = {}
for r in rows:
    t = tot.setdefault(r["mode"], [0, 0.0, 0, 0, 0.0, 0, 0])
    t[0] += 1
    for i, k in enumerate(["secs", "busy", "softirq", "bulk_secs", "bulk_busy", "bulk_softirq"], 1):
        t[i] += float(r[k])
m = {}
for mode, (n, secs, busy, sirq, bsecs, bbusy, bsirq) in tot.items():
    m[mode] = dict(ms_conn=1000 * secs / (n * conns), j_conn=busy / (n * conns), sirq_conn=sirq / (n * conns),
                   mibs=n * mib / bsecs, j_mib=bbusy / (n * mib), sirq_mib=bsirq / (n * mib))
    print("ipvs-vs-lbadm: %-6s %d run(s): %.2f ms/connection, %.3f busy jiffies/connection "
          "(%.3f softirq); upload %.1f MiB/s, %.2f busy jiffies/MiB (%.2f softirq)"
          % (mode, n, m[mode]["ms_conn"], m[mode]["j_conn"], m[mode]["sirq_conn"],
             m[mode]["mibs"], m[mode]["j_mib"], m[mode]["sirq_mib"]))
if "ipvs" in m and "lbadm" in m:
    i, l = m["ipvs"], m["lbadm"]
    ratio = lambda a, b: "%.2f" % (a / b) if b else "n/a"
    print("ipvs-vs-lbadm: lbadm/IPVS ratios: time per connection %s, busy CPU per connection %s, "
          "upload throughput %s, busy CPU per MiB %s"
          % (ratio(l["ms_conn"], i["ms_conn"]), ratio(l["j_conn"], i["j_conn"]),
             ratio(l["mibs"], i["mibs"]), ratio(l["j_mib"], i["j_mib"])))
    byround = {}
    for r in rows:
        byround.setdefault(r["round"], {})[r["mode"]] = r
    spread = []
    for rnd, rr in sorted(byround.items()):
        if "ipvs" in rr and "lbadm" in rr:
            f = lambda k: float(rr["lbadm"][k]) / float(rr["ipvs"][k]) if float(rr["ipvs"][k]) else float("nan")
            spread.append("round %s: %.2f / %.2f / %.2f / %.2f" % (
                rnd, f("secs"), f("busy"), 1 / f("bulk_secs"), f("bulk_busy")))
    print("ipvs-vs-lbadm: the same ratios per round: " + "; ".join(spread))
    if "direct" in m:
        d = m["direct"]
        extra = lambda k: ratio(l[k] - d[k], i[k] - d[k]) if l[k] > d[k] and i[k] > d[k] else "n/a (within noise)"
        print("ipvs-vs-lbadm: cost above the direct baseline (director + tunnel), lbadm/IPVS: "
              "time per connection %s, busy CPU per connection %s, busy CPU per MiB %s"
              % (extra("ms_conn"), extra("j_conn"), extra("j_mib")))
EOF
elapsed=$(($(date +%s) - started))
runs=$(grep -c '^mode=ipvs\|^mode=lbadm' "$T/results")
if [ "$problems" = 0 ] && [ "$runs" = $((2 * ROUNDS)) ]; then
  say "PASS: kernel IPVS and lbadm each delivered all $CONNS connections and $BULK_N uploads in each of $ROUNDS rounds, and placed 14 held connections alike under wlc (${elapsed} s)"
else
  fail "$problems problem(s) (see ERROR lines above)"
fi
