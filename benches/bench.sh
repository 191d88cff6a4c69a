#!/usr/bin/env bash
# Side-by-side CPU speed benchmark: glance vs Python transformers on the same folder with the
# same real-size models (random weights, built locally: nothing is downloaded), for captioning
# (BLIP, ViT-GPT2), zero-shot classification (CLIP, SigLIP) and, when asked for, captioning with a
# chat vision-language model (Qwen3-VL-2B).
#
# Run from anywhere (it works from the repository root), after `cargo build --release`:
#
#     PYTHON=venv/bin/python benches/bench.sh                       # every case
#     CASES=classify benches/bench.sh                               # the zero-shot cases only
#     CASES="blip-base-greedy clip-b32-100" REPEAT=3 benches/bench.sh
#     CASES="vit-gpt2-greedy vit-gpt2-beam3" benches/bench.sh       # the ViT-GPT2 captioning cases
#     GLANCE=/path/to/glance REPEAT=3 BENCH_LARGE=1 benches/bench.sh
#     CASES=chat SETTINGS=like benches/bench.sh                     # Qwen3-VL-2B (not in the default set)
#     CASES=florence SETTINGS=like benches/bench.sh                 # Florence-2 (not in the default set)
#
# Cases (name: what)
#   caption  (batch BATCH, exactly NEW_TOKENS new tokens per caption):
#     blip-base-greedy, blip-base-beam3 (+ blip-large-greedy, blip-large-beam3 with BENCH_LARGE=1),
#     vit-gpt2-greedy, vit-gpt2-beam3 (nlpconnect/vit-gpt2-image-captioning's architecture:
#     VisionEncoderDecoderModel, ViT-B/16 at 224 + GPT-2 base with cross-attention)
#   classify (zero-shot, batch BATCH_ZS, one template TEMPLATE, top TOP_K; the N labels are the
#   first N lines of LABELS_FILE, the same file for both sides):
#     clip-b32-100 (CLIP ViT-B/32, 100 labels), clip-b32-1000 (1000 labels), siglip-b16-100
#   chat     (Qwen/Qwen3-VL-2B-Instruct's architecture, bf16 file; greedy, exactly CHAT_TOKENS new
#   tokens, at most CHAT_PIXELS pixels an image, one user message: the image, then CHAT_PROMPT;
#   the images CHAT_IMAGES; ONLY run when CASES names them or "chat": minutes per run, each side
#   loads 4.3 GB of weights, ~13 GB RSS for transformers in float32):
#     qwen3-vl-2b (batch BATCH_CHAT), qwen3-vl-2b-b1 (batch 1)
#   florence (Florence-2's architecture, random weights; batch BATCH_FL, the checkpoint's 3 beams,
#   exactly FL_TOKENS new tokens; ONLY run when CASES names them or "florence"):
#     florence2-base-caption (--task more-detailed), florence2-base-od (glance detect --task od),
#     florence2-large-caption, florence2-large-od
#
# What it does:
#   1. creates the models the selected cases need in bench-models/ with benches/make_models.py
#      if missing (blip-base ~1 GB, blip-large ~1.9 GB, vit-gpt2 ~1 GB, clip-b32 ~0.6 GB,
#      siglip-b16 ~0.8 GB, qwen3-vl-2b ~4.3 GB (under a minute); not to be committed);
#   2. for each case runs
#        - benches/transformers_caption.py (times image opening + preprocessing + generate +
#          decode), benches/transformers_classify.py (times encoding the label prompts once +
#          image opening + preprocessing + image features + scores + top-k) or
#          benches/transformers_chat.py (times image opening + preprocessing + chat template +
#          generate + decode, prefill and decoding apart); imports and model load are timed
#          separately and NOT included, and
#        - `glance caption ... -o OUT.jsonl --quiet IMAGES`, `glance classify --labels-file
#          LABELS --template TEMPLATE --top-k TOP_K ... -o OUT.jsonl --quiet IMAGES` or `glance
#          caption --prompt CHAT_PROMPT --greedy --max-new-tokens CHAT_TOKENS --min-new-tokens
#          CHAT_TOKENS --max-pixels CHAT_PIXELS ... -o OUT.jsonl --quiet CHAT_IMAGES` as a whole
#          process under `/usr/bin/time -v` (benches/timev.py where GNU time is missing; its
#          time INCLUDES process start and model load);
#   3. prints a table, one row per case and setting (SETTINGS, below): images/s each side, ratio
#      glance/transformers, peak RSS each side, glance's start-up time. For the classify cases
#      the log also says on how many images the top-1 labels agree. The chat cases get a table
#      of their own: images/s, ratio, peak RSS, prefill and decode tokens/s each side (glance's
#      from its GLANCE_TIMINGS lines `glance timings: batch B prefill Xs (N tokens) decode Ys
#      (M tokens)`, "-" when it prints none), and the memory bandwidth of glance's decoding: the
#      language model's weights (the tied embedding matrix once, as the output layer; the
#      vision tower's not) in glance's precision (f32 4 bytes a parameter, bf16/f16 2) read once
#      per decoding step of a batch, times the steps, over the decode seconds (KV-cache reads
#      not counted).
#   Before each timed run it checks that the machine is otherwise idle (CPU time used by other
#   work over one second, from /proc/stat) and warns when it is not (BENCH_STRICT=1: refuses).
#
# Settings (SETTINGS [defaults-cold defaults-warm like]):
#   defaults-cold  each side as a user runs it: glance without --dtype and --template (auto
#                  precision; the model's default templates: CLIP's eleven-template ensemble,
#                  SigLIP's "This is a photo of {}."), transformers in float32 with the
#                  zero-shot pipeline's "This is a photo of {}.", after the model's files are
#                  dropped from the page cache, glance with an empty label cache (a first run)
#   defaults-warm  the same with the files in the page cache and glance's label embeddings
#                  on disk (every later run)
#   like           like with like: glance --dtype DTYPE, transformers TF_DTYPE, one template
#                  TEMPLATE on both sides, no label cache
# (The chat cases take the same settings; only the precision differs between them: glance's auto
# is f32 on the CPU, bf16 on a GPU. Pixel budget, prompt and greedy decoding are the case's on
# both sides in every setting.)
#
# Environment (defaults in brackets):
#   PYTHON [venv/bin/python]  GLANCE [target/release/glance]  IMAGES [../shared/images]
#   BENCH_MODELS [bench-models]  BENCH_OUT [bench-out: per-run logs, captions and labels]
#   REPEAT [1]: run each side N times, keep the best   BENCH_LARGE [0]: add the BLIP-large cases
#   CASES [all but the chat cases]: space-separated case names and/or kinds ("caption",
#   "classify", "chat") to run
#   BATCH [8]: caption batch   NEW_TOKENS [20]
#   BATCH_ZS [32]: classify batch   LABELS_FILE [benches/labels-1000.txt]   TEMPLATE [a photo of a {}.]
#   TOP_K [5]   THREADS: torch.set_num_threads for transformers [torch's default]
#   DTYPE [f32]: glance --dtype of the like-for-like rows (bf16: on a CPU with AVX512-BF16, bf16
#   matmuls with f32 activations)   TF_DTYPE [float32]: transformers' dtype there (bfloat16 to
#   compare bf16 with bf16)   BENCH_STRICT [0]: 1 refuses to time on a busy machine
#   DEVICE [cpu]: both sides' device (cuda, cuda:N: glance built with --features cuda, torch with
#   CUDA; transformers' times then end with torch.cuda.synchronize, and its JSON lines add the peak
#   GPU memory)   IMAGES_TIMES [1]: run on a folder holding each image of IMAGES this many times
#   (copies under BENCH_OUT), so that large batches fill a GPU
#   Florence cases: BATCH_FL [4]   FL_TOKENS [32]
#   Chat cases: BATCH_CHAT [4]: qwen3-vl-2b's batch   CHAT_TOKENS [64]   CHAT_PIXELS [262144:
#   at most 256 image tokens an image]   CHAT_PROMPT [Describe this image in one sentence.]
#   CHAT_IMAGES [the first 4 images of IMAGES, as glance lists them]: space-separated image files
#   and/or folders, given to both sides in this order
#
# Vision tower GFLOP/s: GFLOP per image from benches/vision_flops.py (config.json) divided by the
# tower's seconds per image — glance's from GLANCE_TIMINGS (every batch of the run, the cold first
# one included), transformers' from one extra pass of its tower on the first batch after the run.
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
BATCH_ZS=${BATCH_ZS:-32}
DTYPE=${DTYPE:-f32}
TF_DTYPE=${TF_DTYPE:-float32}
LABELS_FILE=${LABELS_FILE:-benches/labels-1000.txt}
[ -n "${TEMPLATE:-}" ] || TEMPLATE='a photo of a {}.'
TOP_K=${TOP_K:-5}
THREADS=${THREADS:-}
DEVICE=${DEVICE:-cpu}
IMAGES_TIMES=${IMAGES_TIMES:-1}
BATCH_CHAT=${BATCH_CHAT:-4}
CHAT_TOKENS=${CHAT_TOKENS:-64}
CHAT_PIXELS=${CHAT_PIXELS:-262144}
[ -n "${CHAT_PROMPT:-}" ] || CHAT_PROMPT='Describe this image in one sentence.'
BATCH_FL=${BATCH_FL:-4}
FL_TOKENS=${FL_TOKENS:-32}

die() { echo "bench.sh: $*" >&2; exit 1; }
load() { cut -d' ' -f1-3 /proc/loadavg; }

[ -x "$PYTHON" ] || die "no Python at $PYTHON (set PYTHON=.../bin/python with torch + transformers)"
[ -x "$GLANCE" ] || die "no glance binary at $GLANCE (cargo build --release, or set GLANCE=...)"
[ -d "$IMAGES" ] || die "no images directory $IMAGES (set IMAGES=...)"
[ -f "$LABELS_FILE" ] || die "no labels file $LABELS_FILE (set LABELS_FILE=...)"
# GNU time where installed; elsewhere (a GPU machine without network) a Python stand-in that
# reports the same three figures.
if [ -x /usr/bin/time ]; then TIME_V=(/usr/bin/time -v -o); else TIME_V=("$PYTHON" benches/timev.py -o); fi

# name kind model arg (caption: num_beams; classify: number of labels; chat: batch size)
ALL_CASES=("blip-base-greedy caption blip-base 1" "blip-base-beam3 caption blip-base 3")
if [ "${BENCH_LARGE:-0}" = 1 ]; then
    ALL_CASES+=("blip-large-greedy caption blip-large 1" "blip-large-beam3 caption blip-large 3")
fi
ALL_CASES+=("vit-gpt2-greedy caption vit-gpt2 1" "vit-gpt2-beam3 caption vit-gpt2 3")
ALL_CASES+=("clip-b32-100 classify clip-b32 100" "clip-b32-1000 classify clip-b32 1000"
            "siglip-b16-100 classify siglip-b16 100")
# Minutes per run each: only when CASES names them or "chat", never in the default set.
ALL_CASES+=("qwen3-vl-2b chat qwen3-vl-2b $BATCH_CHAT" "qwen3-vl-2b-b1 chat qwen3-vl-2b 1")
ALL_CASES+=("florence2-base-caption florence florence2-base more-detailed" "florence2-base-od florence florence2-base od"
            "florence2-large-caption florence florence2-large more-detailed" "florence2-large-od florence florence2-large od")
RUN_CASES=() SELECTED_CHAT=0
for c in "${ALL_CASES[@]}"; do
    read -r name kind _ <<<"$c"
    if [ -z "${CASES:-}" ] && [ "$kind" != chat ] && [ "$kind" != florence ] || [[ " ${CASES:-} " == *" $name "* ]] || [[ " ${CASES:-} " == *" $kind "* ]]; then
        RUN_CASES+=("$c")
        [ "$kind" != chat ] || SELECTED_CHAT=1
    fi
done
[ ${#RUN_CASES[@]} -gt 0 ] || die "no case selected (CASES=$CASES; names: $(printf '%s\n' "${ALL_CASES[@]}" | cut -d' ' -f1 | tr '\n' ' ')or caption, classify, chat)"

mkdir -p "$OUT_ROOT"
# Two benchmarks at once on the same machine would spoil both: take turns.
exec 9>"$OUT_ROOT/.bench.lock"
flock -n 9 || { echo "another bench.sh is running; waiting for it ..." >&2; flock 9; }

# 1. Models.
need=()
for c in "${RUN_CASES[@]}"; do
    read -r _ _ model _ <<<"$c"
    [ -f "$MODELS/$model/config.json" ] || [[ " ${need[*]:-} " == *" $model "* ]] || need+=("$model")
done
if [ ${#need[@]} -gt 0 ]; then
    echo "creating ${need[*]} in $MODELS/ (a few minutes) ..." >&2
    "$PYTHON" benches/make_models.py --out "$MODELS" --which "$(IFS=,; echo "${need[*]}")" >&2
fi

OUT="$OUT_ROOT/$(date +%Y%m%d-%H%M%S)"
mkdir -p "$OUT"
if [ "$IMAGES_TIMES" -gt 1 ]; then
    many="$OUT_ROOT/images-x$IMAGES_TIMES"
    if [ ! -d "$many" ]; then
        echo "copying each image of $IMAGES $IMAGES_TIMES times into $many ..." >&2
        mkdir -p "$many.tmp"
        for i in $(seq 1 "$IMAGES_TIMES"); do
            mkdir -p "$many.tmp/$i" && cp -r "$IMAGES"/. "$many.tmp/$i/"
        done
        mv "$many.tmp" "$many"
    fi
    IMAGES=$many
fi
# The chat cases' inputs (an array: files and/or folders, passed to both sides as they are).
CHAT_INPUTS=()
if [ "$SELECTED_CHAT" = 1 ]; then
    if [ -n "${CHAT_IMAGES:-}" ]; then
        read -r -a CHAT_INPUTS <<<"$CHAT_IMAGES"
    else
        mapfile -t CHAT_INPUTS < <("$PYTHON" -c 'import sys
from pathlib import Path
sys.path.insert(0, "benches")
from bench_common import list_images
for p in list_images(Path(sys.argv[1]))[:4]:
    print(p)' "$IMAGES")
    fi
    [ ${#CHAT_INPUTS[@]} -gt 0 ] || die "no chat images (CHAT_IMAGES=${CHAT_IMAGES:-}, IMAGES=$IMAGES)"
    for f in "${CHAT_INPUTS[@]}"; do [ -e "$f" ] || die "no such chat image or folder: $f"; done
fi
echo "device: $DEVICE   machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')" >&2
echo "glance: $("$GLANCE" --version 2>&1)   python: $("$PYTHON" -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)' 2>/dev/null)" >&2
echo "images: $IMAGES   logs and outputs: $OUT" >&2
[ "$SELECTED_CHAT" = 0 ] || echo "chat images: ${CHAT_INPUTS[*]}" >&2

# Fields of transformers_caption.py's / transformers_classify.py's JSON line, space-separated.
tf_fields() {
    "$PYTHON" -c 'import json, sys
d = json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])
print(d["images"], d["images_per_s"], d["peak_rss_mb"], d["load_s"], d["run_s"], d["torch_threads"], d["image_processor"],
      d.get("text_s", "-"), d.get("text_tokens", "-"), d.get("vision_s_per_image", 0))' "$1"
}
# Images with a record and no error in an output JSON-lines file (distinct "file" / "path").
count_images() {
    "$PYTHON" -c 'import json, sys
files = set()
for line in open(sys.argv[1], encoding="utf-8"):
    if line.strip():
        r = json.loads(line)
        if not r.get("error"):
            files.add(r.get("file", r.get("path")))
print(len(files))' "$1"
}
# "A/B": on how many of the B images in both files the top-1 "label" is the same (by path,
# else by file name when the two sides write paths differently).
top1_agreement() {
    "$PYTHON" -c 'import json, os, sys
def top1(path):
    out = {}
    for line in open(path, encoding="utf-8"):
        if line.strip():
            r = json.loads(line)
            if r.get("label") is not None:
                out[os.path.normpath(r.get("file", r.get("path", "")))] = r["label"]
    return out
a, b = top1(sys.argv[1]), top1(sys.argv[2])
if not set(a) & set(b):
    a = {os.path.basename(k): v for k, v in a.items()}
    b = {os.path.basename(k): v for k, v in b.items()}
common = set(a) & set(b)
print(f"{sum(a[k] == b[k] for k in common)}/{len(common)}")' "$1" "$2"
}
# Seconds per image of glance's vision tower over a run, from its GLANCE_TIMINGS lines.
glance_vision_s() {
    awk '/glance timings: batch/ { n += $4; s += $6 + 0 } END { if (n) printf "%.4f\n", s / n; else print 0 }' "$1"
}
gflops() { awk -v g="$1" -v s="$2" 'BEGIN { if (s > 0) printf "%.0f", g / s; else print "-" }'; }
# transformers_chat.py's prefill and decode figures: "prefill_tokens prefill_s decode_tokens decode_s".
tf_chat_fields() {
    "$PYTHON" -c 'import json, sys
d = json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])
print(d["prefill_tokens"], d["prefill_s"], d["decode_tokens"], d["decode_s"], round(d["image_tokens_mean"]))' "$1"
}
# glance's prefill and decode figures over a run, from its GLANCE_TIMINGS lines
# `glance timings: batch B prefill X.XXs (N tokens) decode Y.YYs (M tokens)`:
# "prefill_tokens prefill_s decode_tokens decode_s decode_steps" (a batch's decoding step reads
# the weights once: M / B steps), or "- - - - -" when there are none.
glance_chat_timings() {
    sed -n 's/^glance timings: batch \([0-9]*\) prefill \([0-9.]*\)s (\([0-9]*\) tokens) decode \([0-9.]*\)s (\([0-9]*\) tokens).*/\1 \2 \3 \4 \5/p' "$1" |
        awk '{ pt += $3; ps += $2; dt += $5; ds += $4; if ($1 > 0) steps += $5 / $1; n++ }
             END { if (n) printf "%d %.3f %d %.3f %d\n", pt, ps, dt, ds, steps; else print "- - - - -" }'
}
# Tokens per second, "-" when unknown.
per_s() { awk -v n="$1" -v s="$2" 'BEGIN { if (n != "-" && s != "-" && s > 0) printf "%.1f", n / s; else print "-" }'; }
# Parameters a decoding step reads from a safetensors file: all but the vision tower's
# ("visual." in the name), with the input embedding counted only when it is also the output
# layer (tied: no lm_head.weight), since a step reads just one row of it otherwise.
decode_params() {
    "$PYTHON" -c 'import json, math, struct, sys
with open(sys.argv[1], "rb") as f:
    header = json.loads(f.read(struct.unpack("<Q", f.read(8))[0]))
shapes = {k: v["shape"] for k, v in header.items() if k != "__metadata__"}
tied = not any(k.endswith("lm_head.weight") for k in shapes)
print(sum(math.prod(s) for k, s in shapes.items()
          if "visual." not in k and (tied or "embed_tokens" not in k)))' "$1"
}
# Bytes a parameter takes in glance's precision: --dtype, else its auto (f32 on the CPU, bf16 on
# a GPU). bf16 on the CPU reads the linear layers' packed bf16 copies.
glance_param_bytes() {
    case "${1:-auto}" in
        f32) echo 4 ;;
        bf16|f16) echo 2 ;;
        *) if [ "$DEVICE" = cpu ]; then echo 4; else echo 2; fi ;;
    esac
}
# GB/s of weights read while decoding: params * bytes * steps / seconds.
decode_gbs() {
    awk -v p="$1" -v b="$2" -v n="$3" -v s="$4" 'BEGIN { if (n != "-" && s != "-" && s > 0) printf "%.1f", p * b * n / s / 1e9; else print "-" }'
}
# "h:mm:ss" or "m:ss.ss" -> seconds
to_seconds() { awk -F: '{ s = 0; for (i = 1; i <= NF; i++) s = s * 60 + $i; printf "%.3f\n", s }' <<<"$1"; }
better() { awk -v a="$1" -v b="$2" 'BEGIN { exit !(b == "" || a + 0 > b + 0) }'; }

# Drops a directory's files from the page cache (posix_fadvise DONTNEED: no root needed), so
# that a "cold" run reads its model from disk as after a reboot.
evict() {
    "$PYTHON" -c 'import os, sys
for root, _, files in os.walk(sys.argv[1], followlinks=True):
    for f in files:
        try:
            fd = os.open(os.path.join(root, f), os.O_RDONLY)
        except OSError:
            continue
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(fd)' "$1"
}
# Reads a directory's files into the page cache, so that a warm run finds them there: some VMs
# reclaim idle page cache within seconds (kdamond), which made glance's "warm" start-up read a
# 0.9 GB model from disk after transformers' run had loaded it.
prewarm() { find -L "$1" -type f -exec cat {} + >/dev/null 2>&1 || true; }
# How many CPUs' worth of work the machine did over one second while this script waited: a
# ratio is only fair when both sides see the same, otherwise idle, machine. (The load average
# cannot tell: on some VMs an idle kernel thread keeps it near 1.)
busy_cpus() {
    local a b
    a=$(head -1 /proc/stat); sleep 1; b=$(head -1 /proc/stat)
    awk -v a="$a" -v b="$b" 'BEGIN {
        n = split(a, x, " "); split(b, y, " "); busy = 0; all = 0
        for (i = 2; i <= n; i++) { d = y[i] - x[i]; all += d; if (i != 5 && i != 6) busy += d }
        printf "%.2f\n", (all > 0 ? busy / all * '"$(nproc)"' : 0) }'
}
BUSY_MAX=0
quiet_check() {
    local busy
    busy=$(busy_cpus)
    if awk -v b="$busy" 'BEGIN { exit !(b > 0.25) }'; then
        echo "WARNING: other work is running ($busy CPUs busy over the last second, load average $(load)): ratios measured now are not fair" >&2
        [ "${BENCH_STRICT:-0}" = 0 ] || die "BENCH_STRICT=1: refusing to time on a busy machine"
    fi
    BUSY_MAX=$(awk -v a="$busy" -v b="$BUSY_MAX" 'BEGIN { print (a > b ? a : b) }')
}

# Settings each case runs under (SETTINGS, in this order):
#   defaults-cold  each side as a user types it, after the model's files are dropped from the
#                  page cache and with an empty glance label cache (a first run on a machine)
#   defaults-warm  the same, files in the page cache and glance's label embeddings on disk
#                  (every later run)
#   like           like with like: glance --dtype DTYPE, transformers TF_DTYPE, one template
#                  TEMPLATE for both (no label cache), files in the page cache
# "Defaults" means: glance without --dtype (auto) and, for classify, without --template (the
# model's default templates); transformers in float32 with the zero-shot pipeline's template
# "This is a photo of {}.". Batch sizes and pinned token counts are the case's on both sides.
SETTINGS=${SETTINGS:-defaults-cold defaults-warm like}
TF_DEFAULT_TEMPLATE='This is a photo of {}.'

ROWS=() CHAT_ROWS=() FAILED=0 HAS_CAPTION=0 HAS_CLASSIFY=0 HAS_CHAT=0 tf_n= MAIN_N= CHAT_N= CHAT_DEC_PARAMS=
for c in "${RUN_CASES[@]}"; do
    read -r name kind model arg <<<"$c"
    if [ "$kind" = florence ]; then
        vis_gflop=-
    elif [ "$kind" = chat ]; then
        vis_gflop=-
        dec_params=$(decode_params "$MODELS/$model/model.safetensors")
        CHAT_DEC_PARAMS=$dec_params
    else
        vis_gflop=$("$PYTHON" benches/vision_flops.py "$MODELS/$model")
    fi
    gl_inputs=("$IMAGES")
    for setting in $SETTINGS; do
        tf_best= tf_rss= tf_load= tf_n= tf_vis= tf_chat=
        gl_best= gl_rss= gl_n= agree= gl_vis= gl_startup= gl_chat=
        case $setting in
            defaults-cold|defaults-warm) gl_dtype=() tf_dtype=float32 ;;
            like) gl_dtype=(--dtype "$DTYPE") tf_dtype=$TF_DTYPE ;;
            *) die "unknown setting $setting (SETTINGS: defaults-cold, defaults-warm, like)" ;;
        esac
        cache_dir="$OUT/glance-cache-$name"
        if [ "$kind" = caption ]; then
            HAS_CAPTION=1
            tf_cmd=(benches/transformers_caption.py --model "$MODELS/$model" --images "$IMAGES" --batch-size "$BATCH" --device "$DEVICE"
                    --num-beams "$arg" --new-tokens "$NEW_TOKENS" --out "$OUT/$name.$setting.transformers.jsonl")
            beam_args=(); [ "$arg" = 1 ] || beam_args=(--num-beams "$arg")
            gl_cmd=(caption --model "$MODELS/$model" --device "$DEVICE" "${gl_dtype[@]}" --batch-size "$BATCH"
                    --min-new-tokens "$NEW_TOKENS" --max-new-tokens "$NEW_TOKENS" "${beam_args[@]}")
        elif [ "$kind" = florence ]; then
            HAS_CAPTION=1
            if [ "$arg" = od ]; then token='<OD>' gl_task=(detect --task od); else token='<MORE_DETAILED_CAPTION>' gl_task=(caption --task "$arg"); fi
            tf_cmd=(benches/transformers_florence.py --model "$MODELS/$model" --images "$IMAGES" --batch-size "$BATCH_FL" --device "$DEVICE"
                    --task "$token" --new-tokens "$FL_TOKENS" --out "$OUT/$name.$setting.transformers.jsonl")
            gl_cmd=("${gl_task[@]}" --model "$MODELS/$model" --device "$DEVICE" "${gl_dtype[@]}" --batch-size "$BATCH_FL"
                    --min-new-tokens "$FL_TOKENS" --max-new-tokens "$FL_TOKENS")
        elif [ "$kind" = chat ]; then
            HAS_CHAT=1
            gl_inputs=("${CHAT_INPUTS[@]}")
            tf_cmd=(benches/transformers_chat.py --model "$MODELS/$model" --images "${CHAT_INPUTS[@]}" --batch-size "$arg"
                    --device "$DEVICE" --max-new-tokens "$CHAT_TOKENS" --max-pixels "$CHAT_PIXELS" --prompt "$CHAT_PROMPT"
                    --out "$OUT/$name.$setting.transformers.jsonl")
            gl_cmd=(caption --model "$MODELS/$model" --device "$DEVICE" "${gl_dtype[@]}" --batch-size "$arg"
                    --prompt "$CHAT_PROMPT" --greedy --max-new-tokens "$CHAT_TOKENS" --min-new-tokens "$CHAT_TOKENS"
                    --max-pixels "$CHAT_PIXELS")
        else
            HAS_CLASSIFY=1
            labels="$OUT/labels-$arg.txt"
            [ -f "$labels" ] || head -n "$arg" "$LABELS_FILE" >"$labels"
            got=$(grep -c . "$labels" || true)
            [ "$got" -ge "$arg" ] || die "$name needs $arg labels, $LABELS_FILE has $got non-empty lines"
            if [ "$setting" = like ]; then
                tf_template=$TEMPLATE gl_template=(--template "$TEMPLATE")
            else
                tf_template=$TF_DEFAULT_TEMPLATE gl_template=()
            fi
            tf_cmd=(benches/transformers_classify.py --model "$MODELS/$model" --images "$IMAGES" --batch-size "$BATCH_ZS" --device "$DEVICE"
                    --labels-file "$labels" --template "$tf_template" --top-k "$TOP_K" --output "$OUT/$name.$setting.transformers.jsonl")
            gl_cmd=(classify --model "$MODELS/$model" --device "$DEVICE" "${gl_dtype[@]}" --labels-file "$labels" "${gl_template[@]}"
                    --top-k "$TOP_K" -b "$BATCH_ZS")
        fi
        for r in $(seq 1 "$REPEAT"); do
            tag="$name.$setting.$r"
            # transformers
            tf_json="$OUT/$tag.transformers.json"
            [ "$setting" != defaults-cold ] || evict "$MODELS/$model"
            quiet_check
            echo "[$name $setting run $r/$REPEAT] transformers ($tf_dtype) ... (load average before: $(load))" >&2
            if ! "$PYTHON" "${tf_cmd[@]}" --dtype "$tf_dtype" ${THREADS:+--threads "$THREADS"} \
                >"$tf_json" 2>"$OUT/$tag.transformers.log"; then
                tail -n 30 "$OUT/$tag.transformers.log" >&2
                die "transformers failed for $name (log: $OUT/$tag.transformers.log)"
            fi
            read -r n ips rss load_s run_s threads proc text_s text_tokens vis_s < <(tf_fields "$tf_json")
            text_info=; [ "$kind" != classify ] || text_info=" (${text_s}s of it encoding $arg prompts of $text_tokens tokens)"
            echo "    $n images in ${run_s}s$text_info = $ips images/s (load ${load_s}s, peak RSS ${rss} MB, $threads torch threads, $proc)" >&2
            chat=
            if [ "$kind" = chat ]; then
                read -r pt ps dt ds itok < <(tf_chat_fields "$tf_json")
                chat="$pt $ps $dt $ds"
                echo "    prefill $pt tokens in ${ps}s = $(per_s "$pt" "$ps") tokens/s ($itok image tokens an image on average), decode $dt tokens in ${ds}s = $(per_s "$dt" "$ds") tokens/s" >&2
            fi
            if better "$ips" "$tf_best"; then tf_best=$ips tf_rss=$rss tf_load=$load_s tf_n=$n tf_vis=$vis_s tf_chat=$chat; fi

            # glance, the whole process
            case $setting in
                defaults-cold) rm -rf "$cache_dir.cold"; gl_cache=$cache_dir.cold; evict "$MODELS/$model" ;;
                defaults-warm)
                    gl_cache=$cache_dir.warm
                    prewarm "$MODELS/$model"
                    if [ "$kind" = classify ] && [ ! -d "$gl_cache" ]; then
                        echo "    (filling glance's label cache: one untimed run)" >&2
                        GLANCE_CACHE=$gl_cache "$GLANCE" "${gl_cmd[@]}" -o "$OUT/$tag.prime.jsonl" --quiet "${gl_inputs[@]}" >/dev/null 2>&1 || true
                    fi ;;
                like) gl_cache=off; prewarm "$MODELS/$model" ;;
            esac
            gl_out="$OUT/$name.$setting.glance.jsonl" time_txt="$OUT/$tag.glance.time"
            rm -f "$gl_out"
            quiet_check
            echo "[$name $setting run $r/$REPEAT] glance ${gl_dtype[*]:-(auto)} ... (load average before: $(load))" >&2
            if ! GLANCE_CACHE=$gl_cache GLANCE_TIMINGS=1 "${TIME_V[@]}" "$time_txt" "$GLANCE" "${gl_cmd[@]}" \
                -o "$gl_out" --quiet "${gl_inputs[@]}" >"$OUT/$tag.glance.log" 2>&1; then
                echo "    glance FAILED ($(sed -n 's/^[[:space:]]*Exit status: /exit status /p' "$time_txt")); its output:" >&2
                sed 's/^/    | /' "$OUT/$tag.glance.log" >&2
                FAILED=1
                continue
            fi
            elapsed=$(to_seconds "$(sed -n 's/.*Elapsed (wall clock) time.*: //p' "$time_txt")")
            kb=$(sed -n 's/.*Maximum resident set size (kbytes): //p' "$time_txt")
            n=$(count_images "$gl_out")
            ips=$(awk -v n="$n" -v s="$elapsed" 'BEGIN { printf "%.4f", n / s }')
            rss=$(awk -v k="$kb" 'BEGIN { printf "%.1f", k / 1024 }')
            startup=$(sed -n 's/^glance timings: start-up \([0-9.]*\) s.*/\1/p' "$OUT/$tag.glance.log")
            [ "$kind" != classify ] || agree=$(top1_agreement "$gl_out" "$OUT/$name.$setting.transformers.jsonl")
            echo "    $n images in ${elapsed}s = $ips images/s (whole process, start-up ${startup:-?}s, peak RSS ${rss} MB${agree:+; top-1 label as transformers on $agree images})" >&2
            sed -n 's/^glance timings: \(start-up .*\)/    \1/p' "$OUT/$tag.glance.log" >&2
            chat= vis_s=0
            if [ "$kind" = chat ]; then
                read -r pt ps dt ds steps < <(glance_chat_timings "$OUT/$tag.glance.log")
                chat="$pt $ps $dt $ds $steps"
                if [ "$pt" = - ]; then
                    echo "    (no 'glance timings: batch ... prefill' lines: prefill and decode rates unknown)" >&2
                else
                    echo "    prefill $pt tokens in ${ps}s = $(per_s "$pt" "$ps") tokens/s, decode $dt tokens in ${ds}s = $(per_s "$dt" "$ds") tokens/s" >&2
                    read -r tpt _ < <(tf_chat_fields "$tf_json")
                    [ "$pt" = "$tpt" ] || echo "WARNING: $name: glance prefilled $pt prompt tokens, transformers $tpt (different prompts or image sizes?)" >&2
                fi
            else
                vis_s=$(glance_vision_s "$OUT/$tag.glance.log")
            fi
            if better "$ips" "$gl_best"; then gl_best=$ips gl_rss=$rss gl_n=$n gl_vis=$vis_s gl_startup=$startup gl_chat=$chat; fi
        done
        label="$setting"; [ "$setting" != like ] || label="like ${DTYPE}/${TF_DTYPE}"
        if [ "$kind" = chat ]; then
            CHAT_N=$tf_n
            read -r tpt tps tdt tds <<<"${tf_chat:-- - - -}"
            read -r gpt gps gdt gds gsteps <<<"${gl_chat:-- - - - -}"
            gl_cell=FAILED ratio=- gl_rss_cell=-
            if [ -n "$gl_best" ]; then
                [ "$gl_n" = "$tf_n" ] || echo "WARNING: $name: glance did $gl_n images, transformers $tf_n" >&2
                gl_cell=$(printf '%.4f' "$gl_best") ratio="$(awk -v g="$gl_best" -v t="$tf_best" 'BEGIN { printf "%.2f", g / t }')x"
                gl_rss_cell=$(printf '%.0f' "$gl_rss")
            fi
            CHAT_ROWS+=("$(printf '%-16s %-22s %9.4f %9s %7s %9s %9.0f %7.1f %10s %10s %10s %10s %11s' "$name" "$label" "$tf_best" "$gl_cell" "$ratio" \
                "$gl_rss_cell" "$tf_rss" "$tf_load" "$(per_s "$tpt" "$tps")" "$(per_s "$gpt" "$gps")" "$(per_s "$tdt" "$tds")" "$(per_s "$gdt" "$gds")" \
                "$(decode_gbs "$dec_params" "$(glance_param_bytes "${gl_dtype[1]:-}")" "$gsteps" "$gds")")")
            continue
        fi
        MAIN_N=$tf_n
        if [ -z "$gl_best" ]; then
            ROWS+=("$(printf '%-16s %-22s %9.3f %9s %7s %9s %9.0f %7.1f %8s %9s %9s' "$name" "$label" "$tf_best" FAILED - - "$tf_rss" "$tf_load" - "$(gflops "$vis_gflop" "$tf_vis")" -)")
            continue
        fi
        [ "$gl_n" = "$tf_n" ] || echo "WARNING: $name: glance did $gl_n images, transformers $tf_n" >&2
        ratio=$(awk -v g="$gl_best" -v t="$tf_best" 'BEGIN { printf "%.2f", g / t }')
        ROWS+=("$(printf '%-16s %-22s %9.3f %9.3f %7s %9.0f %9.0f %7.1f %8s %9s %9s' "$name" "$label" "$tf_best" "$gl_best" "${ratio}x" "$gl_rss" "$tf_rss" "$tf_load" "${gl_startup:--}" "$(gflops "$vis_gflop" "$tf_vis")" "$(gflops "$vis_gflop" "$gl_vis")")")
    done
done

settings=()
[ "$HAS_CAPTION" = 0 ] || settings+=("caption: batch $BATCH, $NEW_TOKENS new tokens; florence: batch $BATCH_FL, 3 beams, $FL_TOKENS new tokens")
[ "$HAS_CLASSIFY" = 0 ] || settings+=("classify: batch $BATCH_ZS, top $TOP_K; like-for-like template \"$TEMPLATE\"")
if [ ${#ROWS[@]} -gt 0 ]; then
    echo
    summary="glance vs transformers, $MAIN_N images from $IMAGES, best of $REPEAT, $DEVICE, $(nproc) CPUs"
    for x in "${settings[@]}"; do summary+="; $x"; done
    echo "$summary"
    printf '%-16s %-22s %9s %9s %7s %9s %9s %7s %8s %9s %9s\n' case setting "tf img/s" "gl img/s" "gl/tf" "gl RSS MB" "tf RSS MB" "tf load" "gl start" "tf vis GF" "gl vis GF"
    for row in "${ROWS[@]}"; do echo "$row"; done
    echo "glance's time is the whole process (start, model load, the work, writing); transformers' excludes"
    echo "Python imports and model load (tf load, seconds, reported separately). gl start: glance's seconds"
    echo "before its first image (GLANCE_TIMINGS' start-up line). vis GF: the vision tower's GFLOP/s."
    echo "defaults: glance without --dtype/--template (auto precision; CLIP's 11-template ensemble, SigLIP's one template), transformers"
    echo "float32 with \"$TF_DEFAULT_TEMPLATE\"; cold: model files dropped from the page cache and glance's label"
    echo "cache empty; warm: both kept. At most $BUSY_MAX CPUs were busy with other work before a timed run."
fi
if [ ${#CHAT_ROWS[@]} -gt 0 ]; then
    echo
    echo "glance vs transformers, chat: $CHAT_N images (${CHAT_INPUTS[*]}), best of $REPEAT, $DEVICE, $(nproc) CPUs; greedy, $CHAT_TOKENS new tokens, at most $CHAT_PIXELS pixels an image, prompt \"$CHAT_PROMPT\""
    printf '%-16s %-22s %9s %9s %7s %9s %9s %7s %10s %10s %10s %10s %11s\n' case setting "tf img/s" "gl img/s" "gl/tf" "gl RSS MB" "tf RSS MB" "tf load" "tf pre t/s" "gl pre t/s" "tf dec t/s" "gl dec t/s" "gl dec GB/s"
    for row in "${CHAT_ROWS[@]}"; do echo "$row"; done
    echo "img/s: as above (glance's whole process, transformers' without imports and model load). pre t/s: prompt"
    echo "tokens (image tokens included, padding not) per second of prefill (vision tower + prompt pass + first token);"
    echo "dec t/s: new tokens after each row's first per second of the rest. gl dec GB/s: the language model's weights"
    echo "in glance's precision ($CHAT_DEC_PARAMS parameters) read once per decoding step of a batch, times the steps,"
    echo "over the decode seconds. defaults: glance's auto precision (f32 on the CPU, bf16 on a GPU), transformers float32."
    [ ${#ROWS[@]} -gt 0 ] || echo "At most $BUSY_MAX CPUs were busy with other work before a timed run."
fi
echo "Logs: $OUT"
exit $FAILED
