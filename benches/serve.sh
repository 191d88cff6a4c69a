#!/usr/bin/env bash
# Load test of `glance serve` with real-size random models (benches/make_models.py), against the
# CLI on the same images:
#   1. the CLI's images/s: `glance classify` / `glance caption` over the photos REPEAT_IMAGES
#      times (a whole process, model load included, and the run alone from its own summary);
#   2. the server (one model thread, --max-batch-size BATCH): throughput and p50/p99 latency of
#      one-image requests at concurrency 1, 8 and 32 (below capacity: 0 failed requests), then
#      concurrency OVER against --max-queue QUEUE (above it: only 429s), by benches/loadgen.rs;
#   3. MEMORY_REQUESTS classify requests at concurrency 8 with the server's RSS sampled every
#      100 requests (flat memory: first, last, max);
#   4. FUZZ malformed bodies (truncated, bit-flipped, random, deeply nested, wrong types, bad
#      base64, bad multipart): 0 crashes (no 5xx, no dropped connection) and /health 200 after.
#
#     cargo build --release --bin glance --example loadgen
#     BENCH_MODELS=/path/to/bench-models benches/serve.sh
#     CASES=classify MEMORY_REQUESTS=1000 benches/serve.sh
#
# Environment: GLANCE [target/release/glance] LOADGEN [target/release/examples/loadgen]
# BENCH_MODELS [bench-models] IMAGES [../shared/images] CASES [classify caption] BATCH [8]
# QUEUE [64] OVER [128] REPEAT_IMAGES [4] MEMORY_REQUESTS [10000] FUZZ [2000] PORT [8719]
# PYTHON [venv/bin/python] (only to make missing models).
set -euo pipefail
cd "$(dirname "$0")/.."

GLANCE=${GLANCE:-target/release/glance}
LOADGEN=${LOADGEN:-target/release/examples/loadgen}
BENCH_MODELS=${BENCH_MODELS:-bench-models}
IMAGES=${IMAGES:-../shared/images}
CASES=${CASES:-classify caption}
BATCH=${BATCH:-8}
QUEUE=${QUEUE:-64}
OVER=${OVER:-128}
REPEAT_IMAGES=${REPEAT_IMAGES:-4}
MEMORY_REQUESTS=${MEMORY_REQUESTS:-10000}
FUZZ=${FUZZ:-2000}
PORT=${PORT:-8719}
PYTHON=${PYTHON:-venv/bin/python}
OUT=$(mktemp -d)
trap 'kill "${SERVER:-}" 2>/dev/null || true; rm -rf "$OUT"' EXIT

for bin in "$GLANCE" "$LOADGEN"; do
    [ -x "$bin" ] || { echo "missing $bin: cargo build --release --bin glance --example loadgen" >&2; exit 2; }
done
for model in clip-b32 blip-base; do
    if [ ! -d "$BENCH_MODELS/$model" ]; then
        "$PYTHON" benches/make_models.py --out "$BENCH_MODELS" "$model"
    fi
done

mapfile -t PHOTOS < <(find "$IMAGES" -maxdepth 1 -type f \( -iname '*.jpg' -o -iname '*.jpeg' -o -iname '*.png' \) | sort)
# Copies under other names: the CLI runs each path once.
mkdir -p "$OUT/copies1" "$OUT/copies2"
for k in $(seq "$REPEAT_IMAGES"); do
    for p in "${PHOTOS[@]}"; do
        cp "$p" "$OUT/copies1/$k-$(basename "$p")"
        cp "$p" "$OUT/copies2/$k-$(basename "$p")"
        cp "$p" "$OUT/copies2/$k-again-$(basename "$p")"
    done
done
LIST=("$OUT"/copies1/*)
LABELS="a cat,a dog,a cup of coffee,a camera,an astronaut,a rocket,a horse,a car,a person,a building"

# One body per photo, one image each.
bodies() { # task
    local i=0
    for p in "${PHOTOS[@]}"; do
        local b64
        b64=$(base64 -w0 "$p")
        case $1 in
            classify) printf '{"images":["%s"],"labels":"%s"}' "$b64" "$LABELS" ;;
            caption) printf '{"images":["%s"]}' "$b64" ;;
        esac > "$OUT/$1-$i.json"
        i=$((i + 1))
    done
    ls "$OUT"/"$1"-*.json | sed 's/^/--body /' | tr '\n' ' '
}

start_server() { # model
    "$GLANCE" serve -m "$1" --port "$PORT" --max-batch-size "$BATCH" --max-queue "$QUEUE" \
        > "$OUT/server.out" 2> "$OUT/server.err" &
    SERVER=$!
    for _ in $(seq 600); do
        grep -q listening "$OUT/server.out" 2>/dev/null && return 0
        kill -0 "$SERVER" 2>/dev/null || { cat "$OUT/server.err" >&2; exit 1; }
        sleep 0.2
    done
    echo "the server did not start" >&2
    exit 1
}

stop_server() {
    kill -TERM "$SERVER"
    wait "$SERVER" || true
    SERVER=
}

field() { # json key
    python3 -c 'import json,sys; d=json.loads(sys.argv[1]); v=d
for k in sys.argv[2].split("."): v=v.get(k) if isinstance(v, dict) else None
print(round(v, 2) if isinstance(v, float) else v)' "$1" "$2"
}

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); $(date -u +%Y-%m-%d)"
echo "images: ${#PHOTOS[@]} photos from $IMAGES; batch $BATCH, queue $QUEUE"
for task in $CASES; do
    case $task in
        classify) model=$BENCH_MODELS/clip-b32; cli=(classify --labels "$LABELS"); per=$(( ${#PHOTOS[@]} * 4 )) ;;
        caption) model=$BENCH_MODELS/blip-base; cli=(caption); per=${#PHOTOS[@]} ;;
        *) echo "unknown case $task" >&2; exit 2 ;;
    esac
    # The CLI over the photos REPEAT_IMAGES times and twice that: the whole process, and the
    # difference of the two (start-up, model load and label prompts cancel out).
    cli_seconds() { # images...
        local start end
        start=$(date +%s.%N)
        # No label cache: both runs encode the label prompts, and the difference cancels it.
        GLANCE_CACHE=off "$GLANCE" "${cli[@]}" -m "$model" -b "$BATCH" -o "$OUT/cli-$RANDOM.jsonl" -q "$@"
        end=$(date +%s.%N)
        python3 -c "print($end - $start)"
    }
    cli_seconds "$OUT/copies1" > /dev/null # warm-up: page cache, allocator
    t1=$(cli_seconds "$OUT/copies1")
    t2=$(cli_seconds "$OUT/copies2")
    whole=$(python3 -c "print(round(${#LIST[@]} / $t1, 2))")
    steady=$(python3 -c "print(round(${#LIST[@]} / ($t2 - $t1), 2))")
    echo
    echo "== $task: $(basename "$model") =="
    echo "CLI: ${#LIST[@]} images: $whole images/s as a whole process; $steady images/s once loaded (${#LIST[@]} more images cost $(python3 -c "print(round($t2 - $t1, 1))") s)"
    BODIES=$(bodies "$task")
    start_server "$model"
    SERVER_PID=$SERVER
    printf '%-12s %9s %10s %8s %8s %s\n' concurrency requests images/s p50_ms p99_ms statuses
    for c in 1 8 32 "$OVER"; do
        n=$(( c * 3 > per ? c * 3 : per ))
        # shellcheck disable=SC2086
        r=$("$LOADGEN" --url "http://127.0.0.1:$PORT/v1/$task" $BODIES --concurrency "$c" --requests "$n")
        printf '%-12s %9s %10s %8s %8s %s\n' "$c" "$n" "$(field "$r" images_per_s)" \
            "$(field "$r" p50_ms)" "$(field "$r" p99_ms)" "$(field "$r" statuses) failed=$(field "$r" failed)"
    done
    if [ "$task" = classify ]; then
        # shellcheck disable=SC2086
        r=$("$LOADGEN" --url "http://127.0.0.1:$PORT/v1/$task" $BODIES --concurrency 8 \
            --requests "$MEMORY_REQUESTS" --pid "$SERVER_PID")
        echo "memory over $MEMORY_REQUESTS requests: RSS first $(field "$r" server_rss.first_mb) MB, last $(field "$r" server_rss.last_mb) MB, max $(field "$r" server_rss.max_mb) MB; $(field "$r" images_per_s) images/s, failed=$(field "$r" failed)"
        # shellcheck disable=SC2086
        r=$("$LOADGEN" --url "http://127.0.0.1:$PORT/v1/$task" $BODIES --fuzz "$FUZZ")
        echo "fuzz: $FUZZ malformed bodies: statuses $(field "$r" statuses), crashes $(field "$r" crashes), healthy after: $(field "$r" healthy_after)"
    fi
    stop_server
done
