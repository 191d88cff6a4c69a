#!/usr/bin/env python3
"""Write the committed `glance eval classify` test set and its expected metrics (run by hand).

What it writes (next to this file)
==================================
* ``truth.csv``         ground truth, columns ``file,label`` (plus a ``note`` column that must be
                        ignored), 60 images over 5 classes of unequal sizes; some labels are spelled
                        with ``_`` or capitals to exercise label normalisation.
* ``predictions.jsonl`` glance classify records (``file``, ``label``, ``score``, ``predictions`` with
                        the top 3), made deterministically from a seeded RNG: mostly right, some
                        confusions, a few ``unknown`` labels (as ``--min-score`` writes them), two
                        error records, two predictions of images not in the truth, one truth image
                        predicted nowhere, and ``file`` written with different folders.
* ``expected.json``     what scikit-learn computes on the matched pairs: ``accuracy_score``,
                        ``precision_recall_fscore_support`` per class and averaged (``macro``,
                        ``weighted``; ``zero_division=0``, labels = union of true and predicted),
                        ``confusion_matrix``, and top-3 accuracy (truth among the record's first 3
                        ``predictions``), plus the bookkeeping lists.

Matching rules (glance's contract): a record matches the truth row with the same file name (last
path component); labels compare after normalisation: ``_`` -> space, whitespace collapsed,
lower-cased. A record with an ``error`` is failed (not scored, not "missing").

Run from the repository root:  venv/bin/python eval/classify/make_expected.py
"""

import csv
import json
import os
import random

import numpy as np
import sklearn
from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

HERE = os.path.dirname(os.path.abspath(__file__))
CLASSES = ["cat", "dog", "golden_retriever", "Bird", "car"]
SIZES = [18, 14, 9, 12, 7]


def norm(label):
    return " ".join(label.replace("_", " ").split()).lower()


def main():
    rng = random.Random(20261130)
    truth = []
    n = 0
    for cls, size in zip(CLASSES, SIZES):
        for _ in range(size):
            n += 1
            truth.append((f"img_{n:03d}.jpg", cls))
    with open(os.path.join(HERE, "truth.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file", "label", "note"])
        for file, label in truth:
            w.writerow([file, label, "hand-checked" if rng.random() < 0.3 else ""])

    # How the "model" names classes: other spellings than the truth's.
    spoken = {"cat": "Cat", "dog": "dog", "golden_retriever": "golden retriever", "Bird": "bird", "car": "car"}
    folders = ["", "photos/", "/data/set/", "./"]
    records = []
    for i, (file, label) in enumerate(truth):
        if i == 7:
            continue  # never predicted: reported as missing
        others = [c for c in CLASSES if c != label]
        r = rng.random()
        if r < 0.62:
            ranked = [label] + rng.sample(others, 2)
        elif r < 0.80:
            ranked = [others[rng.randrange(4)]]
            ranked += [label] + rng.sample([c for c in others if c != ranked[0]], 1)
        elif r < 0.92:
            ranked = rng.sample(others, 3)
        else:
            ranked = [label] + rng.sample(others, 2)
            ranked = ["unknown"] + ranked  # below --min-score: label unknown, list still ranked
        top = ranked[0]
        listed = [c for c in ranked if c != "unknown"][:3]
        scores = sorted((round(rng.uniform(0.05, 0.95), 4) for _ in listed), reverse=True)
        rec = {
            "file": folders[i % 4] + file,
            "label": spoken.get(top, top),
            "score": scores[0],
            "predictions": [{"label": spoken[c], "score": s} for c, s in zip(listed, scores)],
        }
        records.append(rec)
    records.insert(5, {"file": "photos/img_020.jpg", "error": "cannot decode: truncated file"})
    records.insert(30, {"file": "img_041.jpg", "error": "model failed on this batch: out of memory"})
    records.append({"file": "extra/not_in_truth.jpg", "label": "cat", "score": 0.9, "predictions": [{"label": "cat", "score": 0.9}]})
    records.append({"file": "elsewhere.png", "label": "dog", "score": 0.8, "predictions": [{"label": "dog", "score": 0.8}]})
    # img_020 and img_041 also have successful records elsewhere? No: drop their good records so they stay failed.
    failed = {"img_020.jpg", "img_041.jpg"}
    records = [r for r in records if "error" in r or r["file"].split("/")[-1] not in failed]
    with open(os.path.join(HERE, "predictions.jsonl"), "w") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")

    truth_by_name = {file: label for file, label in truth}
    y_true, y_pred, topk = [], [], []
    unmatched, failed_list, seen = [], [], set()
    for r in records:
        name = r["file"].split("/")[-1]
        if "error" in r:
            failed_list.append(r["file"])
            continue
        if name not in truth_by_name:
            unmatched.append(r["file"])
            continue
        seen.add(name)
        t = norm(truth_by_name[name])
        y_true.append(t)
        y_pred.append(norm(r["label"]))
        topk.append(any(norm(p["label"]) == t for p in r["predictions"][:3]))
    failed_names = {f.split("/")[-1] for f in failed_list}
    missing = [f for f, _ in truth if f not in seen and f not in failed_names]
    labels = sorted(set(y_true) | set(y_pred))
    p, rc, f1, sup = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    macro = precision_recall_fscore_support(y_true, y_pred, labels=labels, average="macro", zero_division=0)
    weighted = precision_recall_fscore_support(y_true, y_pred, labels=labels, average="weighted", zero_division=0)
    cm = confusion_matrix(y_true, y_pred, labels=labels)
    expected = {
        "note": "written by make_expected.py with scikit-learn; see its docstring",
        "sklearn": sklearn.__version__,
        "top_k": 3,
        "accuracy": accuracy_score(y_true, y_pred),
        "top_k_accuracy": float(np.mean(topk)),
        "macro": {"precision": macro[0], "recall": macro[1], "f1": macro[2]},
        "weighted": {"precision": weighted[0], "recall": weighted[1], "f1": weighted[2]},
        "per_class": {
            l: {"precision": float(p[i]), "recall": float(rc[i]), "f1": float(f1[i]), "support": int(sup[i])}
            for i, l in enumerate(labels)
        },
        "confusion_labels": labels,
        "confusion_matrix": cm.tolist(),
        "images_scored": len(y_true),
        "missing_predictions": missing,
        "unmatched_predictions": unmatched,
        "failed_predictions": failed_list,
    }
    with open(os.path.join(HERE, "expected.json"), "w") as f:
        json.dump(expected, f, indent=1)
        f.write("\n")
    print(json.dumps({k: expected[k] for k in ["accuracy", "top_k_accuracy", "macro", "images_scored"]}))


if __name__ == "__main__":
    main()
