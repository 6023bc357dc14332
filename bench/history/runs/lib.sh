# Sourced by the device run scripts (carry [".whl"]): the log folder, the wheels (bench/wheels_setup.sh,
# its output in $OUT/logs/setup.log), and run NAME SECONDS CMD... (a timed command, its log in
# $OUT/logs/NAME.log, its exit status printed).
mkdir -p "$OUT/logs"
source bench/wheels_setup.sh > "$OUT/logs/setup.log" 2>&1 || { tail -5 "$OUT/logs/setup.log"; exit 1; }
run() { local name=$1; shift; timeout "$@" > "$OUT/logs/$name.log" 2>&1; echo "$name: exit $?"; }
