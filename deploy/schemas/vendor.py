#!/usr/bin/env python3
"""Vendors the OpenAPI v3 schema of custom resources from their CRD files, small enough to keep
in the repository: descriptions dropped, and every subtree that occurs more than once (the
embedded container and pod specs of KServe and Fluid) stored once under $defs and referenced.

    vendor.py SOURCE CRD.yaml [CRD.yaml ...]

writes <kind in lower case>.<group>.json here (the version served and stored), with SOURCE (for
example "kserve/kserve v0.20.0 config/crd/full") recorded in its $comment.
"""

import collections
import hashlib
import json
import os
import sys

import yaml

MIN_SHARED = 300  # bytes of canonical JSON below which a repeated subtree stays inline


def canon(node):
    return json.dumps(node, sort_keys=True, separators=(",", ":"))


def strip(node):
    if isinstance(node, dict):
        return {k: strip(v) for k, v in node.items() if k != "description"}
    if isinstance(node, list):
        return [strip(v) for v in node]
    return node


SCHEMA_MAPS = ("properties", "patternProperties")  # name -> schema
SCHEMA_LISTS = ("allOf", "anyOf", "oneOf")
SCHEMA_ONE = ("items", "additionalProperties", "not")


def children(node):
    """The subschemas of a schema node, as (key, name or index or None, subschema)."""
    for key, value in node.items():
        if key in SCHEMA_MAPS and isinstance(value, dict):
            for name, sub in value.items():
                yield key, name, sub
        elif key in SCHEMA_LISTS and isinstance(value, list):
            for i, sub in enumerate(value):
                yield key, i, sub
        elif key in SCHEMA_ONE and isinstance(value, dict):
            yield key, None, value


def dedupe(schema):
    counts = collections.Counter()

    def count(node):
        c = canon(node)
        if len(c) >= MIN_SHARED:
            counts[c] += 1
        for _, _, sub in children(node):
            count(sub)

    count(schema)
    defs = {}

    def rewrite(node, top=False):
        c = canon(node)
        if not top and counts.get(c, 0) > 1:
            name = "s" + hashlib.sha256(c.encode()).hexdigest()[:12]
            if name not in defs:
                defs[name] = None
                defs[name] = rewrite(node, top=True)
            return {"$ref": "#/$defs/" + name}
        out = dict(node)
        for key, at, sub in children(node):
            if at is None:
                out[key] = rewrite(sub)
            else:
                if out[key] is node[key]:
                    out[key] = dict(node[key]) if isinstance(node[key], dict) else list(node[key])
                out[key][at] = rewrite(sub)
        return out

    out = rewrite(schema, top=True)
    if defs:
        out["$defs"] = dict(sorted(defs.items()))
    return out


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    source, files = sys.argv[1], sys.argv[2:]
    here = os.path.dirname(os.path.abspath(__file__))
    for path in files:
        with open(path) as f:
            crd = yaml.safe_load(f)
        spec = crd["spec"]
        version = next(v for v in spec["versions"] if v.get("storage"))
        schema = dedupe(strip(version["schema"]["openAPIV3Schema"]))
        kind = spec["names"]["kind"]
        out = {
            "$comment": f"{kind} {spec['group']}/{version['name']} from {source} "
            f"({os.path.basename(path)}), openAPIV3Schema without descriptions",
            "x-kiln-crd": {
                "group": spec["group"],
                "version": version["name"],
                "kind": kind,
                "scope": spec["scope"],
            },
            **schema,
        }
        name = f"{kind.lower()}.{spec['group']}.json"
        with open(os.path.join(here, name), "w") as f:
            json.dump(out, f, separators=(",", ":"), sort_keys=False)
            f.write("\n")
        print(name, os.path.getsize(os.path.join(here, name)), "bytes")


if __name__ == "__main__":
    main()
