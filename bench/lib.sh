# Shared by the bench scripts (bench/auth, bench/ratelimit): processes started and ended by
# PID, readiness checks, and one wrk run recorded as a line of $OUT/results.tsv.
# The caller sets RUN, OUT, DUR and LOAD_CPUS, fills S_PEER (scenario -> peer name) and defines
# run_wrk SCENARIO SECONDS OUTFILE; PID[name] is filled by start.
log() { echo "[$(date +%H:%M:%S)] $*" >&2; }

STARTED=()
cleanup() {
  local p i
  for ((i=${#STARTED[@]}-1; i>=0; i--)); do kill -TERM "${STARTED[$i]}" 2>/dev/null || true; done
  for i in $(seq 50); do
    local alive=0
    for p in "${STARTED[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
    [ $alive = 0 ] && break; sleep 0.1
  done
  for p in "${STARTED[@]}"; do kill -0 "$p" 2>/dev/null && { log "KILL $p"; kill -KILL "$p"; }; done
  STARTED=()
}
trap cleanup EXIT
trap 'exit 130' INT TERM
declare -A PID
start() {  # name cpus cmd...
  local name=$1 cpus=$2; shift 2
  taskset -c "$cpus" "$@" > "$RUN/$name.out" 2>&1 &
  PID[$name]=$!; STARTED+=($!)
  log "started $name pid=$! cpus=$cpus"
}
wait_ready() {  # name url [header]
  local i
  for i in $(seq 100); do
    [ "$(curl -s -m 1 -o /dev/null -w '%{http_code}' ${3:+-H "$3"} "$2")" = 200 ] && return 0
    kill -0 "${PID[$1]}" 2>/dev/null || { log "$1 died: $(tail -5 "$RUN/$1.out")"; exit 1; }
    sleep 0.1
  done
  log "$1 not ready at $2"; exit 1
}
cpu_ticks() {  # utime+stime of a PID and its direct children
  local p t=0 f
  for p in "$1" $(ps -o pid= --ppid "$1" 2>/dev/null); do
    f=$(cat "/proc/$p/stat" 2>/dev/null) || continue
    f=${f##*) }; set -- $f; t=$((t + ${12} + ${13}))
  done
  echo $t
}
HZ=$(getconf CLK_TCK)
to_ms() { awk -v v="$1" 'BEGIN{ if (v ~ /us$/) printf "%.3f", v/1000; else if (v ~ /ms$/) printf "%.3f", v+0; else if (v ~ /s$/) printf "%.3f", v*1000; else print "NA" }'; }

results_header() {
  echo -e "scenario\tpeer\tround\trps\tp50_ms\tp99_ms\tcpu_pct\treq_per_cpu_s\tnon2xx\terrors" > "$OUT/results.tsv"
}
run_one() {  # scenario round
  local s=$1 r=$2 f="$OUT/$1-r$2.txt" pid=${PID[${S_PEER[$1]}]} t0 t1
  t0=$(cpu_ticks "$pid")
  run_wrk "$s" "$DUR" "$f" || true
  t1=$(cpu_ticks "$pid")
  local rps p50 p99 nreq cpu_s cpu_pct rpc non2xx err
  rps=$(awk '/^Requests\/sec:/{print $2}' "$f")
  p50=$(to_ms "$(awk '$1=="50%"{print $2}' "$f")")
  p99=$(to_ms "$(awk '$1=="99%"{print $2}' "$f")")
  nreq=$(awk '/ requests in /{print $1}' "$f")
  non2xx=$(awk '/Non-2xx/{print $NF}' "$f"); non2xx=${non2xx:-0}
  err=$(awk '/Socket errors/{sub(/^ +/, ""); printf "%s", $0}' "$f")
  cpu_s=$(awk -v a="$t0" -v b="$t1" -v hz="$HZ" 'BEGIN{printf "%.2f", (b-a)/hz}')
  cpu_pct=$(awk -v c="$cpu_s" -v d="$DUR" 'BEGIN{printf "%.0f", 100*c/d}')
  rpc=$(awk -v n="${nreq:-0}" -v c="$cpu_s" 'BEGIN{ if (c>0) printf "%.0f", n/c; else print "NA"}')
  echo -e "$s\t${S_PEER[$s]}\t$r\t${rps:-NA}\t$p50\t$p99\t$cpu_pct\t$rpc\t$non2xx\t${err:--}" >> "$OUT/results.tsv"
  log "$s r$r: rps=${rps:-NA} p50=${p50}ms p99=${p99}ms cpu=${cpu_pct}% req/cpu-s=$rpc non2xx=$non2xx ${err}"
}

