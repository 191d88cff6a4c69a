#!/usr/bin/env bash
# The Kubernetes recipe without a cluster: validates both manifests against Kubernetes 1.33's
# schemas (kubernetes-validate from PyPI, strict), then runs the Indexed Job's own container
# command once per index with JOB_COMPLETION_INDEX set, as the pods would, and the merge Job's
# command after them, with the volumes mapped to local folders (the tiny BLIP fixture for the
# model, ../shared/images for the images) and 4 completions. Checks that the merged file holds
# every image exactly once.
#
#     deploy/k8s/test-k8s.sh          # GLANCE=path/to/glance to skip the cargo build
set -euo pipefail
cd "$(dirname "$0")/../.."
repo=$(pwd)
work=$(mktemp -d /tmp/glance-k8s.XXXXXX)
trap 'rm -rf "$work"' EXIT

python3 -m venv "$work/venv" >/dev/null
"$work/venv/bin/pip" install --quiet kubernetes-validate pyyaml
"$work/venv/bin/kubernetes-validate" --strict -k 1.33.0 \
    deploy/k8s/caption-indexed-job.yaml deploy/k8s/merge-job.yaml

if [ -z "${GLANCE:-}" ]; then
    cargo build --locked --quiet
    GLANCE=$repo/target/debug/glance
fi
mkdir -p "$work/out" "$work/bin"
ln -s "$GLANCE" "$work/bin/glance"

# Each pod's command, with the volumes and the model mapped to local paths.
"$work/venv/bin/python" - "$repo" "$work" <<'PY'
import json, os, subprocess, sys, yaml
repo, work = sys.argv[1], sys.argv[2]
paths = {"/images": os.path.join(repo, "..", "shared", "images"), "/out": os.path.join(work, "out")}
def local(arg):
    for k, v in paths.items():
        arg = arg.replace(k, v)
    return arg.replace("Salesforce/blip-image-captioning-base", os.path.join(repo, "tests/fixtures/blip-tiny"))
env_path = os.path.join(work, "bin") + os.pathsep + os.environ["PATH"]
job = yaml.safe_load(open(os.path.join(repo, "deploy/k8s/caption-indexed-job.yaml")))
job["spec"]["completions"] = 4
container = job["spec"]["template"]["spec"]["containers"][0]
env = {e["name"]: e["value"] for e in container["env"]}
env["GLANCE_SHARD_COUNT"] = "4"
env.pop("HF_HOME")
codes = []
for index in range(job["spec"]["completions"]):
    cmd = [local(a) for a in container["command"] + container["args"]] + ["--max-new-tokens", "3"]
    codes.append(subprocess.call(cmd, env={**os.environ, **env, "PATH": env_path, "JOB_COMPLETION_INDEX": str(index)}))
print("pods exited", codes)
assert codes == [0, 0, 0, 0], codes
merge = yaml.safe_load(open(os.path.join(repo, "deploy/k8s/merge-job.yaml")))
c = merge["spec"]["template"]["spec"]["containers"][0]
code = subprocess.call([local(a) for a in c["command"] + c["args"]], env={**os.environ, "PATH": env_path})
assert code == 0, f"merge exited {code}"
records = [json.loads(l) for l in open(os.path.join(work, "out", "captions.jsonl"))]
files = [r["file"] for r in records]
expected = sorted(f for f in os.listdir(paths["/images"]) if f.endswith((".png", ".jpg")))
assert len(files) == len(set(files)) == len(expected), (len(files), len(set(files)), len(expected))
assert all("caption" in r for r in records)
print(f"merged {len(files)} records, each of the {len(expected)} images once")
PY
echo "1 passed, 0 failed"
