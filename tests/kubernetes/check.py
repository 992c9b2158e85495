"""Checks of deploy/kubernetes/, run by tests/kubernetes.rs with the Python
that has kubernetes-validate (tests/requirements.txt). No cluster is needed.

    check.py schemas VERSION...   every core object validates strictly against
                                  the Kubernetes schemas of each VERSION
    check.py crds                 ServiceMonitor and PrometheusRule have the
                                  shape their CRDs require
    check.py rules OUT            the PrometheusRule's groups equal
                                  deploy/prometheus/alerts.yml's; writes them
                                  to OUT as a rule file for promtool
    check.py wiring               selectors, ports and names agree across
                                  objects
    check.py env GATEWAY SHIM     every LOGDRAIN_* variable set is one that the
                                  binary it is given to accepts (their --help)
    check.py grace                terminationGracePeriodSeconds covers the
                                  gateway's shutdown at its LOGDRAIN_SHUTDOWN_GRACE
    check.py images VERSION       every logdrain image is tagged VERSION

CHECK_MANIFESTS_DIR, when set, names the directory to check instead of
deploy/kubernetes/. Prints what failed, one line each, and exits 1; exits 0 when all is well.
"""

import os
import pathlib
import re
import subprocess
import sys

import jsonschema
import kubernetes_validate
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
# CHECK_MANIFESTS_DIR: another copy of deploy/kubernetes/ to check (the
# tests use it to show that a broken manifest is caught).
MANIFESTS = pathlib.Path(os.environ.get("CHECK_MANIFESTS_DIR") or ROOT / "deploy" / "kubernetes")
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
MONITORING_GROUP = "monitoring.coreos.com/v1"

DURATION = r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"
STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
METADATA = {
    "type": "object",
    "required": ["name", "namespace"],
    "additionalProperties": False,
    "properties": {
        "name": {"type": "string", "minLength": 1},
        "namespace": {"type": "string", "minLength": 1},
        "labels": STRING_MAP,
        "annotations": STRING_MAP,
    },
}

# The part of the prometheus-operator CRDs (monitoring.coreos.com/v1) that
# these manifests use, with the CRDs' required fields, types and patterns.
# Anything outside it is refused: a field added to a manifest must be added
# here from the CRD first, so a misspelt one cannot pass.
SERVICE_MONITOR = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": MONITORING_GROUP},
        "kind": {"const": "ServiceMonitor"},
        "metadata": METADATA,
        "spec": {
            "type": "object",
            "required": ["endpoints", "selector"],
            "additionalProperties": False,
            "properties": {
                "jobLabel": {"type": "string"},
                "selector": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {"matchLabels": STRING_MAP},
                },
                "endpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "port": {"type": "string"},
                            "path": {"type": "string"},
                            "scheme": {"enum": ["http", "https", "HTTP", "HTTPS"]},
                            "interval": {"type": "string", "pattern": DURATION},
                            "scrapeTimeout": {"type": "string", "pattern": DURATION},
                        },
                    },
                },
            },
        },
    },
}
PROMETHEUS_RULE = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": MONITORING_GROUP},
        "kind": {"const": "PrometheusRule"},
        "metadata": METADATA,
        "spec": {
            "type": "object",
            "required": ["groups"],
            "additionalProperties": False,
            "properties": {
                "groups": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["name"],
                        "additionalProperties": False,
                        "properties": {
                            "name": {"type": "string", "minLength": 1},
                            "interval": {"type": "string", "pattern": DURATION},
                            "limit": {"type": "integer"},
                            "rules": {
                                "type": "array",
                                "items": {
                                    "type": "object",
                                    "required": ["expr"],
                                    "additionalProperties": False,
                                    "oneOf": [
                                        {"required": ["alert"]},
                                        {"required": ["record"]},
                                    ],
                                    "properties": {
                                        "alert": {"type": "string"},
                                        "record": {"type": "string"},
                                        "expr": {"type": ["string", "integer"]},
                                        "for": {"type": "string", "pattern": DURATION},
                                        "keep_firing_for": {"type": "string", "pattern": DURATION},
                                        "labels": STRING_MAP,
                                        "annotations": STRING_MAP,
                                    },
                                },
                            },
                        },
                    },
                }
            },
        },
    },
}
CRD_SCHEMAS = {"ServiceMonitor": SERVICE_MONITOR, "PrometheusRule": PROMETHEUS_RULE}


def load():
    """(file, object) for every object of every manifest, in file order."""
    files = sorted(MANIFESTS.rglob("*.yaml")) + sorted(MANIFESTS.rglob("*.yml"))
    if not files:
        sys.exit(f"no manifests found under {MANIFESTS}")
    objects = []
    for path in files:
        with open(path, encoding="utf-8") as f:
            try:
                docs = list(yaml.safe_load_all(f))
            except yaml.YAMLError as e:
                sys.exit(f"{path} is not valid YAML: {e}")
        for doc in docs:
            if doc is None:
                continue
            if not isinstance(doc, dict) or "kind" not in doc or "apiVersion" not in doc:
                sys.exit(f"{path}: a document without kind and apiVersion")
            objects.append((str(path.relative_to(MANIFESTS.parent.parent)), doc))
    return objects


def name(obj):
    return f"{obj['kind']}/{obj.get('metadata', {}).get('name', '?')}"


def check_schemas(versions, problems):
    for path, obj in load():
        if obj["apiVersion"] == MONITORING_GROUP:
            continue
        for version in versions:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as e:
                where = ".".join(str(p) for p in e.path)
                problems.append(f"{path}: {name(obj)} (Kubernetes {version}): {where}: {e.message}")
            except kubernetes_validate.SchemaNotFoundError as e:
                problems.append(f"{path}: {name(obj)}: {e.message}")


def check_crds(problems):
    seen = set()
    for path, obj in load():
        if obj["apiVersion"] != MONITORING_GROUP:
            continue
        schema = CRD_SCHEMAS.get(obj["kind"])
        if schema is None:
            problems.append(f"{path}: {name(obj)}: no schema for this kind in tests/kubernetes/check.py")
            continue
        seen.add(obj["kind"])
        for error in jsonschema.Draft202012Validator(schema).iter_errors(obj):
            where = ".".join(str(p) for p in error.path)
            problems.append(f"{path}: {name(obj)}: {where}: {error.message}")
    for kind in sorted(set(CRD_SCHEMAS) - seen):
        problems.append(f"no {kind} under deploy/kubernetes/")


def check_rules(out, problems):
    rules = [obj for _, obj in load() if obj["kind"] == "PrometheusRule"]
    if len(rules) != 1:
        problems.append(f"expected one PrometheusRule, found {len(rules)}")
        return
    with open(ALERTS, encoding="utf-8") as f:
        alerts = yaml.safe_load(f)
    groups = rules[0]["spec"]["groups"]
    if groups != alerts["groups"]:
        problems.append(
            "the PrometheusRule's groups differ from deploy/prometheus/alerts.yml; regenerate it: "
            "LOGDRAIN_UPDATE_MANIFESTS=1 cargo test --test kubernetes"
        )
    with open(out, "w", encoding="utf-8") as f:
        yaml.safe_dump({"groups": groups}, f, sort_keys=False)


def labels_match(selector, labels):
    return all(labels.get(k) == v for k, v in selector.items())


def containers(obj):
    spec = obj.get("spec", {}).get("template", {}).get("spec", {})
    return spec.get("containers", []) + spec.get("initContainers", [])


def check_wiring(problems):
    objects = [obj for _, obj in load()]
    by_kind = {}
    for obj in objects:
        by_kind.setdefault(obj["kind"], []).append(obj)
    namespaces = {o["metadata"]["name"] for o in by_kind.get("Namespace", [])}
    for obj in objects:
        ns = obj["metadata"].get("namespace")
        if obj["kind"] != "Namespace" and ns not in namespaces:
            problems.append(f"{name(obj)}: namespace {ns!r} is not one of the manifests' namespaces {sorted(namespaces)}")

    workloads = by_kind.get("StatefulSet", []) + by_kind.get("Deployment", [])
    for w in workloads:
        if w["spec"]["selector"]["matchLabels"] != {
            k: v for k, v in w["spec"]["template"]["metadata"]["labels"].items()
            if k in w["spec"]["selector"]["matchLabels"]
        }:
            problems.append(f"{name(w)}: its selector does not match its pod labels")

    def pods_of(selector, ns):
        return [w for w in workloads
                if w["metadata"]["namespace"] == ns
                and labels_match(selector, w["spec"]["template"]["metadata"]["labels"])]

    def container_ports(w):
        return {p["name"]: p["containerPort"] for c in containers(w) for p in c.get("ports", []) if "name" in p}

    services = by_kind.get("Service", [])
    for svc in services:
        ns = svc["metadata"]["namespace"]
        backends = pods_of(svc["spec"]["selector"], ns)
        if not backends:
            problems.append(f"{name(svc)}: its selector matches no pod template")
        for port in svc["spec"]["ports"]:
            for w in backends:
                target = port.get("targetPort", port["port"])
                ports = container_ports(w)
                if isinstance(target, str) and target not in ports:
                    problems.append(f"{name(svc)}: targetPort {target!r} is no named port of {name(w)} ({sorted(ports)})")

    for sts in by_kind.get("StatefulSet", []):
        governing = [s for s in services if s["metadata"]["name"] == sts["spec"]["serviceName"]]
        if not governing or governing[0]["spec"].get("clusterIP") != "None":
            problems.append(f"{name(sts)}: serviceName {sts['spec']['serviceName']!r} is not a headless Service")
        claims = {t["metadata"]["name"] for t in sts["spec"].get("volumeClaimTemplates", [])}
        volumes = {v["name"] for v in sts["spec"]["template"]["spec"].get("volumes", [])} | claims
        for c in containers(sts):
            for m in c.get("volumeMounts", []):
                if m["name"] not in volumes:
                    problems.append(f"{name(sts)}: mount {m['name']!r} names no volume or claim template")

    for w in workloads:
        ports = container_ports(w)
        for c in containers(w):
            for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                port = c.get(probe, {}).get("httpGet", {}).get("port")
                if isinstance(port, str) and port not in ports:
                    problems.append(f"{name(w)}: {probe} port {port!r} is no named container port")

    for pdb in by_kind.get("PodDisruptionBudget", []) + by_kind.get("NetworkPolicy", []):
        selector = (pdb["spec"].get("selector") or pdb["spec"].get("podSelector"))["matchLabels"]
        if not pods_of(selector, pdb["metadata"]["namespace"]):
            problems.append(f"{name(pdb)}: its selector matches no pod template")

    for sm in by_kind.get("ServiceMonitor", []):
        matched = [s for s in services
                   if s["metadata"]["namespace"] == sm["metadata"]["namespace"]
                   and labels_match(sm["spec"]["selector"]["matchLabels"], s["metadata"].get("labels", {}))]
        if len(matched) != 1:
            problems.append(f"{name(sm)}: its selector matches {len(matched)} Services; it must match one, "
                            "or every gateway is scraped more than once")
        for ep in sm["spec"]["endpoints"]:
            for s in matched:
                if ep.get("port") not in {p.get("name") for p in s["spec"]["ports"]}:
                    problems.append(f"{name(sm)}: endpoint port {ep.get('port')!r} is no port of {name(s)}")


def accepted_env(binary, *args):
    """The environment variables a binary's --help names ([env: NAME=...])."""
    out = subprocess.run([binary, *args, "--help"], capture_output=True, text=True, check=True).stdout
    return set(re.findall(r"\[env:\s+([A-Z0-9_]+)", out))


def check_env(gateway, shim, problems):
    accepted = {
        "logdrain-gateway": accepted_env(gateway, "serve"),
        "agent-shim": accepted_env(shim),
    }
    for path, obj in load():
        for c in containers(obj):
            command = (c.get("command") or [""])[0]
            binary = pathlib.PurePath(command).name
            for var in c.get("env", []):
                if not var["name"].startswith("LOGDRAIN_"):
                    continue
                if binary not in accepted:
                    problems.append(f"{path}: {name(obj)}: container {c['name']} sets {var['name']} "
                                    f"but runs {command!r}, neither logdrain-gateway nor agent-shim")
                elif var["name"] not in accepted[binary]:
                    problems.append(f"{path}: {name(obj)}: {var['name']} is not a variable {binary} accepts "
                                    f"(see `{binary} --help`)")


def seconds(duration):
    match = re.fullmatch(r"(\d+)(ms|s|m)", duration)
    if not match:
        sys.exit(f"cannot read the duration {duration!r}; write it as 10s, 1m or 500ms")
    value, unit = int(match[1]), match[2]
    return value / 1000 if unit == "ms" else value * (60 if unit == "m" else 1)


def check_grace(problems):
    for path, obj in load():
        for c in containers(obj):
            if c.get("command") != ["logdrain-gateway"]:
                continue
            env = {v["name"]: v.get("value") for v in c.get("env", [])}
            grace = seconds(env.get("LOGDRAIN_SHUTDOWN_GRACE") or "10s")
            # Streams end, deliveries finish, the queue is flushed: each within
            # the grace; then the HTTP server gets 1 s (server/src/serve.rs).
            needed = 3 * grace + 1
            given = obj["spec"]["template"]["spec"].get("terminationGracePeriodSeconds", 30)
            if given < needed + 5:
                problems.append(f"{path}: {name(obj)}: terminationGracePeriodSeconds {given} does not cover "
                                f"the shutdown at LOGDRAIN_SHUTDOWN_GRACE={grace:g}s ({needed:g} s) plus 5 s; "
                                f"set it to at least {int(needed) + 5}")


def check_images(version, problems):
    for path, obj in load():
        for c in containers(obj):
            image = c["image"]
            if image.startswith("logdrain/") and not image.endswith(f":{version}"):
                problems.append(f"{path}: {name(obj)}: image {image} is not tagged {version}, "
                                "the workspace's version")


def main(argv):
    problems = []
    match argv:
        case ["schemas", *versions] if versions:
            check_schemas(versions, problems)
        case ["crds"]:
            check_crds(problems)
        case ["rules", out]:
            check_rules(out, problems)
        case ["wiring"]:
            check_wiring(problems)
        case ["env", gateway, shim]:
            check_env(gateway, shim, problems)
        case ["grace"]:
            check_grace(problems)
        case ["images", version]:
            check_images(version, problems)
        case _:
            sys.exit(__doc__)
    for problem in problems:
        print(problem)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
