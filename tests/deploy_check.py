"""Checks deploy/ with real tools (run by tests/deploy.rs in .cache/deploy-venv, scripts/deploy-venv.sh):
the Helm chart rendered and linted by Helm's own Go SDK (helm-python-sdk), every rendered manifest
validated against the Kubernetes 1.37 OpenAPI schemas (kubernetes-validate, strict: unknown fields
fail), the KServe InferenceService and ServingRuntime against the KServe SDK's generated CRD models
(their Kubernetes-typed parts against the same Kubernetes schemas), the Dockerfile by hadolint, and
the ports, model names, probes and pins agreeing across the chart, the KServe files, the Dockerfile,
the README and the repository `fluxbuild package` wrote (--repo).

Usage: python tests/deploy_check.py --repo PACKAGED_REPO    Prints one line per check; exit 1 on failure.
"""
import argparse
import ast
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import helm_python as helm
import jsonschema
import kubernetes_validate
import referencing
import yaml

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "deploy/helm/fluxbuild"
KUBE_VERSION = "1.37.0"
GPU = {"gpu": {"product": "NVIDIA-H100-80GB-HBM3"}}
FAILURES = []


def check(condition, what):
    print(("ok   " if condition else "FAIL ") + what)
    if not condition:
        FAILURES.append(what)


def render(values):
    with helm.Chart.load(str(CHART)) as chart:
        rendered = chart.render(values, name="flux", namespace="serving")
    docs = []
    for text in rendered.values():
        docs.extend(d for d in yaml.safe_load_all(text) if d)
    return {d["kind"]: d for d in docs}


def render_error(values):
    try:
        render(values)
    except helm.HelmError as e:
        return str(e)
    return None


def kube_validate(doc, what):
    try:
        kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
        check(True, f"{what}: valid Kubernetes {KUBE_VERSION} {doc['kind']} (strict)")
    except kubernetes_validate.ValidationError as e:
        check(False, f"{what}: {doc['kind']} invalid: {e.message} at {'/'.join(map(str, e.path))}")


def container(deployment):
    return deployment["spec"]["template"]["spec"]["containers"][0]


def arg(args, flag):
    return next((a.split("=", 1)[1] for a in args if a.startswith(flag + "=")), None)


def probe_models(probe):
    return arg(probe["exec"]["command"], "--models").split(",")


# ---- Helm ---------------------------------------------------------------------------------------
def is_liveness_probe(probe, port):
    """`deploy/ready.py --live` (the server and every Python-backend stub) on the HTTP port."""
    command = probe.get("exec", {}).get("command", [])
    return (command[:2] == ["python3", "/opt/fluxbuild/ready.py"] and "--live" in command
            and arg(command, "--url") == f"http://127.0.0.1:{port}")


def check_chart(repo_models):
    lint = helm.lint(str(CHART), GPU, strict=True, kube_version=KUBE_VERSION)
    errors = [m for m in lint["messages"] if m["severity"] >= 3] + lint["errors"]
    check(not errors, f"helm lint --strict: no errors ({errors or 'clean'})")

    err = render_error({})
    check(err is not None and "gpu.product" in err, f"without gpu.product the chart refuses to render: {err!r}")
    err = render_error({**GPU, "modelRepository": {"source": "nfs"}})
    check(err is not None and "pvc or s3" in err, f"an unknown modelRepository.source is refused: {err!r}")
    err = render_error({**GPU, "modelRepository": {"source": "s3"}})
    check(err is not None and "modelRepository.s3.uri" in err, f"s3 without a URI is refused: {err!r}")

    pvc = render(GPU)
    check(sorted(pvc) == ["Deployment", "HorizontalPodAutoscaler", "Service"], f"renders {sorted(pvc)}")
    for doc in pvc.values():
        kube_validate(doc, "pvc values")
    deployment, service, hpa = pvc["Deployment"], pvc["Service"], pvc["HorizontalPodAutoscaler"]
    pod = deployment["spec"]["template"]["spec"]
    c = container(deployment)
    for kind in ("requests", "limits"):
        check(str(c["resources"][kind].get("nvidia.com/gpu")) == "1", f"one GPU per pod ({kind})")
    check(pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
          f"node selector is the plans' GPU: {pod['nodeSelector']}")
    check(arg(c["args"], "--strict-readiness") == "true", "tritonserver runs with --strict-readiness=true")
    chart_values = yaml.safe_load((CHART / "values.yaml").read_text())
    check(arg(c["args"], "--http-max-input-size") == str(chart_values["maxRequestBytes"]),
          "tritonserver refuses request bodies beyond the chart's maxRequestBytes")
    check(arg(c["args"], "--model-repository") == "/models", "pvc: repository mounted at /models")
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    claim = next(v for v in pod["volumes"] if v["name"] == "model-repository")
    check(mounts["model-repository"]["readOnly"] and claim["persistentVolumeClaim"]["claimName"] == "fluxbuild-repository",
          "pvc: the claim is mounted read-only")
    check(any(v.get("emptyDir", {}).get("medium") == "Memory" and mounts.get(v["name"], {}).get("mountPath") == "/dev/shm"
              for v in pod["volumes"]), "shared memory for the Python backend at /dev/shm")

    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    check(ports == {"http": 8000, "grpc": 8001, "metrics": 8002}, f"container ports {ports}")
    check(arg(c["args"], "--http-port") == "8000" and arg(c["args"], "--grpc-port") == "8001"
          and arg(c["args"], "--metrics-port") == "8002", "tritonserver listens on the declared ports")
    check({p["name"]: p["port"] for p in service["spec"]["ports"]} == ports and
          all(p["targetPort"] in ports for p in service["spec"]["ports"]), "Service exposes http/grpc/metrics")
    check(service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"], "Service selects the pods")

    readiness = c["readinessProbe"]
    check(readiness["exec"]["command"][:2] == ["python3", "/opt/fluxbuild/ready.py"]
          and arg(readiness["exec"]["command"], "--url") == "http://127.0.0.1:8000",
          "readiness runs deploy/ready.py against the HTTP port")
    check(sorted(probe_models(readiness)) == sorted(repo_models),
          f"readiness probes exactly the packaged repository's models: {probe_models(readiness)} vs {repo_models}")
    check(is_liveness_probe(c["livenessProbe"], 8000), "liveness runs deploy/ready.py --live against the HTTP port")
    check(c["startupProbe"]["httpGet"]["path"] == "/v2/health/ready", "startup waits for /v2/health/ready")
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    check(annotations.get("prometheus.io/port") == "8002", "pods annotated for Prometheus on the metrics port")

    check(hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"], "HPA scales the Deployment")
    metric = hpa["spec"]["metrics"][0]
    check(metric["type"] == "Pods" and metric["pods"]["target"]["type"] == "AverageValue", "HPA on a Pods metric")
    check("replicas" not in deployment["spec"], "with the HPA on, the Deployment leaves replicas to it")
    check_adapter_rule(metric["pods"]["metric"]["name"])

    s3 = render({**GPU, "modelRepository": {"source": "s3", "s3": {"uri": "s3://bucket/flux/repository",
                                                                   "credentialsSecret": "s3-credentials"}},
                 "autoscaling": {"enabled": False}, "replicas": 2})
    check(sorted(s3) == ["Deployment", "Service"], f"autoscaling off: no HPA ({sorted(s3)})")
    for doc in s3.values():
        kube_validate(doc, "s3 values")
    c = container(s3["Deployment"])
    check(arg(c["args"], "--model-repository") == "s3://bucket/flux/repository", "s3: Triton reads the URI itself")
    check(not any(v["name"] == "model-repository" for v in s3["Deployment"]["spec"]["template"]["spec"]["volumes"]),
          "s3: no claim mounted")
    check(c["envFrom"] == [{"secretRef": {"name": "s3-credentials"}}], "s3: credentials from the Secret")
    check(s3["Deployment"]["spec"]["replicas"] == 2, "autoscaling off: replicas from values")


def check_adapter_rule(metric_name):
    values = yaml.safe_load((ROOT / "deploy/helm/prometheus-adapter-values.yaml").read_text())
    rules = [r for r in values["rules"]["custom"] if r["name"]["as"] == metric_name]
    check(len(rules) == 1, f"prometheus-adapter serves {metric_name}")
    if rules:
        query = rules[0]["metricsQuery"]
        check('nv_inference_queue_duration_us{model="flux"' in query and
              'nv_inference_compute_infer_duration_us{model="flux"' in query and
              query.index("nv_inference_queue") < query.index("/") < query.index("nv_inference_compute"),
              "the adapter rule is flux's queue time over its compute time")


# ---- KServe -------------------------------------------------------------------------------------
def kserve_models_dir():
    """The KServe SDK's generated models (one per CRD type, from the CRDs' OpenAPI), read as source:
    the package is installed without its dependencies and never imported."""
    import importlib.util
    return Path(importlib.util.find_spec("kserve").submodule_search_locations[0]) / "models"


def kserve_classes():
    classes = {}
    for path in kserve_models_dir().glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in tree.body:
            if isinstance(node, ast.ClassDef):
                info = {"required": set()}
                for item in node.body:
                    if isinstance(item, ast.Assign) and isinstance(item.targets[0], ast.Name) \
                            and item.targets[0].id in ("openapi_types", "attribute_map"):
                        info[item.targets[0].id] = ast.literal_eval(item.value)
                required = re.findall(r"Invalid value for `(\w+)`, must not be `None`", path.read_text())
                info["required"] = set(required)
                if "openapi_types" in info:
                    classes[node.name] = info
    return classes


def k8s_definitions():
    """kubernetes-validate's definitions for Kubernetes {KUBE_VERSION}, strict (no unknown fields)."""
    import importlib.util
    base = Path(importlib.util.find_spec("kubernetes_validate").submodule_search_locations[0])
    path = base / "kubernetes-json-schema" / f"v{KUBE_VERSION}-local-strict" / "_definitions.json"
    return json.loads(path.read_text())


K8S = k8s_definitions()
K8S_REGISTRY = referencing.Resource.from_contents(K8S) @ referencing.Registry()


def k8s_definition(type_name):
    """The SDK's V1Container is io.k8s.api.core.v1.Container (V1ObjectMeta: apimachinery's meta/v1)."""
    m = re.fullmatch(r"V(\d+)(\w+)", type_name)
    if m is None:
        return None
    for group in ("io.k8s.api.core", "io.k8s.apimachinery.pkg.apis.meta"):
        name = f"{group}.v{m.group(1)}.{m.group(2)}"
        if name in K8S["$defs"]:
            return name
    return None


def validate_kserve(value, type_name, classes, path, problems):
    if value is None:
        return
    if type_name.startswith("list["):
        if not isinstance(value, list):
            problems.append(f"{path}: expected a list")
            return
        for i, item in enumerate(value):
            validate_kserve(item, type_name[5:-1], classes, f"{path}[{i}]", problems)
        return
    if type_name.startswith("dict("):
        if not isinstance(value, dict):
            problems.append(f"{path}: expected a map")
        return
    scalar = {"str": str, "int": int, "bool": bool, "float": (int, float), "object": object}
    if type_name in scalar:
        if not isinstance(value, scalar[type_name]) or (type_name == "int" and isinstance(value, bool)):
            problems.append(f"{path}: expected {type_name}, got {value!r}")
        return
    if type_name == "ResourceQuantity":
        if not isinstance(value, (str, int)):
            problems.append(f"{path}: expected a quantity")
        return
    if type_name in classes:
        info = classes[type_name]
        if not isinstance(value, dict):
            problems.append(f"{path}: expected an object ({type_name})")
            return
        json_to_attr = {v: k for k, v in info["attribute_map"].items()}
        for key, item in value.items():
            if key not in json_to_attr:
                problems.append(f"{path}.{key}: unknown field of {type_name}")
                continue
            validate_kserve(item, info["openapi_types"][json_to_attr[key]], classes, f"{path}.{key}", problems)
        for attr in info["required"]:
            if info["attribute_map"][attr] not in value:
                problems.append(f"{path}: {type_name} requires {info['attribute_map'][attr]}")
        return
    definition = k8s_definition(type_name)
    if definition is None:
        problems.append(f"{path}: no schema for {type_name}")
        return
    schema = {"$ref": f"{K8S['$id']}#/$defs/{definition}"}
    for error in jsonschema.Draft202012Validator(schema, registry=K8S_REGISTRY).iter_errors(value):
        problems.append(f"{path}/{'/'.join(map(str, error.path))}: {error.message} ({definition})")


def check_kserve(repo_models):
    classes = kserve_classes()
    check("V1beta1InferenceService" in classes and "V1alpha1ServingRuntime" in classes,
          f"KServe SDK models read ({len(classes)} types)")
    docs = {}
    for name, type_name, api in [("inferenceservice.yaml", "V1beta1InferenceService", "serving.kserve.io/v1beta1"),
                                 ("servingruntime.yaml", "V1alpha1ServingRuntime", "serving.kserve.io/v1alpha1")]:
        doc = yaml.safe_load((ROOT / "deploy/kserve" / name).read_text())
        docs[doc["kind"]] = doc
        check(doc["apiVersion"] == api, f"{name}: apiVersion {doc['apiVersion']}")
        problems = []
        validate_kserve(doc, type_name, classes, doc["kind"], problems)
        check(not problems, f"{name}: valid {type_name} (KServe CRD fields, Kubernetes types) {problems or ''}")
    isvc, runtime = docs["InferenceService"], docs["ServingRuntime"]
    # The validator itself: a misspelt field, a wrong type and a bad container field are each caught.
    broken = yaml.safe_load(yaml.safe_dump(isvc))
    broken["spec"]["predictor"]["minReplica"] = 1
    broken["spec"]["predictor"]["maxReplicas"] = "four"
    del broken["spec"]["predictor"]["model"]["modelFormat"]
    broken["spec"]["predictor"]["model"]["resources"]["limit"] = {}
    problems = []
    validate_kserve(broken, "V1beta1InferenceService", classes, "InferenceService", problems)
    check(len(problems) == 4, f"the KServe validator catches broken fields: {problems}")
    model = isvc["spec"]["predictor"]["model"]
    check(model["runtime"] == runtime["metadata"]["name"], "the InferenceService uses the fluxbuild runtime")
    check(model["modelFormat"]["name"] in [f["name"] for f in runtime["spec"]["supportedModelFormats"]],
          "the runtime supports the model format")
    c = runtime["spec"]["containers"][0]
    check(arg(c["args"], "--strict-readiness") == "true", "KServe runtime: --strict-readiness=true")
    check(int(arg(c["args"], "--http-max-input-size") or 0) > 0, "KServe runtime: --http-max-input-size set")
    check(arg(c["args"], "--model-repository") == "/mnt/models", "KServe runtime reads KServe's /mnt/models")
    check(arg(c["args"], "--http-port") == str(c["ports"][0]["containerPort"]), "KServe runtime listens on its port")
    check(sorted(probe_models(c["readinessProbe"])) == sorted(repo_models), "KServe readiness probes all five models")
    check(is_liveness_probe(c["livenessProbe"], 8080), "KServe liveness runs deploy/ready.py --live against the HTTP port")
    check(str(model["resources"]["limits"]["nvidia.com/gpu"]) == "1", "KServe: one GPU per pod")
    image = c["image"]
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    check(image == f"{values['image']['repository']}:{values['image']['tag']}", f"same image as the chart ({image})")


# ---- Dockerfile, README -------------------------------------------------------------------------
def dockerfile_instructions(text):
    joined = re.sub(r"\\\n", " ", text)
    out = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def check_dockerfile(repo_models):
    path = ROOT / "deploy/Dockerfile"
    lint = subprocess.run([str(Path(sys.executable).parent / "hadolint"), "--no-color", "--failure-threshold", "warning", "--ignore", "DL3008", str(path)],
                          capture_output=True, text=True)
    check(lint.returncode == 0, f"hadolint deploy/Dockerfile {lint.stdout.strip() or 'clean'}")
    instructions = dockerfile_instructions(path.read_text())
    args = dict(a[1].split()[0].split("=", 1) for a in instructions if a[0] == "ARG" and "=" in a[1])
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    froms = [rest for word, rest in instructions if word == "FROM"]
    check(froms == ["nvcr.io/nvidia/tritonserver:${TRITON_RELEASE}-py3"], f"FROM the Triton image of TRITON_RELEASE ({froms})")
    engines_ci = (ROOT / ".github/workflows/engines.yml").read_text()
    trt_release = re.search(r"nvcr.io/nvidia/tensorrt:(\d+\.\d+)-py3", engines_ci).group(1)
    check(args.get("TRITON_RELEASE") == trt_release == chart["appVersion"] == values["image"]["tag"],
          f"Triton release {args.get('TRITON_RELEASE')} = the TensorRT container that builds the plans ({trt_release})"
          f" = chart appVersion ({chart['appVersion']}) = image tag ({values['image']['tag']})")
    venv = (ROOT / "scripts/triton-venv.sh").read_text()
    tokenizers = re.search(r"tokenizers==([\d.]+)", venv).group(1)
    check(args.get("TOKENIZERS_VERSION") == tokenizers, f"tokenizers pinned as the tests run it ({tokenizers})")
    check(re.fullmatch(r"\d+\.\d+\.\d+", args.get("TORCH_VERSION", "")) is not None, "torch pinned to a release")
    runs = " ".join(rest for word, rest in instructions if word == "RUN")
    for package in ("torch", "tokenizers", "numpy"):
        check(f'"{package}==${{{package.upper()}_VERSION}}"' in runs, f"{package} installed at its pinned version")
    cmd = json.loads(next(rest for word, rest in instructions if word == "CMD"))
    entry = json.loads(next(rest for word, rest in instructions if word == "ENTRYPOINT"))
    check(entry == ["tritonserver"] and "pip" not in " ".join(cmd), "starts tritonserver, installs nothing at start")
    check(arg(cmd, "--strict-readiness") == "true", "the image's server runs with strict readiness")
    check(arg(cmd, "--model-repository") == "/models", "the repository is mounted at /models")
    exposed = sorted(int(p) for word, rest in instructions if word == "EXPOSE" for p in rest.split())
    check(exposed == sorted(values["ports"].values()) and
          [arg(cmd, f"--{k}-port") for k in ("http", "grpc", "metrics")] == [str(values["ports"][k]) for k in ("http", "grpc", "metrics")],
          f"EXPOSE {exposed} = the server's ports = the chart's")
    health = next((rest for word, rest in instructions if word == "HEALTHCHECK"), "")
    check("/opt/fluxbuild/ready.py" in health, "HEALTHCHECK runs the readiness check")
    check(any(word == "COPY" and rest == "deploy/ready.py /opt/fluxbuild/ready.py" for word, rest in instructions),
          "the image carries the probe script where the chart runs it")
    ready = (ROOT / "deploy/ready.py").read_text()
    default = ast.literal_eval(re.search(r"^MODELS = (\[.*\])$", ready, re.M).group(1))
    check(sorted(default) == sorted(repo_models), f"ready.py's default models are the repository's ({default})")


def check_readme():
    readme = (ROOT / "README.md").read_text()
    check("--strict-readiness=false" not in readme, "README: no --strict-readiness=false")
    servers = [line for line in readme.splitlines() if "--model-repository" in line]
    check(servers and all("--strict-readiness=true" in line for line in servers),
          f"README: every server command line is strict ({len(servers)})")
    for needle in ("docker build -f deploy/Dockerfile", "helm install", "deploy/kserve/"):
        check(needle in readme, f"README documents `{needle}`")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--repo", required=True, type=Path, help="a repository `fluxbuild package` wrote")
    args = parser.parse_args()
    manifest = json.loads((args.repo / "manifest.json").read_text())
    repo_models = manifest["models"]
    print(f"repository models: {repo_models}; Helm SDK {helm.helm_sdk_version()}")
    check_chart(repo_models)
    check_kserve(repo_models)
    check_dockerfile(repo_models)
    check_readme()
    print(f"{len(FAILURES)} failed")
    return 1 if FAILURES else 0


if __name__ == "__main__":
    sys.exit(main())
