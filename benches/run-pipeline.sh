#!/usr/bin/env bash
# Whole-pipeline benchmark with the release binaries:
#   generator child → agent-shim → logdrain-gateway → logdrain-test-intake
# (or logdrain-loadgen playing many shims → gateway → intake).
#
# Reports wall time, CPU seconds (user+sys) and peak RSS of every process,
# lines/s acked (durable at the gateway) and delivered (accepted by the
# intake, timed by the intake's own record of its last accepted line), and
# each vendor's read → accepted latency (p50/p99/p999), then one JSON line
# for scripts. Each run is one sample: run it several times and take
# medians (docs/benchmarks.md).
#
# Needs: cargo, /usr/bin/time (Debian package `time`), curl, jq, python3
# (only for --rate). CloudWatch needs a running moto_server (--moto URL);
# its deliveries are not counted or timed (moto is too slow for that).
#
# Usage: benches/run-pipeline.sh [options]   (--help lists them)
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: benches/run-pipeline.sh [options]

  --lines N            lines per shim, or in total with --loadgen-streams (default 1000000)
  --line-bytes N       bytes per line, newline included (default 100)
  --shims N            shims, each wrapping its own generator (default 1)
  --rate N             lines/s per shim (total with --loadgen-streams); 0 = as fast as
                       possible: the shim wraps `seq` (default 0)
  --vendors LIST       comma list of datadog,sentry,newrelic,cloudwatch, or none to only
                       queue (default datadog)
  --moto URL           a running moto_server, required for cloudwatch
  --loadgen-streams N  logdrain-loadgen plays N streams instead of shims (fleet runs)
  --batch-lines N      lines per loadgen batch (default 1000)
  --outage SECONDS     every vendor answers 503 for the first SECONDS (default 0)
  --sample SECONDS     gateway RSS/CPU sampling interval, written to gateway.csv (default 1)
  --timeout SECONDS    longest wait for delivery (default 1800)
  --out DIR            keep logs, samples and the report here (default: a temp dir)
  --no-build           use the binaries already in target/release
  -h, --help           this text
EOF
}

die() {
    echo "run-pipeline: error: $*" >&2
    exit 2
}

lines=1000000 line_bytes=100 shims=1 rate=0 vendors=datadog moto="" streams=0 batch_lines=1000
outage=0 sample=1 timeout=1800 out="" build=1
while [[ $# -gt 0 ]]; do
    case "$1" in
        --lines) lines=$2; shift 2 ;;
        --line-bytes) line_bytes=$2; shift 2 ;;
        --shims) shims=$2; shift 2 ;;
        --rate) rate=$2; shift 2 ;;
        --vendors) vendors=$2; shift 2 ;;
        --moto) moto=$2; shift 2 ;;
        --loadgen-streams) streams=$2; shift 2 ;;
        --batch-lines) batch_lines=$2; shift 2 ;;
        --outage) outage=$2; shift 2 ;;
        --sample) sample=$2; shift 2 ;;
        --timeout) timeout=$2; shift 2 ;;
        --out) out=$2; shift 2 ;;
        --no-build) build=0; shift ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; die "unknown option $1" ;;
    esac
done
for n in lines line_bytes shims rate streams batch_lines outage timeout; do
    [[ ${!n} =~ ^[0-9]+$ ]] || die "--${n//_/-} ${!n} is not a whole number"
done
[[ $sample =~ ^[0-9]+(\.[0-9]+)?$ ]] || die "--sample $sample is not a number of seconds"
((lines > 0 && shims > 0 && line_bytes > 1)) || die "--lines and --shims must be at least 1, --line-bytes at least 2"
for tool in /usr/bin/time curl jq; do
    command -v "$tool" >/dev/null || die "$tool not found; install it (Debian: apt-get install time curl jq)"
done
((rate == 0 || streams > 0)) || command -v python3 >/dev/null || die "--rate needs python3 for the rate-limited generator"

# Vendors: which secrets the sources send, which intake counts them.
counted=()
secrets=()
dd_key=dd-bench-key
sentry_key=0123456789abcdef0123456789abcdef
nr_key=nr-bench-license-key
IFS=, read -ra wanted <<<"$vendors"
for vendor in "${wanted[@]}"; do
    case "$vendor" in
        none) ;; # no destination: lines are only queued (ingest alone)
        datadog) counted+=(datadog); secrets+=("DATADOG_TOKEN=$dd_key") ;;
        sentry) counted+=(sentry) ;; # the DSN needs the intake's address: below
        newrelic) counted+=(newrelic); secrets+=("NEW_RELIC_LICENSE_KEY=$nr_key") ;;
        cloudwatch)
            [[ -n $moto ]] || die "cloudwatch needs --moto URL (a running moto_server)"
            secrets+=(AWS_ACCESS_KEY_ID=AKIDLOGDRAINBENCH AWS_SECRET_ACCESS_KEY=logdrain-bench-secret AWS_REGION=us-west-2)
            ;;
        *) die "unknown vendor $vendor; use datadog, sentry, newrelic, cloudwatch or none" ;;
    esac
done

repo=$(cd "$(dirname "$0")/.." && pwd)
if ((build)); then
    (cd "$repo" && cargo build --release -p logdrain-gateway -p agent-shim -p logdrain-test-intake)
fi
bin=$(cd "$repo" && cargo metadata --format-version 1 --no-deps | jq -r .target_directory)/release
for b in logdrain-gateway agent-shim logdrain-test-intake logdrain-loadgen; do
    [[ -x $bin/$b ]] || die "$bin/$b is missing; run without --no-build"
done

if [[ -z $out ]]; then
    out=$(mktemp -d)
fi
mkdir -p "$out"
rm -f "$out"/*.time "$out"/*.hwm "$out"/loadgen.out
work=$(mktemp -d)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
clk_tck=$(getconf CLK_TCK)
# "<user+sys CPU seconds> <peak RSS KiB>" of a running process.
proc_usage() {
    local pid=$1 ticks hwm
    ticks=$(sed 's/.*) //' "/proc/$pid/stat" | awk '{print $12 + $13}')
    hwm=$(awk '/^VmHWM:/ {print $2}' "/proc/$pid/status")
    awk -v t="$ticks" -v hz="$clk_tck" -v h="$hwm" 'BEGIN {printf "%.2f %d\n", t / hz, h}'
}
now() { date +%s.%N; }
# Writes the peak RSS (VmHWM, KiB) of the process that `time_pid` (a
# /usr/bin/time) runs into `file`, until it exits. /usr/bin/time's own %M
# cannot be used for the shim: wait4 reports the largest RSS of the shim and
# its waited-for child.
watch_hwm() {
    local time_pid=$1 file=$2 pid="" hwm
    for _ in $(seq 200); do
        pid=$(pgrep -P "$time_pid" | head -1 || true)
        [[ -n $pid ]] && break
        sleep 0.05
    done
    [[ -n $pid ]] || return 0
    while hwm=$(awk '/^VmHWM:/ {print $2}' "/proc/$pid/status" 2>/dev/null) && [[ -n $hwm ]]; do
        echo "$hwm" >"$file"
        sleep 0.2
    done
}

# Intake: the counting intake counts and times lines, checks and keeps none.
intake_port=$(free_port)
intake=http://127.0.0.1:$intake_port
INTAKE_LISTEN=127.0.0.1:$intake_port INTAKE_DATADOG_KEYS=$dd_key INTAKE_SENTRY_KEYS=$sentry_key \
    INTAKE_NEWRELIC_KEYS=$nr_key INTAKE_COUNT_ONLY=true RUST_LOG=warn \
    "$bin/logdrain-test-intake" >"$out/intake.log" 2>&1 &
intake_pid=$!
pids+=("$intake_pid")
for _ in $(seq 100); do
    curl -sf "$intake/_intake/stats" >/dev/null && break
    sleep 0.1
done
curl -sf "$intake/_intake/stats" >/dev/null || die "the intake did not start; see $out/intake.log"
for vendor in "${counted[@]}"; do
    if [[ $vendor == sentry ]]; then
        secrets+=("SENTRY_DSN=http://$sentry_key@127.0.0.1:$intake_port/42")
    fi
done

# Gateway.
signing_key=bench-signing-key-0123456789abcdef
gateway_env=(LOGDRAIN_DATA_DIR="$work/gw" LOGDRAIN_SIGNING_KEY="$signing_key" LOGDRAIN_GRPC_LISTEN=127.0.0.1:0
    LOGDRAIN_HTTP_LISTEN=127.0.0.1:0 LOGDRAIN_DATADOG_URL="$intake" LOGDRAIN_NEWRELIC_URL="$intake" LOGDRAIN_LOG=warn)
[[ -n $moto ]] && gateway_env+=(LOGDRAIN_CLOUDWATCH_URL="$moto")
env "${gateway_env[@]}" "$bin/logdrain-gateway" serve >"$out/gateway.out" 2>"$out/gateway.log" &
gateway_pid=$!
pids+=("$gateway_pid")
grpc=""
for _ in $(seq 300); do
    grpc=$(grep -o 'grpc=[^ ]*' "$out/gateway.out" 2>/dev/null | head -1 | cut -d= -f2 || true)
    [[ -n $grpc ]] && break
    sleep 0.1
done
[[ -n $grpc ]] || die "the gateway did not start; see $out/gateway.log"
token=$(LOGDRAIN_SIGNING_KEY=$signing_key "$bin/logdrain-gateway" token --agent-id bench)

if ((outage > 0)); then
    curl -sf -X POST "$intake/_intake/faults" -d '{"status":503}' >/dev/null
    (sleep "$outage" && curl -sf -X DELETE "$intake/_intake/faults" >/dev/null) &
    pids+=("$!")
fi

# Gateway RSS and CPU over time.
start=$(now)
(
    echo "seconds,rss_kib,cpu_s"
    while [[ -e /proc/$gateway_pid ]]; do
        rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$gateway_pid/status" 2>/dev/null) || break
        read -r cpu _ < <(proc_usage "$gateway_pid" 2>/dev/null) || break
        awk -v s="$start" -v n="$(now)" -v r="$rss" -v c="$cpu" 'BEGIN {printf "%.1f,%d,%s\n", n - s, r, c}'
        sleep "$sample"
    done
) >"$out/gateway.csv" &
pids+=("$!")

# Sources.
width=$((line_bytes - 1))
if ((streams > 0)); then
    total=$lines
    env LOGDRAIN_TOKEN="$token" "${secrets[@]}" /usr/bin/time -f '%e %U %S %M' -o "$out/loadgen.time" \
        "$bin/logdrain-loadgen" --gateway "http://$grpc" --agent-id bench --streams "$streams" \
        --lines "$lines" --line-bytes "$width" --rate "$rate" --batch-lines "$batch_lines" \
        >"$out/loadgen.out" 2>"$out/loadgen.log" || die "the load generator failed; see $out/loadgen.log"
else
    total=$((lines * shims))
    if ((rate == 0)); then
        generator=(seq -f "%0${width}g" 1 "$lines")
        buffer=2GiB # measures throughput, not overload: seq outruns any drain
    else
        generator=(python3 -c '
import sys, time
rate, count, width = (int(a) for a in sys.argv[1:4])
out, start, n = sys.stdout.buffer, time.monotonic(), 0
while n < count:
    wait = start + n / rate - time.monotonic()
    if wait > 0:
        time.sleep(wait)
    k = min(count - n, max(1, rate // 100))
    out.write(b"".join(b"%0*d\n" % (width, i) for i in range(n + 1, n + k + 1)))
    out.flush()
    n += k
' "$rate" "$lines" "$width")
        buffer=64MiB # the default: steady-state memory is what is measured
    fi
    shim_pids=()
    for i in $(seq "$shims"); do
        env LOGDRAIN_TOKEN="$token" LOGDRAIN_DRAIN_TIMEOUT=600s LOGDRAIN_BUFFER_BYTES=$buffer "${secrets[@]}" \
            /usr/bin/time -f '%e %U %S %M' -o "$out/shim-$i.time" \
            "$bin/agent-shim" --gateway "http://$grpc" --agent-id bench --agent-server-id "replica-$i" -- \
            /usr/bin/time -f '%e %U %S %M' -o "$out/child-$i.time" "${generator[@]}" \
            >/dev/null 2>"$out/shim-$i.log" &
        shim_pids+=("$!")
        watch_hwm "$!" "$out/shim-$i.hwm" &
        pids+=("$!")
    done
    for i in "${!shim_pids[@]}"; do
        wait "${shim_pids[$i]}" || die "shim $((i + 1)) failed; see $out/shim-$((i + 1)).log"
    done
fi
acked_s=$(awk -v s="$start" -v n="$(now)" 'BEGIN {print n - s}')

# Delivery: every counted vendor accepted every line. Delivery ended when
# the intake accepted the last of them, which it records per vendor
# (last_accepted_unix_ms), so the polling can be sparse and cheap: its
# interval does not delay the figure.
delivered_s=""
if ((${#counted[@]} > 0)); then
    while :; do
        stats=$(curl -sf "$intake/_intake/stats")
        done_all=1
        for vendor in "${counted[@]}"; do
            got=$(jq -r --arg v "$vendor" '.vendors[$v].entries // 0' <<<"$stats")
            ((got >= total)) || done_all=0
        done
        ((done_all)) && break
        elapsed=$(awk -v s="$start" -v n="$(now)" 'BEGIN {print int(n - s)}')
        ((elapsed < timeout)) || die "not every line was delivered after ${timeout}s: $(jq -c . <<<"$stats")"
        sleep 0.5
    done
    last_ms=0
    for vendor in "${counted[@]}"; do
        ms=$(jq -r --arg v "$vendor" '.vendors[$v].last_accepted_unix_ms // 0' <<<"$stats")
        if ((ms > last_ms)); then
            last_ms=$ms
        fi
    done
    # `start` is Unix seconds with nanoseconds (date +%s.%N).
    delivered_s=$(awk -v s="$start" -v ms="$last_ms" 'BEGIN {print ms / 1000 - s}')
fi
# Each vendor's own rate, from its first to its last accepted request: the
# delivery rate of a backlog (after --outage), or of each vendor when
# several deliver at once.
vendor_rates=()
for vendor in "${counted[@]}"; do
    span=$(jq -r --arg v "$vendor" '(.vendors[$v].last_accepted_unix_ms // 0) - (.vendors[$v].first_accepted_unix_ms // 0)' <<<"$stats")
    vendor_rates+=("$vendor $span")
done
read -r gateway_cpu gateway_hwm < <(proc_usage "$gateway_pid")
read -r intake_cpu intake_hwm < <(proc_usage "$intake_pid")
stats=$(curl -sf "$intake/_intake/stats")
wall_s=$(awk -v s="$start" -v n="$(now)" 'BEGIN {print n - s}')

# Report.
{
    echo "pipeline: $total lines of $line_bytes B; vendors $vendors; $(
        ((streams > 0)) && echo "loadgen $streams streams" || echo "$shims shim(s)"
    ); rate $rate; outage ${outage}s"
    awk -v t="$total" -v s="$acked_s" 'BEGIN {printf "  acked:     %12.0f lines/s (%.2f s)\n", t / s, s}'
    [[ -n $delivered_s ]] &&
        awk -v t="$total" -v s="$delivered_s" 'BEGIN {printf "  delivered: %12.0f lines/s (%.2f s)\n", t / s, s}'
    for entry in "${vendor_rates[@]}"; do
        read -r vendor span <<<"$entry"
        awk -v v="$vendor" -v t="$total" -v ms="$span" 'BEGIN {
            if (ms > 0) printf "  %-9s first → last accepted: %10.0f lines/s (%.2f s)\n", v, t / (ms / 1000), ms / 1000 }'
    done
    printf '  %-12s %9s %9s %11s\n' process wall_s cpu_s peak_rss_MiB
    row() { awk -v p="$1" -v w="$2" -v c="$3" -v m="$4" 'BEGIN {printf "  %-12s %9.2f %9.2f %11.1f\n", p, w, c, m / 1024}'; }
    row gateway "$wall_s" "$gateway_cpu" "$gateway_hwm"
    row intake "$wall_s" "$intake_cpu" "$intake_hwm"
    for f in "$out"/shim-*.time "$out"/loadgen.time; do
        [[ -e $f ]] || continue
        name=$(basename "$f" .time)
        read -r w u s m < <(tail -1 "$f")
        cpu=$(awk -v u="$u" -v s="$s" 'BEGIN {print u + s}')
        if [[ $name == shim-* ]]; then
            # The shim's rusage includes its waited-for child: subtract it.
            read -r _ cu cs _ < <(tail -1 "$out/child-${name#shim-}.time")
            cpu=$(awk -v c="$cpu" -v u="$cu" -v s="$cs" 'BEGIN {print c - u - s}')
            row "child-${name#shim-}" "$w" "$(awk -v u="$cu" -v s="$cs" 'BEGIN {print u + s}')" "$(tail -1 "$out/child-${name#shim-}.time" | awk '{print $4}')"
            # Sampled every 0.2 s, so growth in its last 0.2 s is missed.
            m=$(cat "$out/$name.hwm" 2>/dev/null || echo 0)
        fi
        row "$name" "$w" "$cpu" "$m"
    done
    for vendor in "${counted[@]}"; do
        jq -r --arg v "$vendor" '.vendors[$v].read_to_accepted |
            "  \($v) read→accepted ms: p50 \(.p50_ms)  p99 \(.p99_ms)  p999 \(.p999_ms)  max \(.max_ms)  (\(.count) lines)"' <<<"$stats"
    done
    [[ -e $out/loadgen.out ]] && sed -n '2,3p' "$out/loadgen.out"
    echo "  gateway RSS over time: $out/gateway.csv"
    jq -c -n --argjson stats "$stats" --arg total "$total" --arg acked "$acked_s" --arg delivered "${delivered_s:-null}" \
        --arg gcpu "$gateway_cpu" --arg ghwm "$gateway_hwm" --arg vendors "$vendors" \
        '{total: ($total|tonumber), vendors: $vendors, acked_s: ($acked|tonumber),
          delivered_s: ($delivered|fromjson? // null), gateway_cpu_s: ($gcpu|tonumber),
          gateway_peak_rss_kib: ($ghwm|tonumber),
          read_to_accepted: ($stats.vendors | map_values(.read_to_accepted))}'
} | tee "$out/report.txt"
