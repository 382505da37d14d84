#!/bin/sh
# ipvsadm and lbadm side by side inside the stock kernel (which has IPVS): the same command
# sequences applied to kernel IPVS with Debian's ipvsadm and to lbadm's maps, every output,
# error text and exit code compared byte for byte. Differences the README lists as deliberate
# are normalised here and named: the version line's size (IPVS's hash size vs lbadm's
# connection-table capacity). Usage: ipvsadm-side-by-side.sh /path/to/lbadm
set -u
# Both are run by name (argv[0] appears in their usage messages).
PATH="$(dirname "$1"):$PATH"
LBADM=lbadm
IPVSADM=ipvsadm
command -v ipvsadm >/dev/null || { echo "side-by-side: ERROR: ipvsadm is not installed"; exit 1; }
modprobe ip_vs && modprobe ip_vs_rr && modprobe ip_vs_wrr && modprobe ip_vs_lc && modprobe ip_vs_wlc \
  && modprobe ip_vs_sed && modprobe ip_vs_nq || { echo "side-by-side: ERROR: no IPVS modules"; exit 1; }
export LBADM_PIN_DIR=/sys/fs/bpf/lbadm-side-by-side
"$LBADM" attach --iface lo --generic >/dev/null || { echo "side-by-side: ERROR: lbadm attach failed"; exit 1; }
trap '"$LBADM" detach >/dev/null 2>&1; "$IPVSADM" -C' EXIT
failures=0
checks=0
norm() { sed 's/(size=[0-9]*)/(size=N)/'; }
# same ARGS...: run both, compare stdout, stderr and exit code.
same() {
  checks=$((checks + 1))
  a=$("$IPVSADM" "$@" 2>/tmp/sbs.a.err </tmp/sbs.stdin | norm); arc=$?
  b=$("$LBADM" "$@" 2>/tmp/sbs.b.err </tmp/sbs.stdin | norm); brc=$?
  # exit status of the program, not of norm
  "$IPVSADM" "$@" >/dev/null 2>&1 </tmp/sbs.stdin; arc=$?
  "$LBADM" "$@" >/dev/null 2>&1 </tmp/sbs.stdin; brc=$?
  ae=$(sed "s/ipvsadm/PROG/g" /tmp/sbs.a.err); be=$(sed "s/lbadm/PROG/g" /tmp/sbs.b.err)
  if [ "$a" != "$b" ] || [ "$ae" != "$be" ] || [ "$arc" != "$brc" ]; then
    failures=$((failures + 1))
    echo "side-by-side: DIFFERENT: $*"
    echo "--- ipvsadm (exit $arc)"; printf '%s\n' "$a" "$ae" | cat -A | sed 's/^/    /'
    echo "--- lbadm (exit $brc)"; printf '%s\n' "$b" "$be" | cat -A | sed 's/^/    /'
  fi
}
# apply ARGS...: a configuration step on both (compared too).
: >/tmp/sbs.stdin
"$IPVSADM" -C
same -A -t 10.0.0.100:6033 -s wrr
same -a -t 10.0.0.100:6033 -r 10.0.1.11 -i -w 3
same -a -t 10.0.0.100:6033 -r 10.0.1.12:6033 -i -w 1
same -A -t 10.0.0.100:3306 -s rr -p 600
same -a -t 10.0.0.100:3306 -r 10.0.1.13 -i -w 0
same -A -u 10.0.0.101:53 -s rr
same -a -u 10.0.0.101:53 -r 10.0.1.21 -i -w 2147483647
same -A -t 200.0.0.1:80 -s rr
same -a -t 200.0.0.1:80 -r 10.0.1.30 -i
same -L -n
same -Ln
same -L -n --stats
same -L -n --stats --exact
same -L -n --rate
same -L -n -t 10.0.0.100:6033
same -L -n -t 10.0.0.100:3306 --stats
same -L -n -c
same -L --timeout
same -S -n
same -Sn
same -e -t 10.0.0.100:6033 -r 10.0.1.12 -i -w 5
same -d -t 10.0.0.100:3306 -r 10.0.1.13
same -E -t 10.0.0.100:3306 -s wrr -p 60
same -L -n
# errors: texts and exit codes
same -A -t 10.0.0.100:6033 -s wrr
same -a -t 10.0.0.100:6033 -r 10.0.1.11 -i
same -d -t 10.0.0.100:6033 -r 10.0.1.99
same -e -t 10.0.0.100:6033 -r 10.0.1.99 -i -w 1
same -D -t 10.0.0.200:80
same -a -t 10.0.0.200:80 -r 10.0.1.1 -i
same -L -n -t 10.0.0.200:80
same -a -t 10.0.0.100:6033 -r 10.0.1.40 -i -w abc
same -a -t 10.0.0.100:6033 -r 10.0.1.40 -i -w 2147483648
same -A -t 10.0.0.102
same -A -t 10.0.0.102:80 -p 0
same -A -t 10.0.0.102:80 -s rr -w 1
same -t 10.0.0.100:6033 -A
same -L -n -L
same -L -n -n
same -L --bogus
same -L -c -t 10.0.0.100:6033
same -L -c --stats
same -Z -t 10.0.0.200:80
same -D -t 10.0.0.100:6033
# the least-connection schedulers, the default one, and thresholds
same -A -t 10.0.0.110:6033
same -A -t 10.0.0.111:6033 -s lc
same -A -t 10.0.0.112:6033 -s sed
same -A -t 10.0.0.113:6033 -s nq
same -a -t 10.0.0.110:6033 -r 10.0.1.50 -i -w 2 -x 100 -y 50
same -a -t 10.0.0.110:6033 -r 10.0.1.51 -i -x 10
same -a -t 10.0.0.110:6033 -r 10.0.1.52 -i -x 10 -y 20
same -a -t 10.0.0.110:6033 -r 10.0.1.52 -i -y 5
same -a -t 10.0.0.110:6033 -r 10.0.1.52 -i -x -1
same -a -t 10.0.0.110:6033 -r 10.0.1.52 -i -y abc
same -a -t 10.0.0.111:6033 -r 10.0.1.53 -i -w 3
same -e -t 10.0.0.110:6033 -r 10.0.1.51 -i -x 20 -y 20
same -e -t 10.0.0.110:6033 -r 10.0.1.50 -i -x 1 -y 2
same -L -n --thresholds
same -L -n --thresholds -t 10.0.0.110:6033
same -L -n
same -S -n
same -e -t 10.0.0.110:6033 -r 10.0.1.51 -i
same -L -n --thresholds
same -E -t 10.0.0.111:6033 -s wlc
same -L -n -t 10.0.0.111:6033
# restore of the same file into empty tables
"$IPVSADM" -S -n >/tmp/sbs.saved
: >/tmp/sbs.stdin
same -C
cp /tmp/sbs.saved /tmp/sbs.stdin
same -R
: >/tmp/sbs.stdin
same -S -n
same -L -n
echo "side-by-side: $checks comparisons, $failures different"
[ "$failures" = 0 ]
