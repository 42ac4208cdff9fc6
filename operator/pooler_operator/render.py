"""`maitred render CR.yaml`: every manifest the operator would apply, offline, from the same renderer.

Secrets in the input files are used for the auth_file as the operator would read them; a referenced Secret
missing from the input is reported on stderr and its part of the auth_file is left out.
"""
from __future__ import annotations

import base64
import sys
from typing import Any, TextIO

import yaml

from . import API_VERSION, KIND
from .api import InvalidSpec, parse_pooler
from .crd import crd_yaml
from .objects import render, to_yaml


def _secret_data(doc: dict[str, Any]) -> dict[str, str]:
    data = {k: base64.b64decode(v).decode("utf-8", "replace") for k, v in (doc.get("data") or {}).items()}
    data.update({k: str(v) for k, v in (doc.get("stringData") or {}).items()})
    return data


def render_documents(docs: list[dict[str, Any]], *, namespace: str | None = None, image: str | None = None,
                     warn: TextIO = sys.stderr) -> tuple[list[dict[str, Any]], list[str]]:
    """(manifests, problems) for every PostgresPooler among `docs`; problems make the command fail."""
    secrets: dict[tuple[str, str], dict[str, str]] = {}
    for doc in docs:
        if doc.get("kind") == "Secret" and doc.get("apiVersion") == "v1":
            meta = doc.get("metadata", {})
            secrets[(meta.get("namespace") or namespace or "default", meta["name"])] = _secret_data(doc)
    manifests, problems = [], []
    poolers = [d for d in docs if d.get("kind") == KIND and d.get("apiVersion") == API_VERSION]
    if not poolers:
        problems.append(f"no {KIND} ({API_VERSION}) in the input")
    for doc in poolers:
        meta = dict(doc.get("metadata") or {})
        meta["namespace"] = meta.get("namespace") or namespace or "default"
        label = f"{meta['namespace']}/{meta.get('name')}"
        try:
            pooler = parse_pooler({**doc, "metadata": meta})
        except InvalidSpec as exc:
            problems += [f"{label}: {p}" for p in exc.problems]
            continue
        ns_secrets = {name: data for (ns, name), data in secrets.items() if ns == pooler.namespace}
        rendered = render(pooler, ns_secrets, image=image, strict=False)
        for warning in rendered.warnings + rendered.autotune_problems:
            print(f"warning: {label}: {warning}", file=warn)
        manifests += rendered.manifests
    return manifests, problems


def run(paths: list[str], *, crd: bool = False, namespace: str | None = None, image: str | None = None,
        out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    if crd:
        out.write(crd_yaml())
        return 0
    if not paths:
        print("maitred render: give a PostgresPooler file (or - for stdin), or --crd", file=err)
        return 2
    docs: list[dict[str, Any]] = []
    for path in paths:
        try:
            stream = sys.stdin if path == "-" else open(path, encoding="utf-8")
            with stream:
                docs += [d for d in yaml.safe_load_all(stream) if isinstance(d, dict)]
        except (OSError, yaml.YAMLError) as exc:
            print(f"maitred render: {path}: {exc}", file=err)
            return 1
    manifests, problems = render_documents(docs, namespace=namespace, image=image, warn=err)
    if problems:
        for problem in problems:
            print(f"maitred render: {problem}", file=err)
        return 1
    out.write(to_yaml(manifests))
    return 0
