"""The command lines the container image and the Kubernetes manifests give
echo-server, checked by the binary itself: hadolint and the schemas know
nothing of its options, so a misspelt option there would pass them and fail
only in the cluster.

    python3 .ci/deploy_args.py BINARY Dockerfile MANIFEST.yaml...

The server's options are parsed with `--generate man` added (parsed in full,
then the man page instead of serving: nothing is bound); the HEALTHCHECK's
probe is run, and only a usage error (exit 2) fails (nothing need listen on
its port here). Needs PyYAML (kubernetes-validate brings it).
"""

import json
import subprocess
import sys

import yaml


def dockerfile_commands(path):
    """The JSON arrays of CMD and of HEALTHCHECK ... CMD, continuations joined."""
    text = open(path, encoding="utf-8").read().replace("\\\n", " ")
    cmd = probe = None
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("CMD ["):
            cmd = json.loads(line[len("CMD "):])
        elif line.startswith("HEALTHCHECK ") and " CMD [" in line:
            probe = json.loads(line[line.index(" CMD [") + len(" CMD "):])
    if cmd is None or probe is None:
        sys.exit(f"{path}: no CMD or no HEALTHCHECK CMD in exec form")
    return cmd, probe


def manifest_args(path):
    """The args of every container of every Deployment in the file."""
    with open(path, encoding="utf-8") as f:
        for doc in yaml.safe_load_all(f):
            if doc and doc.get("kind") == "Deployment":
                for c in doc["spec"]["template"]["spec"]["containers"]:
                    yield f"{path}: Deployment {doc['metadata']['name']}", c.get("args", [])


def parses(binary, what, args):
    run = subprocess.run([binary, *args, "--generate", "man"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if run.returncode != 0:
        sys.exit(f"{what}: echo-server {' '.join(args)}: {run.stderr.strip()}")
    print(f"{what}: echo-server {' '.join(args)}: parses")


def main():
    binary, dockerfile, *manifests = sys.argv[1:]
    cmd, probe = dockerfile_commands(dockerfile)
    parses(binary, f"{dockerfile} CMD", cmd)
    # The HEALTHCHECK names the binary by its path in the image.
    run = subprocess.run([binary, *probe[1:]], capture_output=True, text=True, timeout=30)
    if run.returncode == 2:
        sys.exit(f"{dockerfile} HEALTHCHECK: {' '.join(probe)}: {run.stderr.strip()}")
    print(f"{dockerfile} HEALTHCHECK: {' '.join(probe)}: parses")
    for path in manifests:
        for what, args in manifest_args(path):
            parses(binary, what, args)


if __name__ == "__main__":
    main()
