#!/usr/bin/env bash
# Side-by-side CPU speed benchmark: glance vs Python transformers captioning the same folder
# with the same real-size BLIP model (random weights, built locally: nothing is downloaded).
#
# Run from anywhere (it works from the repository root), after `cargo build --release`:
#
#     PYTHON=venv/bin/python benches/bench.sh
#     GLANCE=/path/to/glance REPEAT=3 BENCH_LARGE=1 benches/bench.sh
#
# What it does:
#   1. creates bench-models/blip-base (and bench-models/blip-large with BENCH_LARGE=1) with
#      benches/make_models.py if missing (~0.9 GB / ~1.8 GB; not to be committed);
#   2. for each case -- BLIP-base greedy and beam 3 (BLIP-large too with BENCH_LARGE=1), batch 8,
#      exactly NEW_TOKENS new tokens per caption -- runs
#        - benches/transformers_caption.py (times image opening + preprocessing + generate +
#          decode; imports and model load are timed separately and NOT included), and
#        - `glance caption ... -o OUT.jsonl --quiet IMAGES` as a whole process under
#          `/usr/bin/time -v` (its time INCLUDES process start and model load);
#   3. prints a table: images/s each side, ratio glance/transformers, peak RSS each side.
#
# Environment (defaults in brackets):
#   PYTHON [venv/bin/python]  GLANCE [target/release/glance]  IMAGES [../shared/images]
#   BENCH_MODELS [bench-models]  BENCH_OUT [bench-out: per-run logs and captions]
#   REPEAT [1]: run each side N times, keep the best   BENCH_LARGE [0]: add the BLIP-large cases
#   CASES: space-separated case names to run (e.g. "blip-base-greedy")   BATCH [8]
#   NEW_TOKENS [20]   THREADS: torch.set_num_threads for transformers [torch's default]
# Relative paths are taken from the repository root.
set -euo pipefail

cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-venv/bin/python}
GLANCE=${GLANCE:-target/release/glance}
IMAGES=${IMAGES:-../shared/images}
MODELS=${BENCH_MODELS:-bench-models}
OUT_ROOT=${BENCH_OUT:-bench-out}
REPEAT=${REPEAT:-1}
BATCH=${BATCH:-8}
NEW_TOKENS=${NEW_TOKENS:-20}
THREADS=${THREADS:-}

die() { echo "bench.sh: $*" >&2; exit 1; }
load() { cut -d' ' -f1-3 /proc/loadavg; }

[ -x "$PYTHON" ] || die "no Python at $PYTHON (set PYTHON=.../bin/python with torch + transformers)"
[ -x "$GLANCE" ] || die "no glance binary at $GLANCE (cargo build --release, or set GLANCE=...)"
[ -d "$IMAGES" ] || die "no images directory $IMAGES (set IMAGES=...)"
if [ ! -x /usr/bin/time ]; then
    echo "installing GNU time (/usr/bin/time) ..." >&2
    SUDO=; [ "$(id -u)" -eq 0 ] || SUDO=sudo
    $SUDO apt-get install -y time >/dev/null || { $SUDO apt-get update >/dev/null && $SUDO apt-get install -y time >/dev/null; }
fi

# name model num_beams
ALL_CASES=("blip-base-greedy blip-base 1" "blip-base-beam3 blip-base 3")
if [ "${BENCH_LARGE:-0}" = 1 ]; then
    ALL_CASES+=("blip-large-greedy blip-large 1" "blip-large-beam3 blip-large 3")
fi
RUN_CASES=()
for c in "${ALL_CASES[@]}"; do
    name=${c%% *}
    if [ -z "${CASES:-}" ] || [[ " $CASES " == *" $name "* ]]; then RUN_CASES+=("$c"); fi
done
[ ${#RUN_CASES[@]} -gt 0 ] || die "no case selected (CASES=$CASES)"

mkdir -p "$OUT_ROOT"
# Two benchmarks at once on the same machine would spoil both: take turns.
exec 9>"$OUT_ROOT/.bench.lock"
flock -n 9 || { echo "another bench.sh is running; waiting for it ..." >&2; flock 9; }

# 1. Models.
need=()
for c in "${RUN_CASES[@]}"; do
    read -r _ model _ <<<"$c"
    [ -f "$MODELS/$model/config.json" ] || [[ " ${need[*]:-} " == *" $model "* ]] || need+=("$model")
done
if [ ${#need[@]} -gt 0 ]; then
    echo "creating ${need[*]} in $MODELS/ (a few minutes) ..." >&2
    "$PYTHON" benches/make_models.py --out "$MODELS" --which "$(IFS=,; echo "${need[*]}")" >&2
fi

OUT="$OUT_ROOT/$(date +%Y%m%d-%H%M%S)"
mkdir -p "$OUT"
echo "machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')" >&2
echo "glance: $("$GLANCE" --version 2>&1)   python: $("$PYTHON" -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)' 2>/dev/null)" >&2
echo "images: $IMAGES   logs and captions: $OUT" >&2

# Fields of transformers_caption.py's JSON line, space-separated.
tf_fields() {
    "$PYTHON" -c 'import json, sys
d = json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])
print(d["images"], d["images_per_s"], d["peak_rss_mb"], d["load_s"], d["run_s"], d["torch_threads"], d["image_processor"])' "$1"
}
# "h:mm:ss" or "m:ss.ss" -> seconds
to_seconds() { awk -F: '{ s = 0; for (i = 1; i <= NF; i++) s = s * 60 + $i; printf "%.3f\n", s }' <<<"$1"; }
better() { awk -v a="$1" -v b="$2" 'BEGIN { exit !(b == "" || a + 0 > b + 0) }'; }

ROWS=() FAILED=0
for c in "${RUN_CASES[@]}"; do
    read -r name model beams <<<"$c"
    tf_best= tf_rss= tf_load= tf_n= tf_info=
    gl_best= gl_rss= gl_n=
    for r in $(seq 1 "$REPEAT"); do
        # transformers
        tf_json="$OUT/$name.transformers.$r.json"
        echo "[$name run $r/$REPEAT] transformers ... (load average before: $(load))" >&2
        if ! "$PYTHON" benches/transformers_caption.py --model "$MODELS/$model" --images "$IMAGES" \
            --batch-size "$BATCH" --num-beams "$beams" --new-tokens "$NEW_TOKENS" ${THREADS:+--threads "$THREADS"} \
            --out "$OUT/$name.transformers.jsonl" >"$tf_json" 2>"$OUT/$name.transformers.$r.log"; then
            tail -n 30 "$OUT/$name.transformers.$r.log" >&2
            die "transformers failed for $name (log: $OUT/$name.transformers.$r.log)"
        fi
        read -r n ips rss load_s run_s threads proc < <(tf_fields "$tf_json")
        echo "    $n images in ${run_s}s = $ips images/s (load ${load_s}s, peak RSS ${rss} MB, $threads torch threads, $proc)" >&2
        if better "$ips" "$tf_best"; then tf_best=$ips tf_rss=$rss tf_load=$load_s tf_n=$n; fi

        # glance, the whole process
        gl_out="$OUT/$name.glance.jsonl" time_txt="$OUT/$name.glance.$r.time"
        rm -f "$gl_out"
        beam_args=(); [ "$beams" = 1 ] || beam_args=(--num-beams "$beams")
        echo "[$name run $r/$REPEAT] glance ... (load average before: $(load))" >&2
        if ! /usr/bin/time -v -o "$time_txt" "$GLANCE" caption --model "$MODELS/$model" --batch-size "$BATCH" \
            --min-new-tokens "$NEW_TOKENS" --max-new-tokens "$NEW_TOKENS" "${beam_args[@]}" \
            -o "$gl_out" --quiet "$IMAGES" >"$OUT/$name.glance.$r.log" 2>&1; then
            echo "    glance FAILED ($(sed -n 's/^[[:space:]]*Exit status: /exit status /p' "$time_txt")); its output:" >&2
            sed 's/^/    | /' "$OUT/$name.glance.$r.log" >&2
            FAILED=1
            continue
        fi
        elapsed=$(to_seconds "$(sed -n 's/.*Elapsed (wall clock) time.*: //p' "$time_txt")")
        kb=$(sed -n 's/.*Maximum resident set size (kbytes): //p' "$time_txt")
        n=$(wc -l <"$gl_out")
        ips=$(awk -v n="$n" -v s="$elapsed" 'BEGIN { printf "%.4f", n / s }')
        rss=$(awk -v k="$kb" 'BEGIN { printf "%.1f", k / 1024 }')
        echo "    $n images in ${elapsed}s = $ips images/s (whole process, peak RSS ${rss} MB)" >&2
        if better "$ips" "$gl_best"; then gl_best=$ips gl_rss=$rss gl_n=$n; fi
    done
    if [ -z "$gl_best" ]; then
        ROWS+=("$(printf '%-18s %9.3f %9s %9s %9s %9.0f %8.1f' "$name" "$tf_best" FAILED - - "$tf_rss" "$tf_load")")
        continue
    fi
    [ "$gl_n" = "$tf_n" ] || echo "WARNING: $name: glance captioned $gl_n images, transformers $tf_n" >&2
    ratio=$(awk -v g="$gl_best" -v t="$tf_best" 'BEGIN { printf "%.2f", g / t }')
    ROWS+=("$(printf '%-18s %9.3f %9.3f %9s %9.0f %9.0f %8.1f' "$name" "$tf_best" "$gl_best" "${ratio}x" "$gl_rss" "$tf_rss" "$tf_load")")
done

echo
echo "glance vs transformers, $tf_n images from $IMAGES, batch $BATCH, $NEW_TOKENS new tokens, best of $REPEAT, $(nproc) CPUs"
printf '%-18s %9s %9s %9s %9s %9s %8s\n' case "tf img/s" "gl img/s" "gl/tf" "gl RSS MB" "tf RSS MB" "tf load"
for row in "${ROWS[@]}"; do echo "$row"; done
echo "glance's time is the whole process (start, model load, captioning, writing); transformers' excludes"
echo "Python imports and model load (tf load, seconds, reported separately). Logs: $OUT"
exit $FAILED
