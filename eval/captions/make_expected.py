#!/usr/bin/env python3
"""Regenerate the caption-metric reference values in this folder (run by hand; not part of any build).

What it does
============
It takes the two fixture files next to it:

* ``references.json``   COCO captions file: {"images": [{"id", "file_name"}],
                        "annotations": [{"id", "image_id", "caption"}]}
* ``predictions.jsonl`` glance output records, one JSON object a line:
                        {"file": "<path>", "caption": "..."}  or  {"file": "<path>", "error": "..."}

and scores the predictions with the official COCO caption evaluation toolkit (``pycocoevalcap``, the
PyPI package, which bundles Stanford CoreNLP 3.4.1's PTBTokenizer and runs it with ``java``), then writes

* ``expected.json``   corpus BLEU-1..4 / ROUGE-L / CIDEr-D, per-image scores, the PTB-tokenized text of
                      every scored caption, the matching bookkeeping, single-image edge "cases" and small
                      multi-image "corpus_cases" (CIDEr needs more than one image to be non-zero);
* ``ptb_cases.json``  what the Java PTBTokenizer (as pycocoevalcap calls it) does to ~60 tricky strings.

Matching rules (the contract the Rust ``glance eval`` is checked against)
=========================================================================
1. Predictions are matched to reference images by FILE NAME: the last path component of the record's
   ``file`` (split on ``/`` and ``\\``) must equal an image's ``file_name``. Blank lines are ignored.
2. A record that has a non-null ``error`` field, or no string ``caption``, is a FAILED prediction: it is
   listed in ``failed_predictions`` (by its ``file`` as written) and its image is not scored. Such an
   image is NOT also listed in ``missing_predictions``.
3. A record with a caption whose file name matches no reference image is listed in
   ``unmatched_predictions`` (by its ``file`` as written) and not scored.
4. A reference image with no record at all is listed in ``missing_predictions`` (by ``file_name``) and not
   scored.
5. Everything else is scored, INCLUDING empty captions ("") and captions that tokenize to nothing
   ("...!"): they are real predictions that score 0. Two captioned records for one file name are an
   error (the fixture has none; this script raises).
6. Scoring is exactly COCOEvalCap.evaluate() minus METEOR/SPICE: PTBTokenizer().tokenize() on the
   references and (separately) on the predictions, then Bleu(4), Rouge(), Cider() compute_score on the
   scored images. ``bleu_n`` are the corpus-level values (compute_score's first return, NOT a mean of
   per-image values); ``rouge_l`` and ``cider`` are means of the per-image values. pycocoevalcap's
   ``Cider`` class is CIDEr-D (sigma 6, clipped n-gram counts, x10, mean over references).

Lists keep file order: ``missing_predictions`` in references.json image order, the others in
predictions.jsonl order.

Usage
=====
    /work/venv/bin/pip install pycocoevalcap      # needs java on PATH (tested with OpenJDK 17)
    /work/venv/bin/python eval/captions/make_expected.py

The PTBTokenizer wrapper writes a temporary file into the installed package's folder, so that folder must
be writable. Output is deterministic; re-running should give a byte-identical expected.json (apart from the
``versions`` block if the toolchain changes).
"""

import copy
import importlib.metadata
import json
import locale
import math
import os
import platform
import subprocess
import sys
import traceback

import numpy as np
import pycocoevalcap.tokenizer.ptbtokenizer as ptbmod
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.rouge.rouge import Rouge
from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

HERE = os.path.dirname(os.path.abspath(__file__))
METRIC_KEYS = ["bleu_1", "bleu_2", "bleu_3", "bleu_4", "rouge_l", "cider"]


# ----------------------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------------------
def basename(path):
    return path.replace("\\", "/").rsplit("/", 1)[-1]


def f(x):
    """numpy scalar -> plain float (json writes repr, i.e. round-trippable 17 significant digits)."""
    return float(x)


def load_references(path):
    with open(path, encoding="utf-8") as fh:
        doc = json.load(fh)
    by_id = {}
    order = []
    for img in doc["images"]:
        by_id[img["id"]] = img["file_name"]
        order.append(img["file_name"])
    refs = {name: [] for name in order}
    for ann in doc["annotations"]:
        refs[by_id[ann["image_id"]]].append(ann["caption"])
    return order, refs


def load_predictions(path):
    recs = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                recs.append(json.loads(line))
    return recs


def tokenize(captions_by_key):
    """{key: [str, ...]} -> {key: [tokenized str, ...]} via pycocoevalcap's PTBTokenizer (one java run)."""
    gts = {k: [{"caption": c} for c in v] for k, v in captions_by_key.items()}
    return PTBTokenizer().tokenize(gts)


def run_metric(name, fn):
    try:
        return fn(), None
    except Exception as e:  # recorded, not hidden
        return None, "%s: %s" % (type(e).__name__, e)


def score(gts_tok, res_tok):
    """Score tokenized {key: [refs]} / {key: [pred]}. Returns (corpus dict, per-key dict, errors dict)."""
    keys = list(gts_tok.keys())
    corpus, per, errors = {}, {k: {} for k in keys}, {}

    out, err = run_metric("bleu", lambda: Bleu(4).compute_score(gts_tok, res_tok, verbose=0))
    if err:
        errors["bleu"] = err
    else:
        bleu, bleu_lists = out
        for n in range(4):
            corpus["bleu_%d" % (n + 1)] = f(bleu[n])
            for k, v in zip(keys, bleu_lists[n]):
                per[k]["bleu_%d" % (n + 1)] = f(v)

    out, err = run_metric("rouge", lambda: Rouge().compute_score(gts_tok, res_tok))
    if err:
        errors["rouge_l"] = err
    else:
        corpus["rouge_l"] = f(out[0])
        for k, v in zip(keys, out[1]):
            per[k]["rouge_l"] = f(v)

    out, err = run_metric("cider", lambda: Cider().compute_score(gts_tok, res_tok))
    if err:
        errors["cider"] = err
    else:
        corpus["cider"] = f(out[0])
        for k, v in zip(keys, out[1]):
            per[k]["cider"] = f(v)
    return corpus, per, errors


# ----------------------------------------------------------------------------------------------------------
# main fixture
# ----------------------------------------------------------------------------------------------------------
def main_fixture():
    order, refs = load_references(os.path.join(HERE, "references.json"))
    recs = load_predictions(os.path.join(HERE, "predictions.jsonl"))

    preds, failed, unmatched, seen = {}, [], [], set()
    for r in recs:
        name = basename(r["file"])
        if r.get("error") is not None or not isinstance(r.get("caption"), str):
            failed.append(r["file"])
            seen.add(name)
            continue
        if name not in refs:
            unmatched.append(r["file"])
            continue
        if name in preds:
            raise SystemExit("duplicate prediction for %s" % name)
        preds[name] = r["caption"]
        seen.add(name)
    missing = [n for n in order if n not in seen]
    scored = [n for n in order if n in preds]

    # COCOEvalCap: tokenize gts and res separately
    gts_tok = tokenize({n: refs[n] for n in scored})
    res_tok = tokenize({n: [preds[n]] for n in scored})
    corpus, per, errors = score(gts_tok, res_tok)
    if errors:
        raise SystemExit("main fixture failed to score: %r" % errors)

    out = {k: corpus[k] for k in METRIC_KEYS}
    out.update(
        {
            "images_scored": len(scored),
            "missing_predictions": missing,
            "unmatched_predictions": unmatched,
            "failed_predictions": failed,
            "tokenized": {
                n: {"prediction": res_tok[n][0], "references": gts_tok[n]} for n in scored
            },
            "per_image": {n: {k: per[n][k] for k in METRIC_KEYS} for n in scored},
        }
    )
    return out


# ----------------------------------------------------------------------------------------------------------
# single-image edge cases and small corpora
# ----------------------------------------------------------------------------------------------------------
CASES = [
    ("exact_match_of_one_of_several_references",
     ["A red motorcycle parked in front of a brick wall.",
      "A shiny red and black motorbike seen from the left side.",
      "A motorcycle is parked on the sidewalk next to a wall."],
     "A red motorcycle parked in front of a brick wall."),
    ("exact_match_single_reference",
     ["A grayscale close-up of the moon's cratered surface."],
     "A grayscale close-up of the moon's cratered surface."),
    ("case_folded_and_double_bang_survives",
     ["A dog runs on the beach."],
     "a DOG runs on the beach!!"),
    ("empty_prediction",
     ["Many old coins laid out on a flat surface.",
      "A black and white photo of 24 coins arranged in rows."],
     ""),
    ("punctuation_only_prediction",
     ["A black silhouette of a horse on a white background.",
      "The outline of a horse standing still."],
     "...!"),
    ("whitespace_only_prediction",
     ["A black silhouette of a horse on a white background."],
     "   "),
    ("one_reference",
     ["A grayscale close-up of the moon's cratered surface."],
     "a close-up of the moon's surface with many craters"),
    ("unicode",
     ["Latte art in a café cup on a saucer, viewed from above.",
      "A naïve drawing of a heart in the foam of a café latte."],
     "A latte in a café cup with naïve heart-shaped foam art"),
    ("unicode_cjk_and_emoji",
     ["A view of the 東京 skyline at night 🌃", "The Tokyo skyline at night."],
     "the 東京 skyline 😀 at night"),
    ("contraction_and_possessive",
     ["The man's hat is red; it's new.", "A man wearing a red hat that doesn't fit."],
     "It's the man's red hat and it doesn't fit"),
    ("parentheses_survive_as_lrb_rrb",
     ["A cappuccino (with latte art) in a white cup.", "A cappuccino with latte art in a white cup."],
     "A cappuccino (with latte art) in a cup."),
    ("quotes_removed",
     ["Side view of a motorcycle with a \"racing\" style fairing."],
     "a motorcycle with a 'racing' style fairing"),
    ("hyphenated_word_is_one_token",
     ["A smiling astronaut in a full-body flight suit."],
     "a smiling astronaut in a full body flight suit"),
    ("numbers",
     ["A white rocket with 2 boosters at 10:30 on a 3.5 km pad with 1,000 people."],
     "a rocket with two boosters at 10:30 and 1,000 people"),
    ("one_word_prediction_exact_one_word_reference",
     ["dog"],
     "dog"),
    ("two_word_prediction",
     ["a dog runs in the park", "a brown dog in a park"],
     "a dog"),
    ("no_matching_4grams",
     ["a brown dog runs across a grassy park"],
     "a dog runs across the park quickly"),
    ("no_matching_words_at_all",
     ["A tabby cat looking off to the side.", "A striped cat sits and stares to the left"],
     "a bowl of fruit on a wooden table"),
    ("closest_reference_length_tie",
     ["a dog on grass", "a brown dog on the grass"],
     "a dog on the lawn"),
    ("repeated_words_are_clipped",
     ["a dog on a mat", "the dog sits on a mat"],
     "a a a a dog dog"),
    ("prediction_longer_than_references",
     ["a dog", "a brown dog"],
     "a brown dog is running very fast across a big green field in the park"),
    ("empty_prediction_and_punctuation_only_reference",
     ["..."],
     ""),
]

CORPUS_CASES = [
    ("two_images",
     [(["a dog runs in the park", "a brown dog in a park"], "a dog in the park"),
      (["a cat sits on a red mat", "a black cat on a mat"], "a cat on a mat")]),
    ("three_images_with_shared_ngrams",
     [(["a man riding a horse on a beach", "a person on a horse by the sea", "a horse and rider on the sand"],
       "a man on a horse on the beach"),
      (["a man riding a bike down a street", "a person on a bicycle in a city"],
       "a man riding a bike"),
      (["a plate of food on a table", "a table with a plate of pasta and a fork"],
       "a plate of pasta on a wooden table with a glass of wine and a fork")]),
    ("clipping_and_length_penalty",
     [(["a dog on a mat", "the dog sits on a mat"], "a a a a dog dog"),
      (["a cat on a sofa", "a grey cat sleeping on a sofa"], "a cat on a sofa"),
      (["two birds on a wire", "birds sitting on a power line"],
       "two small birds sitting together on a long black power line over the road")]),
    ("with_empty_and_unseen_words",
     [(["a dog runs in the park", "a brown dog in a park"], ""),
      (["a cat sits on a red mat", "a black cat on a mat"], "a cat on a mat"),
      (["a red car parked on a street", "a car by the curb"], "zebra xylophone quokka")]),
]


def run_case(name, references, prediction):
    gts_tok = tokenize({"img": references})
    res_tok = tokenize({"img": [prediction]})
    corpus, per, errors = score(gts_tok, res_tok)
    case = {
        "name": name,
        "references": references,
        "prediction": prediction,
        "tokenized_prediction": res_tok["img"][0],
        "tokenized_references": gts_tok["img"],
    }
    for k in METRIC_KEYS:
        case[k] = corpus.get(k)
    if errors:
        case["errors"] = errors
    return case


def run_corpus_case(name, items):
    keys = ["img%d" % i for i in range(len(items))]
    gts_tok = tokenize({k: refs for k, (refs, _) in zip(keys, items)})
    res_tok = tokenize({k: [pred] for k, (_, pred) in zip(keys, items)})
    corpus, per, errors = score(gts_tok, res_tok)
    case = {
        "name": name,
        "images": [
            {
                "references": refs,
                "prediction": pred,
                "tokenized_prediction": res_tok[k][0],
                "tokenized_references": gts_tok[k],
                **{m: per[k].get(m) for m in METRIC_KEYS},
            }
            for k, (refs, pred) in zip(keys, items)
        ],
    }
    for k in METRIC_KEYS:
        case[k] = corpus.get(k)
    if errors:
        case["errors"] = errors
    return case


# ----------------------------------------------------------------------------------------------------------
# PTB tokenizer cases
# ----------------------------------------------------------------------------------------------------------
PTB_INPUTS = [
    # contractions
    "I don't know", "it's a dog", "They can't stop", "It won't fit", "I'm here", "they're playing",
    "we've got it, she'll come and he'd go", "cannot gonna wanna", "don\u2019t with a curly apostrophe",
    "Rock 'n' roll at 5 o'clock with O'Neil",
    # possessives
    "the man's hat", "the dogs' bowls", "James' car",
    # hyphens and dashes
    "a well-known full-body suit", "a 2-year-old child", "an em\u2014dash and an en\u2013dash",
    "a spaced \u2014 em dash", "-- leading double dash", "a - single - dash",
    # numbers
    "a 3.5 inch screen", "1,000 people", "at 10:30 am", "10 p.m.", "it costs $5", "50% off", "#1 fan",
    "1/2 cup and \u00bd", "pi is 3.14159 and -7 is negative", "the 1990s and 2nd place",
    # brackets and quotes
    "a cup (with art) [and] {more}", "a \"quoted\" word", "a 'single quoted' word",
    "\u2018curly\u2019 and \u201ccurly\u201d quotes", "``ptb quotes''",
    # punctuation
    "and then...", "wait\u2026 a unicode ellipsis", "What?! No!", "a dog; a cat: a bird", "A dog.",
    "A dog...", "cats/dogs and a/b", "salt & pepper", "a *star* and =equal+ sign~", "x < y > z",
    "back\\slash here", "a_b snake_case",
    # unicode
    "caf\u00e9 na\u00efve", "\u6771\u4eac \u30bf\u30ef\u30fc", "\u00c9COLE CAF\u00c9 \u00dcBER", "a cat \U0001F600 smiling",
    "Stra\u00dfe in M\u00fcnchen", "cafe\u0301 with a combining accent",
    # whitespace and case
    "a   dog    runs", "a\tdog\nruns", "A BIG Red DOG", "DON'T STOP", "", "   ",
    # line breaks other than \n: the wrapper only replaces \n, java may split the line (misaligns a batch)
    "carriage\rreturn", "crlf\r\nline", "form\x0cfeed", "vertical\x0btab", "next\u0085line",
    "line\u2028separator", "no\u00a0break space",
    # other symbols
    "20\u00b0C \u2122 \u2192 \u00a9 \u20ac5", "It\u2019s 3 o\u2019clock", "a dog!!", "Is it?? yes...!",
    # abbreviations, urls
    "made in the U.S.", "the U.S. flag", "e.g. a dog", "Mr. Smith and Dr. Who",
    "see https://example.com/a?b=c now", "mail john@example.com today",
]


def java_raw(text):
    """Run the jar exactly as the wrapper does and return every output line (before punctuation removal)."""
    jar_dir = os.path.dirname(os.path.abspath(ptbmod.__file__))
    tmp = os.path.join(jar_dir, "_glance_ptb_raw.txt")
    with open(tmp, "wb") as fh:
        fh.write(text.replace("\n", " ").encode())
    try:
        p = subprocess.run(
            ["java", "-cp", ptbmod.STANFORD_CORENLP_3_4_1_JAR, "edu.stanford.nlp.process.PTBTokenizer",
             "-preserveLines", "-lowerCase", os.path.basename(tmp)],
            cwd=jar_dir, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    finally:
        os.remove(tmp)
    warnings = [l.strip() for l in p.stderr.decode().splitlines() if "Untokenizable" in l]
    return p.stdout.decode().split("\n"), warnings


def ptb_cases():
    out = []
    for s in PTB_INPUTS:
        tokens = tokenize({0: [s]})[0][0]
        lines, warnings = java_raw(s)
        case = {
            "input": s,
            "tokens": tokens,
            "raw_tokens": lines[0].rstrip().split(" ") if lines[0].strip() else [],
        }
        extra = [l for l in lines[1:] if l.strip()]
        if extra:
            case["extra_output_lines_dropped_by_wrapper"] = extra
        if warnings:
            case["java_warnings"] = warnings
        out.append(case)
    # cross-check: one batch run (as the real evaluation does) must give the same per-line result,
    # except for inputs the wrapper itself mis-aligns (a line break the wrapper doesn't replace).
    batch_inputs = [c["input"] for c in out if "extra_output_lines_dropped_by_wrapper" not in c]
    batch = tokenize({i: [s] for i, s in enumerate(batch_inputs)})
    single = {c["input"]: c["tokens"] for c in out}
    for i, s in enumerate(batch_inputs):
        assert batch[i][0] == single[s], (s, batch[i][0], single[s])
    return out


# ----------------------------------------------------------------------------------------------------------
def versions():
    java = subprocess.run(["java", "-version"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    return {
        "pycocoevalcap": importlib.metadata.version("pycocoevalcap"),
        "stanford_corenlp_jar": ptbmod.STANFORD_CORENLP_3_4_1_JAR,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "java": java.stdout.decode().splitlines()[0],
        "locale": "%s (LANG=%s)" % (locale.getpreferredencoding(), os.environ.get("LANG")),
    }


NOTES = [
    "bleu_n are corpus-level (sum of clipped n-gram matches / sum of n-gram counts over all scored images, "
    "geometric mean, one brevity penalty from summed test length vs summed 'closest' reference length; "
    "closest ties go to the SHORTER reference). Every precision is (correct + 1e-15) / (guess + 1e-9), so a "
    "zero precision gives a tiny non-zero value, not 0; brevity penalty applies when "
    "(testlen + 1e-15) / (reflen + 1e-9) < 1.",
    "per-image bleu uses the same formula on one image (per_image/cases values show the 1e-15/1e-9 smoothing, "
    "e.g. a one-word exact match has bleu_2 = 1e-3).",
    "rouge_l: LCS on tokens from str.split(' ') (so an empty caption is ONE empty token), beta = 1.2, "
    "max precision and max recall over references taken separately; corpus value = mean over images.",
    "cider: pycocoevalcap Cider == CIDEr-D: n = 1..4, idf = log(#images) - log(max(1, df)), tf = raw counts, "
    "hypothesis weight clipped to min(hyp, ref) per n-gram, cosine per n, gaussian length penalty "
    "exp(-(lh - lr)^2 / 72) where the 'length' is the number of BIGRAMS (len(tokens) - 1, 0 for <2 tokens), "
    "mean over n, mean over references, x10; corpus = mean over images. With ONE image idf is 0 so CIDEr is 0.",
    "An empty (or punctuation-only) prediction scores 0 everywhere but still counts as an image: it adds its "
    "'closest' (= shortest) reference length to the corpus BLEU reference length and 0 to the ROUGE/CIDEr means.",
    "-lowerCase lowercases the -LRB-/-RRB- bracket tokens to -lrb-/-rrb-, so pycocoevalcap's punctuation list "
    "(which has them upper-case) does NOT remove them: '(' and ')' survive as tokens '-lrb-' and '-rrb-' "
    "(likewise [ ] { } -> -lsb- -rsb- -lcb- -rcb-).",
    "Punctuation removal drops only WHOLE tokens equal to one of '' ' `` ` -LRB- -RRB- -LCB- -RCB- . ? ! , : - -- ... ; "
    "so multi-character tokens such as '!!', '?!', '??' survive, and periods inside tokens survive ('u.s.', 'p.m.', "
    "'mr.', 'e.g.', '3.5').",
    "ROUGE-L of an empty prediction against references that are all empty after tokenization is 1.0 ('' == ''), "
    "and CIDEr then raises (no n-grams -> max() of empty df); see cases.",
    "Hazard in pycocoevalcap itself: the wrapper only replaces '\\n' before feeding java one caption per line; "
    "a caption containing \\r, \\f, \\v or U+2028 makes java emit an extra line and every later caption in "
    "that tokenize() batch is mis-aligned (see ptb_cases 'extra_output_lines_dropped_by_wrapper'). The fixture "
    "avoids such captions.",
]


def main():
    result = main_fixture()
    result["cases"] = [run_case(*c) for c in CASES]
    result["corpus_cases"] = [run_corpus_case(*c) for c in CORPUS_CASES]
    result["notes"] = NOTES
    result["versions"] = versions()
    with open(os.path.join(HERE, "expected.json"), "w", encoding="utf-8") as fh:
        json.dump(result, fh, ensure_ascii=False, indent=2)
        fh.write("\n")
    ptb = ptb_cases()
    with open(os.path.join(HERE, "ptb_cases.json"), "w", encoding="utf-8") as fh:
        json.dump(ptb, fh, ensure_ascii=False, indent=2)
        fh.write("\n")
    print({k: result[k] for k in METRIC_KEYS + ["images_scored"]})


if __name__ == "__main__":
    main()
