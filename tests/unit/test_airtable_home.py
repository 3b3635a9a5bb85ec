"""Airtable has one home: pyairtable (and its requests) only in daemon/sinks/airtable_client.py."""

import ast
import subprocess
import sys
from pathlib import Path

import daemon

PACKAGE = Path(daemon.__file__).parent
CLIENT = "sinks/airtable_client.py"


def modules() -> dict[str, ast.Module]:
    return {path.relative_to(PACKAGE).as_posix(): ast.parse(path.read_text(encoding="utf-8"), str(path))
            for path in sorted(PACKAGE.rglob("*.py"))}


def imported(tree: ast.Module) -> set[str]:
    """Every module a file imports, at its top or inside a function."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
    return names


def test_only_the_airtable_client_imports_pyairtable_or_requests():
    importers = {path for path, tree in modules().items()
                 if any(name.split(".")[0] in ("pyairtable", "requests") for name in imported(tree))}
    assert importers == {CLIENT}


def test_the_config_and_the_field_table_load_no_http_client():
    """Every command loads the config, which checks [airtable.fields] against the field table."""
    code = ("import sys, daemon.config, daemon.sinks.airtable_fields, daemon.sinks.airtable_schema; "
            "print(sorted(m for m in ('pyairtable', 'requests') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
