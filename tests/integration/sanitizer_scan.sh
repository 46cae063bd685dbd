# Sourced by the integration scripts: sanitizer_scan DIR fails the script
# (through its `bad`) for every DIR/*.err that holds an ASan, LSan, TSan or
# UBSan report, and shows the report. Run it after the processes have ended
# (leak reports come at exit).
sanitizer_scan() {
  local f
  for f in "$1"/*.err; do
    if grep -q "ERROR: AddressSanitizer\|ERROR: LeakSanitizer\|WARNING: ThreadSanitizer\|runtime error:" "$f"; then
      bad "sanitizer report in $(basename "$f")"
      grep -A30 -m3 "ERROR: \|WARNING: ThreadSanitizer\|runtime error:" "$f"
    fi
  done
}
