#!/usr/bin/env python3
"""Checks everything under deploy/ that Kubernetes would read, offline.

- Renders every kustomization (not the components, which the overlays pull in) with
  `kubectl kustomize` and takes the plain manifests of deploy/kserve and deploy/fluid as they are.
- Validates every object: Kubernetes' own kinds against the schemas bundled with the
  kubernetes-validate package (strict: unknown fields are errors), KServe, Fluid,
  prometheus-operator and KEDA objects against their CRDs' OpenAPI schemas vendored in
  deploy/schemas/ (closed as the API server's strict field validation closes them).
- Checks what a schema cannot see: selectors that select the pods they are meant to, ports named
  by probes, Services and monitors that exist, volumes, ConfigMaps, Secrets and PVCs that are
  defined, scaling targets, the prometheus-adapter rule behind the HPA's metric, every `kiln`
  flag and KILN_* variable accepted by the built binary (`--kiln`), the drain timing, KServe's
  conventions, and the Fluid FUSE entry script run against a config.json as Fluid writes it.

    validate.py --kubectl PATH [--kiln PATH] [--require-all]

Exits non-zero on the first render failure or after listing every problem found. Without
--require-all, a missing optional tool (jq, the kiln binary) skips its check with a
message; with it, that is a failure.
"""

import argparse
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

import jsonschema
import kubernetes_validate
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEPLOY = os.path.join(ROOT, "deploy")
K8S_VERSION = "1.31"  # the oldest Kubernetes the manifests are meant for
KILN_IMAGE = "ghcr.io/example/kiln"
WORKLOADS = ("Deployment", "StatefulSet", "DaemonSet", "Job")

problems = []


def problem(where, msg):
    problems.append(f"{where}: {msg}")


def rel(path):
    return os.path.relpath(path, ROOT)


# ---- loading -------------------------------------------------------------------------------


def kustomizations():
    """Directories under deploy/ with a kustomization.yaml that is not a Component."""
    out = []
    for path in sorted(glob.glob(os.path.join(DEPLOY, "**", "kustomization.yaml"), recursive=True)):
        with open(path) as f:
            if (yaml.safe_load(f) or {}).get("kind") != "Component":
                out.append(os.path.dirname(path))
    return out


def render(kubectl, directory):
    run = subprocess.run([kubectl, "kustomize", directory], capture_output=True, text=True)
    if run.returncode != 0:
        sys.exit(f"FAIL kubectl kustomize {rel(directory)}:\n{run.stderr}")
    return [d for d in yaml.safe_load_all(run.stdout) if d]


def plain_files():
    files = []
    for sub in ("kserve", "fluid"):
        files += sorted(glob.glob(os.path.join(DEPLOY, sub, "*.yaml")))
    files.append(os.path.join(DEPLOY, "alerts", "prometheusrule.yaml"))
    return [f for f in files if os.path.exists(f) and not f.endswith("kustomization.yaml")]


# ---- schemas -------------------------------------------------------------------------------


def close(node):
    """Unknown fields are errors where the CRD lists the fields and keeps no unknown ones."""
    if isinstance(node, dict):
        if (
            "properties" in node
            and "additionalProperties" not in node
            and not node.get("x-kubernetes-preserve-unknown-fields")
        ):
            node["additionalProperties"] = False
        for v in node.values():
            close(v)
    elif isinstance(node, list):
        for v in node:
            close(v)
    return node


def crd_schemas():
    out = {}
    for path in sorted(glob.glob(os.path.join(DEPLOY, "schemas", "*.json"))):
        with open(path) as f:
            schema = json.load(f)
        crd = schema["x-kiln-crd"]
        key = (f"{crd['group']}/{crd['version']}", crd["kind"])
        out[key] = jsonschema.Draft202012Validator(close(schema))
    return out


DNS1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def validate_object(obj, where, crds):
    kind, api = obj.get("kind"), obj.get("apiVersion")
    name = (obj.get("metadata") or {}).get("name", "?")
    where = f"{where} {kind}/{name}"
    if (api, kind) in crds:
        for e in sorted(crds[(api, kind)].iter_errors(obj), key=lambda e: list(e.path)):
            problem(where, f"{'.'.join(map(str, e.path)) or '(root)'}: {e.message}")
        if not DNS1123.match(name) or len(name) > 253:
            problem(where, "metadata.name is not a DNS-1123 subdomain")
        return
    try:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as e:
        problem(where, f"{'.'.join(map(str, e.path)) or '(root)'}: {e.message}")
    except kubernetes_validate.SchemaNotFoundError:
        problem(where, f"no schema for {api} {kind} (vendor its CRD in deploy/schemas)")


# ---- cross checks --------------------------------------------------------------------------


def pod_spec(obj):
    spec = obj.get("spec") or {}
    if obj["kind"] in WORKLOADS:
        return (spec.get("template") or {}).get("spec") or {}
    if obj["kind"] in ("ServingRuntime", "ClusterServingRuntime"):
        return spec
    if obj["kind"] == "DataProcess":
        return ((spec.get("processor") or {}).get("job") or {}).get("podSpec") or {}
    return None


def pod_labels(obj):
    return ((obj["spec"].get("template") or {}).get("metadata") or {}).get("labels") or {}


def selects(selector, labels):
    if not selector:
        return False
    for k, v in (selector.get("matchLabels") or {}).items():
        if labels.get(k) != v:
            return False
    for e in selector.get("matchExpressions") or []:
        has, val = e["key"] in labels, labels.get(e["key"])
        op = e["operator"]
        if (op == "In" and val not in e["values"]) or (op == "NotIn" and val in e["values"]):
            return False
        if (op == "Exists" and not has) or (op == "DoesNotExist" and has):
            return False
    return True


def containers(spec):
    return (spec.get("initContainers") or []) + (spec.get("containers") or [])


def check_pod(obj, spec, where, names):
    volumes = {v["name"]: v for v in spec.get("volumes") or []}
    claims = {t["metadata"]["name"] for t in (obj["spec"].get("volumeClaimTemplates") or [])}
    for v in volumes.values():
        if "persistentVolumeClaim" in v and v["persistentVolumeClaim"]["claimName"] not in names["PersistentVolumeClaim"]:
            problem(where, f"volume {v['name']}: no PVC {v['persistentVolumeClaim']['claimName']}")
        if "configMap" in v and v["configMap"]["name"] not in names["ConfigMap"] and not v["configMap"].get("optional"):
            problem(where, f"volume {v['name']}: no ConfigMap {v['configMap']['name']}")
        if "secret" in v and v["secret"]["secretName"] not in names["Secret"] and not v["secret"].get("optional"):
            problem(where, f"volume {v['name']}: no Secret {v['secret']['secretName']}")
    for c in containers(spec):
        cw = f"{where} container {c['name']}"
        ports = {p.get("name") for p in c.get("ports") or []} | {p["containerPort"] for p in c.get("ports") or []}
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            port = ((c.get(probe) or {}).get("httpGet") or {}).get("port")
            if isinstance(port, str) and port not in ports:
                problem(cw, f"{probe} names port {port}, which the container does not declare")
        for m in c.get("volumeMounts") or []:
            if m["name"] not in volumes and m["name"] not in claims:
                problem(cw, f"volumeMount {m['name']}: no such volume")
        for ef in c.get("envFrom") or []:
            for key, kind in (("configMapRef", "ConfigMap"), ("secretRef", "Secret")):
                ref = ef.get(key)
                if ref and ref["name"] not in names[kind] and not ref.get("optional"):
                    problem(cw, f"envFrom: no {kind} {ref['name']}")
        seen = set()
        for e in c.get("env") or []:
            if e["name"] in seen:
                problem(cw, f"env {e['name']} set twice")
            seen.add(e["name"])
            for key, kind in (("configMapKeyRef", "ConfigMap"), ("secretKeyRef", "Secret")):
                ref = (e.get("valueFrom") or {}).get(key)
                if ref and ref["name"] not in names[kind] and not ref.get("optional"):
                    problem(cw, f"env {e['name']}: no {kind} {ref['name']}")


def check_render(objs, where, kiln, complete):
    names = {k: set() for k in ("PersistentVolumeClaim", "ConfigMap", "Secret", "Service", "ServingRuntime")}
    seen = set()
    for o in objs:
        key = (o["apiVersion"], o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"])
        if key in seen:
            problem(where, f"{o['kind']}/{o['metadata']['name']} defined twice")
        seen.add(key)
        if o["kind"] in names:
            names[o["kind"]].add(o["metadata"]["name"])
    workloads = [o for o in objs if o["kind"] in WORKLOADS]
    by_kind_name = {(o["kind"], o["metadata"]["name"]) for o in objs}
    for o in objs:
        ow = f"{where} {o['kind']}/{o['metadata']['name']}"
        spec = pod_spec(o)
        if spec is not None:
            if complete:
                check_pod(o, spec, ow, names)
            check_kiln(spec, ow, kiln)
        if o["kind"] in ("Deployment", "StatefulSet", "DaemonSet"):
            if not selects(o["spec"]["selector"], pod_labels(o)):
                problem(ow, "spec.selector does not select the pod template's labels")
        if o["kind"] == "Service" and o["spec"].get("selector"):
            sel = {"matchLabels": o["spec"]["selector"]}
            pods = [w for w in workloads if selects(sel, pod_labels(w))]
            if not pods:
                problem(ow, "selects no pod template")
            for p in o["spec"].get("ports") or []:
                tp = p.get("targetPort")
                if isinstance(tp, str) and not any(
                    tp in {cp.get("name") for c in containers(pod_spec(w)) for cp in c.get("ports") or []} for w in pods
                ):
                    problem(ow, f"targetPort {tp} is no container port of the selected pods")
        if o["kind"] == "PodDisruptionBudget" and not any(selects(o["spec"]["selector"], pod_labels(w)) for w in workloads):
            problem(ow, "selects no pod template")
        if o["kind"] in ("HorizontalPodAutoscaler", "ScaledObject"):
            ref = o["spec"]["scaleTargetRef"]
            if (ref.get("kind", "Deployment"), ref["name"]) not in by_kind_name:
                problem(ow, f"scale target {ref.get('kind')}/{ref['name']} is not in this render")
        if o["kind"] == "HorizontalPodAutoscaler":
            for m in o["spec"].get("metrics") or []:
                if m["type"] == "Pods" and m["pods"]["metric"]["name"] not in adapter_metrics():
                    problem(ow, f"metric {m['pods']['metric']['name']} is not exposed by the prometheus-adapter rule")
        if o["kind"] == "ServiceMonitor":
            svcs = [s for s in objs if s["kind"] == "Service" and selects(o["spec"]["selector"], s["metadata"].get("labels") or {})]
            if not svcs:
                problem(ow, "selects no Service")
            for ep in o["spec"]["endpoints"]:
                if not any(ep.get("port") in {p.get("name") for p in s["spec"]["ports"]} for s in svcs):
                    problem(ow, f"endpoint port {ep.get('port')} is no port of the selected Services")
        if o["kind"] == "PodMonitor":
            pods = [w for w in workloads if selects(o["spec"]["selector"], pod_labels(w))]
            if not pods:
                problem(ow, "selects no pod template")
            for ep in o["spec"]["podMetricsEndpoints"]:
                if not any(ep.get("port") in {cp.get("name") for c in containers(pod_spec(w)) for cp in c.get("ports") or []} for w in pods):
                    problem(ow, f"port {ep.get('port')} is no container port of the selected pods")
        if o["kind"] == "InferenceService":
            model = o["spec"]["predictor"]["model"]
            if model.get("runtime") and model["runtime"] not in names["ServingRuntime"] | {"kiln"}:
                problem(ow, f"runtime {model['runtime']} is not defined")
    check_drain(objs, where)


_adapter = None


def adapter_metrics():
    global _adapter
    if _adapter is None:
        path = os.path.join(DEPLOY, "kustomize", "autoscaling", "hpa", "prometheus-adapter", "adapter-config.yaml")
        with open(path) as f:
            rules = yaml.safe_load(yaml.safe_load(f)["data"]["config.yaml"])["rules"]
        _adapter = {r["name"]["as"] for r in rules}
        for r in rules:
            if not re.search(r["name"]["matches"], r["seriesQuery"].split("{")[0]):
                problem(rel(path), f"rule {r['name']['as']}: name.matches does not match its series")
    return _adapter


def check_drain(objs, where):
    """kiln serve's grace period covers the preStop sleep and leaves time to drain."""
    for o in objs:
        if o["kind"] != "Deployment" or o["metadata"]["name"] != "kiln-serve":
            continue
        spec = pod_spec(o)
        grace = spec.get("terminationGracePeriodSeconds", 30)
        kiln = next(c for c in spec["containers"] if c["name"] == "kiln")
        cmd = ((kiln.get("lifecycle") or {}).get("preStop") or {}).get("exec", {}).get("command") or []
        if cmd[:1] != ["sleep"]:
            problem(where, "kiln serve has no preStop sleep: its listeners close before the endpoints drop the pod")
        elif grace < int(cmd[1]) + 30:
            problem(where, f"terminationGracePeriodSeconds {grace} leaves under 30 s after the {cmd[1]} s preStop sleep")


# ---- the kiln binary's flags ----------------------------------------------------------------

_help = {}


def kiln_help(kiln, sub):
    if sub not in _help:
        run = subprocess.run([kiln, *sub, "--help"], capture_output=True, text=True)
        if run.returncode != 0:
            _help[sub] = None
        else:
            _help[sub] = (set(re.findall(r"--([a-z0-9-]+)", run.stdout)), set(re.findall(r"\[env: ([A-Z0-9_]+)[=\]]", run.stdout)))
    return _help[sub]


def check_kiln(spec, where, kiln):
    for c in containers(spec):
        if not c.get("image", "").startswith(KILN_IMAGE) or not c.get("args"):
            continue
        args = c["args"]
        sub = tuple(a for a in args[: next((i for i, a in enumerate(args) if a.startswith("-")), len(args))])
        if args[0] == "cache":
            sub = sub[:2]
        else:
            sub = sub[:1]
        if kiln is None:
            continue
        known = kiln_help(kiln, sub)
        if known is None:
            problem(f"{where} container {c['name']}", f"`kiln {' '.join(sub)}` is no kiln command")
            continue
        flags, envs = known
        for a in args:
            if a.startswith("--") and a[2:].split("=")[0] not in flags:
                problem(f"{where} container {c['name']}", f"kiln {' '.join(sub)} has no flag {a}")
        for e in c.get("env") or []:
            if e["name"].startswith("KILN_") and e["name"] not in envs:
                problem(f"{where} container {c['name']}", f"kiln {' '.join(sub)} reads no {e['name']}")


# ---- single files --------------------------------------------------------------------------


def check_kserve(objs):
    for o in objs:
        if o["kind"] not in ("ServingRuntime", "ClusterServingRuntime"):
            continue
        where = f"deploy/kserve {o['kind']}/{o['metadata']['name']}"
        formats = {f["name"] for f in o["spec"]["supportedModelFormats"]}
        if not {"onnx", "kiln-recsys"} <= formats:
            problem(where, f"supportedModelFormats {sorted(formats)} lack onnx or kiln-recsys")
        if o["spec"].get("protocolVersions") != ["v2", "grpc-v2"]:
            problem(where, "protocolVersions must be [v2, grpc-v2]")
        env = {e["name"]: e.get("value") for e in o["spec"]["containers"][0].get("env") or []}
        if env.get("KILN_MODEL_REPOSITORY") != "/mnt/models":
            problem(where, "the model repository must be /mnt/models, where KServe puts the model")


def check_fluid_script(require):
    script = os.path.join(DEPLOY, "fluid", "kiln-fluid-fuse.sh")
    if not shutil.which("jq"):
        return skip_or_fail(require, "the Fluid FUSE script check needs jq")
    with tempfile.TemporaryDirectory() as tmp:
        for k, v in (("ak", "AKIDEXAMPLE"), ("sk", "secret/with spaces")):
            with open(os.path.join(tmp, k), "w") as f:
                f.write(v)
        config = {
            "mounts": [{
                "mountPoint": "s3://datasets/imagenet/train/", "name": "train",
                "options": {"endpoint": "http://minio:9000", "region": "eu-west-1",
                            "access-key-id": os.path.join(tmp, "ak"), "secret-access-key": os.path.join(tmp, "sk")},
            }],
            "targetPath": os.path.join(tmp, "runtime-mnt/thin/kiln/imagenet/thin-fuse"),
            "runtimeOptions": {"cache-dir": "/var/lib/kiln-cache/imagenet", "memory-size": "8GiB", "fuse-threads": "32"},
            "accessModes": ["ReadOnlyMany"],
        }
        with open(os.path.join(tmp, "config.json"), "w") as f:
            json.dump(config, f)
        stub = os.path.join(tmp, "kiln")
        with open(stub, "w") as f:
            f.write('#!/bin/sh\n{ printf "%s\\n" "$@"; env | grep -E "^(KILN_CACHE|AWS)_" | sort; } > "$OUT"\n')
        os.chmod(stub, 0o755)
        env = {"PATH": os.environ["PATH"], "FLUID_CONFIG": os.path.join(tmp, "config.json"),
               "KILN_BIN": stub, "OUT": os.path.join(tmp, "out")}
        run = subprocess.run(["sh", script], env=env, capture_output=True, text=True)
        if run.returncode != 0:
            return problem(rel(script), f"exited {run.returncode}: {run.stderr.strip()}")
        with open(os.path.join(tmp, "out")) as f:
            got = f.read().splitlines()
        want = ["cache", "mount", config["targetPath"],
                "AWS_ACCESS_KEY_ID=AKIDEXAMPLE", "AWS_SECRET_ACCESS_KEY=secret/with spaces",
                "KILN_CACHE_ALLOW_OTHER=true", "KILN_CACHE_DIR=/var/lib/kiln-cache/imagenet",
                "KILN_CACHE_ENDPOINT=http://minio:9000", "KILN_CACHE_FUSE_THREADS=32",
                "KILN_CACHE_MEMORY_SIZE=8GiB", "KILN_CACHE_REGION=eu-west-1",
                "KILN_CACHE_SOURCE=s3://datasets/imagenet/train/"]
        if got != want:
            problem(rel(script), f"ran `kiln {' '.join(got[:3])}` with {got[3:]}, expected {want[3:]}")
        if not os.path.isdir(config["targetPath"]):
            problem(rel(script), "did not create the target path")
        # two mounts are refused: kiln cache mounts one source
        config["mounts"].append(dict(config["mounts"][0], name="second"))
        with open(os.path.join(tmp, "config.json"), "w") as f:
            json.dump(config, f)
        run = subprocess.run(["sh", script], env=env, capture_output=True, text=True)
        if run.returncode == 0 or "exactly one mount" not in run.stderr:
            problem(rel(script), "accepted a Dataset with two mounts")
    print("ok   deploy/fluid/kiln-fluid-fuse.sh against a Fluid config.json")


def check_scrape_config():
    """The plain scrape configuration: jobs named once, relabel regexes that compile. (Debian's
    promtool is built without Kubernetes service discovery, so it cannot load this file.)"""
    path = os.path.join(DEPLOY, "monitoring", "prometheus-scrape.yml")
    with open(path) as f:
        config = yaml.safe_load(f)
    jobs = [j["job_name"] for j in config["scrape_configs"]]
    if len(set(jobs)) != len(jobs):
        problem(rel(path), f"job names repeat: {jobs}")
    for job in config["scrape_configs"]:
        if not job.get("kubernetes_sd_configs"):
            problem(rel(path), f"job {job['job_name']}: no kubernetes_sd_configs")
        for r in job.get("relabel_configs") or []:
            try:
                re.compile(r.get("regex", "(.*)"))
            except re.error as e:
                problem(rel(path), f"job {job['job_name']}: regex {r.get('regex')}: {e}")
            if r.get("action", "replace") == "replace" and not r.get("target_label"):
                problem(rel(path), f"job {job['job_name']}: a replace rule without target_label")
    print(f"ok   {rel(path)}: jobs {', '.join(jobs)}")


def check_dockerfile():
    path = os.path.join(DEPLOY, "docker", "Dockerfile")
    with open(path) as f:
        lines = [l.strip() for l in f if l.strip() and not l.lstrip().startswith("#")]
    froms = [l for l in lines if l.upper().startswith("FROM ")]
    users = [l for l in lines if l.upper().startswith("USER ")]
    if len(froms) < 2:
        problem(rel(path), "not a multi-stage build")
    if not users or users[-1].split()[1].split(":")[0] in ("root", "0"):
        problem(rel(path), "the runtime image must end with a non-root USER")
    if froms and users and lines.index(users[-1]) < lines.index(froms[-1]):
        problem(rel(path), "the last stage sets no USER")


def skip_or_fail(require, why):
    if require:
        problem("environment", why)
    else:
        print(f"SKIPPED {why}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--kubectl", required=True)
    ap.add_argument("--kiln")
    ap.add_argument("--require-all", action="store_true")
    a = ap.parse_args()
    if a.kiln is None:
        skip_or_fail(a.require_all, "the kiln flag check needs the built binary (--kiln)")
    crds = crd_schemas()
    for directory in kustomizations():
        objs = render(a.kubectl, directory)
        for o in objs:
            validate_object(o, rel(directory), crds)
        before = len(problems)
        # a base alone may refer to what another base defines (kiln learn mounts kiln serve's
        # model repository PVC): its references are checked where the overlays combine them
        complete = os.path.dirname(directory) != os.path.join(DEPLOY, "kustomize", "base")
        check_render(objs, rel(directory), a.kiln, complete)
        print(f"{'ok  ' if len(problems) == before else 'FAIL'} {rel(directory)}: {len(objs)} objects")
    for path in plain_files():
        with open(path) as f:
            objs = [d for d in yaml.safe_load_all(f) if d]
        for o in objs:
            validate_object(o, rel(path), crds)
        check_kserve(objs)
        for o in objs:
            if pod_spec(o) is not None:
                check_kiln(pod_spec(o), rel(path), a.kiln)
        print(f"ok   {rel(path)}: {len(objs)} objects")
    check_fluid_script(a.require_all)
    check_scrape_config()
    check_dockerfile()
    if problems:
        print(f"\n{len(problems)} problem(s):")
        for p in problems:
            print(f"  {p}")
        sys.exit(1)
    print("all deploy manifests valid")


if __name__ == "__main__":
    main()
