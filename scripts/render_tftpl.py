#!/usr/bin/env python3
"""Renders a Terraform template (.tftpl) the way templatefile() does, for the subset
the skyfuse templates use: ${name.attr} interpolation, %{ for [k,] v in name.attr }
... %{ endfor } loops over maps (in lexical key order, as Terraform iterates them) and
lists, and the ~ strip markers. Anything else (functions, operators, %{ if }) is
refused rather than guessed, so a template that outgrows the subset fails the check.

    render_tftpl.py TEMPLATE VARIABLES.json            prints the rendering
    render_tftpl.py TEMPLATE VARIABLES.json --check F  exit 1 unless it equals file F
    render_tftpl.py TEMPLATE VARIABLES.json --write F  writes it to F
"""

import json
import re
import sys

TOKEN = re.compile(r"(?P<kind>[$%])\{(?P<left>~?)\s*(?P<body>.*?)\s*(?P<right>~?)\}", re.S)
NAME_PATH = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*(\.[A-Za-z_][A-Za-z0-9_-]*)*$")
FOR_HEAD = re.compile(r"^for\s+(?:(\w+)\s*,\s*)?(\w+)\s+in\s+(\S+)$")


class TemplateError(Exception):
    pass


def tokenize(text):
    """Text pieces and directives, with the strip markers applied to the text."""
    pieces = []
    position = 0
    strip_next = False
    for match in TOKEN.finditer(text):
        start = match.start()
        # $${ and %%{ are literal ${ and %{ in Terraform templates.
        if start > 0 and text[start - 1] == match.group("kind"):
            continue
        literal = text[position:start]
        if strip_next:
            literal = literal.lstrip()
        if match.group("left"):
            literal = literal.rstrip()
        pieces.append(("text", literal.replace("$${", "${").replace("%%{", "%{")))
        pieces.append((match.group("kind"), match.group("body")))
        strip_next = bool(match.group("right"))
        position = match.end()
    literal = text[position:]
    if strip_next:
        literal = literal.lstrip()
    pieces.append(("text", literal.replace("$${", "${").replace("%%{", "%{")))
    return pieces


def parse(pieces, index=0, closing=None):
    """A list of nodes up to the matching endfor."""
    nodes = []
    while index < len(pieces):
        kind, body = pieces[index]
        index += 1
        if kind == "text":
            nodes.append(("text", body))
        elif kind == "$":
            nodes.append(("interpolate", body))
        elif body == "endfor":
            if closing != "endfor":
                raise TemplateError("endfor without for")
            return nodes, index
        else:
            head = FOR_HEAD.match(body)
            if not head:
                raise TemplateError(f"unsupported directive %{{ {body} }}")
            inner, index = parse(pieces, index, "endfor")
            nodes.append(("for", head.group(1), head.group(2), head.group(3), inner))
    if closing:
        raise TemplateError(f"missing {closing}")
    return nodes, index


def lookup(path, scope):
    if not NAME_PATH.match(path):
        raise TemplateError(f"unsupported expression ${{{path}}}: only name.attr paths")
    first, *rest = path.split(".")
    if first not in scope:
        raise TemplateError(f"unknown variable {first!r}")
    value = scope[first]
    for attribute in rest:
        if not isinstance(value, dict) or attribute not in value:
            raise TemplateError(f"{path}: no attribute {attribute!r}")
        value = value[attribute]
    return value


def as_text(value, path):
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, str):
        return value
    raise TemplateError(f"${{{path}}} is a collection, not a string")


def render(nodes, scope):
    out = []
    for node in nodes:
        if node[0] == "text":
            out.append(node[1])
        elif node[0] == "interpolate":
            out.append(as_text(lookup(node[1], scope), node[1]))
        else:
            _, key_name, value_name, collection_path, inner = node
            collection = lookup(collection_path, scope)
            if isinstance(collection, dict):
                items = sorted(collection.items())
            elif isinstance(collection, list):
                items = list(enumerate(collection))
            else:
                raise TemplateError(f"for over {collection_path}, which is not a map or list")
            for key, value in items:
                inner_scope = dict(scope)
                inner_scope[value_name] = value
                if key_name:
                    inner_scope[key_name] = key
                out.append(render(inner, inner_scope))
    return "".join(out)


def main(argv):
    if len(argv) not in (3, 5) or (len(argv) == 5 and argv[3] not in ("--check", "--write")):
        print(__doc__, file=sys.stderr)
        return 2
    with open(argv[1], encoding="utf-8") as template_file:
        template = template_file.read()
    with open(argv[2], encoding="utf-8") as variables_file:
        variables = json.load(variables_file)
    nodes, _ = parse(tokenize(template))
    rendered = render(nodes, variables)
    if len(argv) == 3:
        sys.stdout.write(rendered)
        return 0
    if argv[3] == "--write":
        with open(argv[4], "w", encoding="utf-8") as output:
            output.write(rendered)
        return 0
    with open(argv[4], encoding="utf-8") as expected_file:
        expected = expected_file.read()
    if rendered != expected:
        import difflib

        sys.stdout.writelines(
            difflib.unified_diff(
                expected.splitlines(True), rendered.splitlines(True), argv[4], "rendered"
            )
        )
        return 1
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv))
    except TemplateError as error:
        print(f"render_tftpl: {error}", file=sys.stderr)
        sys.exit(1)
