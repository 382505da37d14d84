#!/bin/sh
# The VM suite of `cargo xtask vm-test`, run as root inside the guest (Debian's stock kernel)
# with the host's /bin/sh. $VM_RUN is the run directory shared with the host (read-write):
#   $VM_RUN/tests   one line per test binary: NAME<TAB>EXECUTABLE<TAB>WORKING-DIRECTORY
#   $VM_RUN/args    harness arguments, one per line (e.g. a test-name filter)
# For each binary it writes $VM_RUN/NAME.log (its output) and $VM_RUN/NAME.rc (exit status),
# which xtask reads to report. Exits non-zero when any binary failed.
set -u
echo "vm-suite: kernel $(uname -r), $(nproc) vCPUs, RUN_IN_VM=${RUN_IN_VM:-}"
grep -q ' /sys/fs/bpf bpf ' /proc/mounts && echo "vm-suite: bpffs mounted at /sys/fs/bpf"
# ipip is NOT loaded here: the realserver tests must load it themselves (the kernel's module
# autoload, through the host's /sbin/modprobe and the guest kernel's bind-mounted modules).
echo "vm-suite: ipip loaded before the tests: $([ -d /sys/module/ipip ] && echo yes || echo no)"
set --
if [ -s "$VM_RUN/args" ]; then
  while IFS= read -r a; do set -- "$@" "$a"; done <"$VM_RUN/args"
fi
status=0
tab=$(printf '\t')
while IFS="$tab" read -r name exe dir; do
  [ -n "$name" ] || continue
  echo "vm-suite: ===== $name ($exe) ====="
  rm -f "$VM_RUN/$name.rc"
  {
    (cd "$dir" && exec "$exe" "$@" </dev/null 2>&1)
    echo $? >"$VM_RUN/$name.rc"
  } | tee "$VM_RUN/$name.log"
  rc=$(cat "$VM_RUN/$name.rc" 2>/dev/null || echo 255)
  echo "vm-suite: ===== $name: exit $rc ====="
  [ "$rc" = 0 ] || status=1
  if [ "$name" = realserver ] && [ $# -eq 0 ]; then
    # Its tunl0 tests skip (and pass) on a kernel without ipip: here they must have run.
    if [ -d /sys/module/ipip ] && ip -o link show tunl0 >/dev/null 2>&1; then
      echo "vm-suite: realserver: the ipip module got loaded and tunl0 exists: its tunl0 tests ran"
    else
      echo "vm-suite: ERROR: realserver did not load ipip, so its tunl0 tests skipped;" \
        "modprobe ipip says: $(modprobe ipip 2>&1 && echo ok)"
      echo 1 >"$VM_RUN/ipip.failed"
      status=1
    fi
  fi
done <"$VM_RUN/tests"
if [ $# -eq 0 ]; then
  # ipvsadm side by side with lbadm against kernel IPVS (only here: the host has no IPVS).
  lbadm=""
  while IFS="$tab" read -r name exe dir; do
    [ -x "$(dirname "$exe")/../lbadm" ] && lbadm="$(dirname "$exe")/../lbadm" && break
  done <"$VM_RUN/tests"
  echo "vm-suite: ===== ipvsadm-side-by-side ====="
  sh "$(dirname "$0")/ipvsadm-side-by-side.sh" "$lbadm" 2>&1 | tee "$VM_RUN/side-by-side.log"
  [ -s "$VM_RUN/side-by-side.log" ] && grep -q ' 0 different$' "$VM_RUN/side-by-side.log" || status=1
  # Kernel IPVS-TUN and the lbadm director on the same bed, same traffic, same tunl0 reals.
  echo "vm-suite: ===== ipvs-vs-lbadm ====="
  sh "$(dirname "$0")/ipvs-vs-lbadm.sh" "$lbadm" 2>&1 | tee "$VM_RUN/ipvs-vs-lbadm.log"
  grep -q '^ipvs-vs-lbadm: PASS' "$VM_RUN/ipvs-vs-lbadm.log" || status=1
  # Forwarded packet rate, director only: the same sender and sink, lbadm against kernel
  # IPVS-TUN (lb-bench's pps section; indicative under emulation, so it informs, not gates).
  bench="$(dirname "$lbadm")/../release/lb-bench"
  [ -x "$bench" ] || bench="$(dirname "$lbadm")/lb-bench"
  if [ -x "$bench" ]; then
    echo "vm-suite: ===== pps (lbadm vs kernel IPVS) ====="
    "$bench" --only pps 2>&1 | tee "$VM_RUN/pps.log"
  else
    echo "vm-suite: pps: no lb-bench next to lbadm; not measured"
  fi
fi
exit $status
