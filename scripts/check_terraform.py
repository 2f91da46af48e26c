#!/usr/bin/env python3
"""What can be checked of deploy/terraform without a terraform binary (python-hcl2):
every .tf parses; each module has variables.tf, main.tf and outputs.tf; each model
module outputs `endpoint` with the keys modules/ai-gateway reads; every module block
of the examples passes only variables the module declares and every one it requires;
and the ai-gateway template uses only the variables its templatefile() call passes."""

import pathlib
import re
import sys

import hcl2

ROOT = pathlib.Path(__file__).resolve().parent.parent / "deploy" / "terraform"
MODEL_MODULES = ["aws-bedrock", "azure-openai", "oci-genai", "gcp-vertex"]
ENDPOINT_KEYS = {"kind", "region", "settings", "models"}
META_ARGUMENTS = {"source", "version", "count", "for_each", "providers", "depends_on"}


def load(path):
    with open(path, encoding="utf-8") as file:
        return hcl2.load(file)


def blocks(document, kind):
    """name -> body for `variable "name" {}`-style blocks."""
    found = {}
    for entry in document.get(kind, []):
        for name, body in entry.items():
            found[name.strip('"')] = body
    return found


def main():
    problems = []
    parsed = {}
    for path in sorted(ROOT.rglob("*.tf")):
        try:
            parsed[path] = load(path)
        except Exception as error:  # the parser raises several kinds
            problems.append(f"{path.relative_to(ROOT)}: does not parse: {error}")
    modules = {}
    for module_dir in sorted((ROOT / "modules").iterdir()):
        for name in ("variables.tf", "main.tf", "outputs.tf"):
            if not (module_dir / name).is_file():
                problems.append(f"modules/{module_dir.name}: no {name}")
        variables = {}
        outputs = {}
        for path in module_dir.glob("*.tf"):
            variables.update(blocks(parsed.get(path, {}), "variable"))
            outputs.update(blocks(parsed.get(path, {}), "output"))
        modules[module_dir.name] = (variables, outputs)
    for name in MODEL_MODULES + ["ai-gateway"]:
        if name not in modules:
            problems.append(f"modules/{name} is missing")
    for name in MODEL_MODULES:
        outputs = modules.get(name, ({}, {}))[1]
        endpoint = outputs.get("endpoint")
        if endpoint is None:
            problems.append(f"modules/{name}: no output \"endpoint\"")
            continue
        value = endpoint.get("value", {})
        keys = {key.strip('"') for key in value} if isinstance(value, dict) else set()
        if keys != ENDPOINT_KEYS:
            problems.append(f"modules/{name}: endpoint has keys {sorted(keys)}, the gateway reads {sorted(ENDPOINT_KEYS)}")
    for path, document in parsed.items():
        if "examples" not in path.parts:
            continue
        for call_name, body in blocks(document, "module").items():
            source = str(body.get("source", "")).strip('"')
            module_name = pathlib.PurePosixPath(source).name
            if module_name not in modules:
                problems.append(f"{path.relative_to(ROOT)}: module {call_name}: unknown source {source}")
                continue
            declared, _ = modules[module_name]
            given = {key for key in body if not key.startswith("__")} - META_ARGUMENTS
            for argument in sorted(given - set(declared)):
                problems.append(f"{path.relative_to(ROOT)}: module {call_name}: {module_name} has no variable {argument!r}")
            required = {name for name, variable in declared.items() if "default" not in variable}
            for argument in sorted(required - given):
                problems.append(f"{path.relative_to(ROOT)}: module {call_name}: required variable {argument!r} is not given")
    gateway_main = (ROOT / "modules" / "ai-gateway" / "main.tf").read_text(encoding="utf-8")
    call = gateway_main.split("templatefile(", 1)[-1].split("})", 1)[0]
    passed = set(re.findall(r"^\s*(\w+)\s*=\s*var\.\w+\s*$", call, re.M))
    template = (ROOT / "modules" / "ai-gateway" / "skyfuse.toml.tftpl").read_text(encoding="utf-8")
    bound = set(re.findall(r"%\{~?\s*for\s+(?:(\w+)\s*,\s*)?(\w+)\s+in", template))
    loop_names = {name for pair in bound for name in pair if name}
    used = {path.split(".")[0] for path in re.findall(r"[$%]\{~?\s*(?:for\s+(?:\w+\s*,\s*)?\w+\s+in\s+)?([\w.]+)", template)}
    used -= loop_names | {"endfor", "for"}
    for name in sorted(used - passed):
        problems.append(f"ai-gateway template uses {name!r}, which templatefile() does not pass")
    for name in sorted(passed - used):
        problems.append(f"ai-gateway passes {name!r} to templatefile(), which the template does not use")
    for problem in problems:
        print(f"  FAIL {problem}")
    print(f"  {len(parsed)} .tf files parsed, {len(modules)} modules, {len(problems)} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
