#!/usr/bin/env python3
"""Checks that the compose and Kubernetes files parse and carry what operators rely on.

Run by CTest (test name deploy_files). Exits non-zero with one line per problem.
"""
import json
import os
import sys

import yaml

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
problems = []


def check(cond, msg):
    if not cond:
        problems.append(msg)


def load_all(rel):
    with open(os.path.join(ROOT, rel)) as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


# compose
compose = load_all("deploy/compose.yaml")[0]
services = compose.get("services", {})
gpu = services.get("spritediff", {})
devices = gpu.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])
check(any(d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", []) for d in devices),
      "compose: spritediff must reserve an nvidia device with capabilities [gpu]")
cpu = services.get("spritediff-cpu", {})
check("cpu" in cpu.get("profiles", []), "compose: a spritediff-cpu service in profile 'cpu'")
check(not cpu.get("deploy"), "compose: the CPU service reserves no GPU")
for name, svc in [("spritediff", gpu), ("spritediff-cpu", cpu)]:
    vols = svc.get("volumes", [])
    check(any(str(v).endswith("/models") for v in vols), f"compose {name}: a models volume")
    check(any(str(v).endswith(":ro") and "/data" in str(v) for v in vols), f"compose {name}: training data read-only")
    check(any("/state" in str(v) for v in vols), f"compose {name}: a job state volume")
    check("healthcheck" in svc and "health" in " ".join(svc["healthcheck"].get("test", [])),
          f"compose {name}: a healthcheck through spritectl health")
    check(any("50051" in str(p) for p in svc.get("ports", [])), f"compose {name}: the gRPC port")
    check(any("9464" in str(p) for p in svc.get("ports", [])), f"compose {name}: the metrics port")
    used = set(svc.get("secrets", []))
    check({"spritediff-tokens", "spritediff-tls.crt", "spritediff-tls.key"} <= used,
          f"compose {name}: token file, TLS certificate and key come from compose secrets")
    check(all(s in compose.get("secrets", {}) for s in used), f"compose {name}: every secret it uses is defined")
    check("--tls-ca" in svc["healthcheck"].get("test", []), f"compose {name}: the healthcheck speaks TLS")

# The container config binds publicly, so it must name TLS and token files under /run/secrets.
with open(os.path.join(ROOT, "docker", "container.json")) as f:
    container = json.load(f)
for key in ["auth_token_file", "tls_cert_file", "tls_key_file"]:
    check(str(container.get(key, "")).startswith("/run/secrets/"), f"docker/container.json: {key} under /run/secrets")
check(not container.get("allow_insecure_public", False), "docker/container.json: no allow_insecure_public")

# kubernetes
docs = []
for f in sorted(os.listdir(os.path.join(ROOT, "deploy", "k8s"))):
    if f.endswith(".yaml"):
        docs += load_all(os.path.join("deploy", "k8s", f))
kinds = {}
for d in docs:
    kinds.setdefault(d["kind"], []).append(d)
for kind in ["Deployment", "Service", "ConfigMap", "PersistentVolumeClaim", "Job"]:
    check(kind in kinds, f"k8s: a {kind}")

# Every key and its built-in default, from the docs page generated from the key table
# (common/config_keys.cc; the test config_docs keeps the page and the table the same).
defaults = {}
with open(os.path.join(ROOT, "docs", "configuration.md")) as f:
    for line in f:
        cells = [c.strip() for c in line.split("|")]
        if len(cells) > 3 and cells[1].startswith("`") and cells[2].startswith("`"):
            defaults[cells[1].strip("`")] = json.loads(cells[2].strip("`"))
check(len(defaults) > 30, "docs/configuration.md: the key tables")
config = {**defaults, **json.loads(kinds["ConfigMap"][0]["data"]["container.json"])}
check(set(config) <= set(defaults), f"k8s ConfigMap: unknown config keys {sorted(set(config) - set(defaults))}")
check(config.get("bind") == "0.0.0.0", "k8s ConfigMap: bind 0.0.0.0 inside the pod")

dep = kinds["Deployment"][0]["spec"]["template"]["spec"]
main = dep["containers"][0]
check(main["resources"]["limits"].get("nvidia.com/gpu") == 1, "k8s Deployment: nvidia.com/gpu: 1")
check("requests" in main["resources"], "k8s Deployment: resource requests")
for key in ["auth_token_file", "tls_cert_file", "tls_key_file"]:
    check(str(config.get(key, "")).startswith("/run/secrets/"), f"k8s ConfigMap: {key} under /run/secrets")
check(not config.get("allow_insecure_public", False), "k8s ConfigMap: no allow_insecure_public")
secret_volumes = {v["name"] for v in dep.get("volumes", []) if "secret" in v}
check(any(m["name"] in secret_volumes and m["mountPath"] == "/run/secrets" for m in main.get("volumeMounts", [])),
      "k8s Deployment: a Secret volume mounted at /run/secrets")
# The kubelet's native gRPC probe cannot speak TLS: with TLS on, probes exec spritectl health.
for probe in ["livenessProbe", "readinessProbe"]:
    p = main.get(probe, {})
    cmd = p.get("exec", {}).get("command", [])
    check("grpc" in p or ("spritectl" in cmd and "health" in cmd and "--tls-ca" in cmd),
          f"k8s Deployment: {probe} through the gRPC health service (native, or spritectl health with TLS)")
check(dep.get("terminationGracePeriodSeconds", 30) > config["shutdown_grace_s"],
      "k8s Deployment: terminationGracePeriodSeconds must exceed shutdown_grace_s")
check(any(p.get("containerPort") == config["metrics_port"] for p in main.get("ports", [])),
      "k8s Deployment: the metrics port of the ConfigMap is a container port")
svc = kinds["Service"][0]["spec"]
check(svc["ports"][0]["port"] == 50051, "k8s Service: port 50051")
job = kinds["Job"][0]["spec"]["template"]["spec"]["containers"][0]
check(job["resources"]["limits"].get("nvidia.com/gpu") == 1, "k8s Job: training has its own GPU")
# multi-node data-parallel training: an Indexed Job whose pods find rank 0 through a headless Service
indexed = [j for j in kinds["Job"] if j["spec"].get("completionMode") == "Indexed"]
check(len(indexed) == 1, "k8s: one Indexed Job for data-parallel training")
if indexed:
    spec = indexed[0]["spec"]
    pod = spec["template"]["spec"]
    env = {e["name"]: e.get("value") for e in pod["containers"][0].get("env", [])}
    headless = {s["metadata"]["name"]: s["spec"] for s in kinds["Service"] if s["spec"].get("clusterIP") == "None"}
    check(pod.get("subdomain") in headless, "k8s Indexed Job: subdomain names a headless Service")
    check(env.get("WORLD_SIZE") == str(spec.get("completions")) == str(spec.get("parallelism")),
          "k8s Indexed Job: WORLD_SIZE == completions == parallelism")
    check(str(env.get("MASTER_ADDR", "")).startswith(indexed[0]["metadata"]["name"] + "-0." + str(pod.get("subdomain"))),
          "k8s Indexed Job: MASTER_ADDR is pod 0 under the headless Service")
    check("JOB_COMPLETION_INDEX" in " ".join(pod["containers"][0].get("args", [])), "k8s Indexed Job: RANK from the index")

# Dockerfiles: one source of truth with the README, non-root, health-checked.
for name in ["docker/Dockerfile", "docker/Dockerfile.cuda"]:
    with open(os.path.join(ROOT, name)) as f:
        text = f.read()
    check("scripts/install-deps.sh" in text and "make build" in text, f"{name}: builds with install-deps.sh and make build")
    check("\nUSER " in text and "USER root" not in text, f"{name}: runs as a non-root user")
    check("HEALTHCHECK" in text and "spritectl" in text, f"{name}: HEALTHCHECK through the gRPC health service")

for p in problems:
    print("deploy check:", p)
print(f"deploy files: {len(problems)} problem(s)")
sys.exit(1 if problems else 0)
