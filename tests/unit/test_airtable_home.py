"""Airtable has one home: pyairtable (and its requests) only in daemon/sinks/airtable_client.py, the field
names only in daemon/sinks/airtable_fields.py."""

import ast
import re
import subprocess
import sys
from pathlib import Path

import daemon
from daemon.sinks.airtable_fields import TABLES

PACKAGE = Path(daemon.__file__).parent
CLIENT = "sinks/airtable_client.py"
FIELDS = "sinks/airtable_fields.py"


def modules() -> dict[str, ast.Module]:
    return {
        path.relative_to(PACKAGE).as_posix(): ast.parse(path.read_text(encoding="utf-8"), str(path))
        for path in sorted(PACKAGE.rglob("*.py"))
    }


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
    importers = {
        path
        for path, tree in modules().items()
        if any(name.split(".")[0] in ("pyairtable", "requests") for name in imported(tree))
    }
    assert importers == {CLIENT}


def test_the_config_and_the_field_table_load_no_http_client():
    """Every command loads the config, which checks [airtable.fields] against the field table."""
    code = (
        "import sys, daemon.config, daemon.sinks.airtable_fields, daemon.sinks.airtable_schema; "
        "print(sorted(m for m in ('pyairtable', 'requests') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_a_module_that_speaks_airtable_names_its_fields_through_the_field_table():
    """By the PostgreSQL column a field copies (FIELD_OF, BaseNames.field_for) or the table's constants."""
    names = {spec.name for specs in TABLES.values() for spec in specs}
    speaking = {
        path: tree
        for path, tree in modules().items()
        if path != FIELDS and any(name.startswith("daemon.sinks.airtable") for name in imported(tree))
    }
    assert {"recover.py", "forget.py", "reads.py", "sinks/airtable.py", CLIENT} <= set(speaking)
    spelled = sorted(
        (path, node.lineno, node.value)
        for path, tree in speaking.items()
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and node.value in names
    )
    assert spelled == []


def test_every_field_copies_a_column_of_its_postgresql_table():
    from daemon.sinks.postgres import MIGRATIONS

    for kind, specs in TABLES.items():
        body = re.search(rf"CREATE TABLE {{s}}\.{kind} \((.*?)\n    \);", MIGRATIONS[0], re.S).group(1)
        columns = {line.split()[0] for line in body.strip().splitlines()}
        assert {spec.column for spec in specs} <= columns, kind
        assert len({spec.column for spec in specs}) == len(specs), kind
