"""The part of Airtable's formula language that filterByFormula needs, pyairtable's output included.

Literals ('text' or "text" with backslash escapes, numbers), field references ({Name}, `\\}` escaped),
operators (= != < > <= >= & + - * /), and the functions AND, OR, NOT, IF, TRUE, FALSE, BLANK,
DATETIME_PARSE, RECORD_ID, LOWER, UPPER, LEN, FIND, CONCATENATE, REGEX_REPLACE, IS_BEFORE, IS_AFTER.
An empty cell reads as BLANK, which equals "" and 0, as in Airtable.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from daemon.testing.airtable.model import is_empty


class FormulaError(ValueError):
    """The formula cannot be parsed or names unknown fields (Airtable answers 422)."""

    def __init__(self, message: str, unknown_fields: list[str] | None = None):
        super().__init__(message)
        self.unknown_fields = unknown_fields or []


_TOKEN = re.compile(
    r"""
    (?P<ws>\s+)
  | (?P<field>\{(?:\\.|[^}\\])*\})
  | (?P<string>'(?:\\.|[^'\\])*'|"(?:\\.|[^"\\])*")
  | (?P<number>\d+(?:\.\d+)?)
  | (?P<op><=|>=|!=|=|<|>|&|\+|-|\*|/)
  | (?P<punct>[(),])
  | (?P<name>[A-Za-z_][A-Za-z_0-9]*)
""",
    re.VERBOSE,
)

_ESCAPE = re.compile(r"\\(.)")
_PRECEDENCE = {"=": 1, "!=": 1, "<": 1, ">": 1, "<=": 1, ">=": 1, "&": 2, "+": 2, "-": 2, "*": 3, "/": 3}


@dataclass(frozen=True)
class Node:
    kind: str  # "lit", "field", "call", "op"
    value: Any
    args: tuple[Node, ...] = ()


def _tokens(text: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    pos = 0
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None:
            raise FormulaError("Invalid formula. Please check your formula text.")
        pos = match.end()
        if match.lastgroup is not None and match.lastgroup != "ws":
            out.append((match.lastgroup, match.group()))
    return out


class _Parser:
    def __init__(self, text: str):
        self.tokens = _tokens(text)
        self.pos = 0

    def peek(self) -> tuple[str, str] | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def _next(self) -> str | None:
        """The next token's text, None at the end."""
        token = self.peek()
        return token[1] if token else None

    def take(self, value: str | None = None) -> tuple[str, str]:
        token = self.peek()
        if token is None or (value is not None and token[1] != value):
            raise FormulaError("Invalid formula. Please check your formula text.")
        self.pos += 1
        return token

    def parse(self) -> Node:
        node = self.expression(0)
        if self.peek() is not None:
            raise FormulaError("Invalid formula. Please check your formula text.")
        return node

    def expression(self, floor: int) -> Node:
        left = self.operand()
        while (token := self.peek()) and token[0] == "op" and _PRECEDENCE[token[1]] > floor:
            self.take()
            right = self.expression(_PRECEDENCE[token[1]])
            left = Node("op", token[1], (left, right))
        return left

    def operand(self) -> Node:
        kind, text = self.take()
        if kind == "string":
            return Node("lit", _ESCAPE.sub(r"\1", text[1:-1]))
        if kind == "number":
            return Node("lit", float(text) if "." in text else int(text))
        if kind == "field":
            return Node("field", _ESCAPE.sub(r"\1", text[1:-1]))
        if kind == "op" and text == "-":
            return Node("op", "-", (Node("lit", 0), self.operand()))
        if kind == "punct" and text == "(":
            node = self.expression(0)
            self.take(")")
            return node
        if kind == "name":
            name = text.upper()
            if name not in FUNCTIONS:
                raise FormulaError("Invalid formula. Please check your formula text.")
            self.take("(")
            args: list[Node] = []
            if self._next() not in (None, ")"):
                args.append(self.expression(0))
                while self._next() == ",":
                    self.take(",")
                    args.append(self.expression(0))
            self.take(")")
            return Node("call", name, tuple(args))
        raise FormulaError("Invalid formula. Please check your formula text.")


def parse(text: str) -> Node:
    return _Parser(text).parse()


def field_names(node: Node) -> set[str]:
    if node.kind == "field":
        return {node.value}
    return set().union(*(field_names(arg) for arg in node.args)) if node.args else set()


def _truthy(value: Any) -> bool:
    if is_empty(value):
        return False
    if isinstance(value, (int, float)):
        return value != 0 and value == value  # 0 and NaN are false
    return True


def _as_time(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value
    if isinstance(value, str) and value:
        try:
            moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
        return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    return None


def _compare(op: str, left: Any, right: Any) -> bool:
    if isinstance(left, datetime) or isinstance(right, datetime):
        left, right = _as_time(left), _as_time(right)
        if left is None or right is None:
            return False
    elif left is None or right is None:
        # BLANK equals "" and 0; ordering against a blank compares with 0 or ""
        other = right if left is None else left
        blank: Any = 0 if isinstance(other, (int, float)) else ""
        left, right = (blank, right) if left is None else (left, blank)
    elif isinstance(left, (int, float)) != isinstance(right, (int, float)):
        left, right = str(left), str(right)
    ops: dict[str, Callable[[Any, Any], bool]] = {
        "=": lambda a, b: a == b,
        "!=": lambda a, b: a != b,
        "<": lambda a, b: a < b,
        ">": lambda a, b: a > b,
        "<=": lambda a, b: a <= b,
        ">=": lambda a, b: a >= b,
    }
    return ops[op](left, right)


def _number(value: Any) -> float:
    if value in (None, ""):
        return 0
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (int, float)):
        return value
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def evaluate(node: Node, record: dict[str, Any], record_id: str = "") -> Any:
    """The formula's value for one record (`record` maps field names to cell values)."""
    if node.kind == "lit":
        return node.value
    if node.kind == "field":
        value = record.get(node.value)
        return None if is_empty(value) else value
    args = node.args
    if node.kind == "op":
        left, right = evaluate(args[0], record, record_id), evaluate(args[1], record, record_id)
        if node.value == "&":
            return ("" if left is None else str(left)) + ("" if right is None else str(right))
        if node.value in ("+", "-", "*", "/"):
            a, b = _number(left), _number(right)
            if node.value == "/":
                return a / b if b else float("nan")
            return {"+": a + b, "-": a - b, "*": a * b}[node.value]
        return _compare(node.value, left, right)
    name = node.value
    if name == "IF":
        if len(args) not in (2, 3):
            raise FormulaError("Invalid formula. Please check your formula text.")
        if _truthy(evaluate(args[0], record, record_id)):
            return evaluate(args[1], record, record_id)
        return evaluate(args[2], record, record_id) if len(args) == 3 else None
    values = [evaluate(arg, record, record_id) for arg in args]
    return FUNCTIONS[name](values, record_id)


def _arity(n: int, fn: Callable[..., Any]) -> Callable[[list[Any], str], Any]:
    def call(values: list[Any], record_id: str) -> Any:
        if len(values) != n:
            raise FormulaError("Invalid formula. Please check your formula text.")
        return fn(*values)

    return call


def _find(values: list[Any], record_id: str) -> int:
    if len(values) not in (2, 3):
        raise FormulaError("Invalid formula. Please check your formula text.")
    needle, haystack = str(values[0] or ""), str(values[1] or "")
    start = int(_number(values[2])) - 1 if len(values) == 3 else 0
    return haystack.find(needle, max(0, start)) + 1


FUNCTIONS: dict[str, Callable[[list[Any], str], Any]] = {
    "AND": lambda values, _: all(_truthy(v) for v in values),
    "OR": lambda values, _: any(_truthy(v) for v in values),
    "NOT": _arity(1, lambda v: not _truthy(v)),
    "IF": lambda values, _: None,  # evaluated lazily above
    "TRUE": _arity(0, lambda: True),
    "FALSE": _arity(0, lambda: False),
    "BLANK": _arity(0, lambda: None),
    "DATETIME_PARSE": lambda values, _: _as_time(values[0]) if values else None,
    "RECORD_ID": lambda values, record_id: record_id,
    "LOWER": _arity(1, lambda v: str(v or "").lower()),
    "UPPER": _arity(1, lambda v: str(v or "").upper()),
    "LEN": _arity(1, lambda v: len(str(v or ""))),
    "FIND": _find,
    "CONCATENATE": lambda values, _: "".join("" if v is None else str(v) for v in values),
    "REGEX_REPLACE": _arity(
        3,
        lambda text, pattern, replacement: re.sub(
            str(pattern or ""), str(replacement or "").replace("\\", "\\\\"), str("" if text is None else text)
        ),
    ),
    "IS_BEFORE": _arity(2, lambda a, b: _compare("<", _as_time(a), _as_time(b))),
    "IS_AFTER": _arity(2, lambda a, b: _compare(">", _as_time(a), _as_time(b))),
}


def keeps(value: Any) -> bool:
    """filterByFormula keeps a record unless the result is 0, false, "", NaN, [] or an error."""
    return _truthy(value)
