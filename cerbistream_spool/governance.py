"""cerbi_governance.json → immutable rules; ``check`` and ``apply_actions`` are pure.

File format (CONTRACT §3)::

    {"profiles": {"<name>": {"rules": [
        {"ruleId": str, "code": str, "fields": [dotted path, ...],
         "severity": str, "message": str (optional), "action": "Redact" | "Block" (optional)}
    ]}}}

Validation is strict where a mistake would silently weaken governance: every
profile in the file is validated (not only the one asked for), unknown keys in a
rule are errors (``"acton": "Redact"`` must not turn into flag-only), and so are
duplicate JSON keys, duplicate ruleIds in a profile and a field listed twice in a
rule. Top-level and profile objects may carry extra keys (``$schema``, notes).

Matching: each field is a dotted path into the extras; every segment matches a
``str`` key case-insensitively (``str.lower``); paths descend through mappings
only, never into lists. A field matched by several case variants of a key
(``Email`` and ``email``) yields one violation, and Redact replaces every variant.

Hot reload: :func:`load_governance` returns a new :class:`Governance`; swapping
rules is one attribute assignment, and a record sees either the old or the new set.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from typing import (
    Any,
    Dict,
    FrozenSet,
    List,
    Mapping,
    NamedTuple,
    Optional,
    Sequence,
    Tuple,
    Union,
)

from cerbistream_spool.errors import GovernanceConfigError

__all__ = [
    "ACTION_BLOCK",
    "ACTION_REDACT",
    "REDACTED",
    "FlatPlan",
    "Governance",
    "Rule",
    "Violation",
    "apply_actions",
    "load_governance",
    "parse_governance",
]

ACTION_REDACT = "Redact"
ACTION_BLOCK = "Block"
REDACTED = "***REDACTED***"

_ACTIONS = {"redact": ACTION_REDACT, "block": ACTION_BLOCK}
_RULE_KEYS = ("ruleId", "code", "fields", "severity", "message", "action")
_FILE = "<file>"
_ROOT = "<root>"
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*\Z")
_NO_VIOLATIONS: Tuple[Violation, ...] = ()

PathLike = Union[str, "os.PathLike[str]"]


@dataclass(frozen=True)
class Violation:
    """One matched field of one rule; precomputed at load time, so ``check`` allocates none."""

    rule_id: str
    code: str
    field: str
    severity: str
    message: str
    action: Optional[str]
    path: Tuple[str, ...]  # lower-cased segments of ``field``

    def as_dict(self) -> Dict[str, str]:
        """The ScoringEventDto form: ``RuleId, Code, Field, Severity, Message`` in that order."""
        return {
            "RuleId": self.rule_id,
            "Code": self.code,
            "Field": self.field,
            "Severity": self.severity,
            "Message": self.message,
        }


@dataclass(frozen=True)
class Rule:
    """One validated rule; ``severity`` and ``fields`` exactly as written in the file."""

    rule_id: str
    code: str
    fields: Tuple[str, ...]
    severity: str
    message: Optional[str] = None  # None: the default message per field
    action: Optional[str] = None  # ACTION_REDACT, ACTION_BLOCK or None (flag only)

    def violation_for(self, field_path: str) -> Violation:
        """The violation this rule reports for ``field_path``."""
        message = self.message
        if message is None:
            message = f"Field '{field_path}' violates rule {self.rule_id}"
        return Violation(
            rule_id=self.rule_id,
            code=self.code,
            field=field_path,
            severity=self.severity,
            message=message,
            action=self.action,
            path=tuple(field_path.lower().split(".")),
        )


class _Node:
    """One lower-cased path segment of the compiled rule trie."""

    __slots__ = ("children", "hits")

    def __init__(self) -> None:
        self.hits: Tuple[Tuple[int, Violation], ...] = ()  # (rule/field order, violation)
        self.children: Dict[str, _Node] = {}


@dataclass(frozen=True)
class Governance:
    """The immutable rule set of one profile. ``check`` is safe to call from any thread."""

    rules: Tuple[Rule, ...] = ()
    profile: str = "default"
    path: str = ""
    sha256: str = ""  # of the file bytes; lets a reloader skip unchanged versions
    _trie: Dict[str, _Node] = field(init=False, repr=False, compare=False, default_factory=dict)
    # flat_plan() memo: extras key tuple -> plan; bounded, filled lazily (dict ops are atomic)
    _plans: Dict[Tuple[str, ...], FlatPlan] = field(
        init=False, repr=False, compare=False, default_factory=dict
    )

    def __post_init__(self) -> None:
        trie: Dict[str, _Node] = {}
        position = 0
        for rule in self.rules:
            for field_path in rule.fields:
                violation = rule.violation_for(field_path)
                children = trie
                node = _Node()
                for segment in violation.path:
                    node = children.setdefault(segment, _Node())
                    children = node.children
                node.hits += ((position, violation),)
                position += 1
        object.__setattr__(self, "_trie", trie)

    def check(self, extras: Mapping[str, Any]) -> Tuple[Violation, ...]:
        """Violations for ``extras``, in rule order then field order; ``()`` when none match."""
        if not self._trie:
            return _NO_VIOLATIONS
        hits = _walk(extras, self._trie, None)
        if hits is None:
            return _NO_VIOLATIONS
        if len(hits) == 1:
            return tuple(hits.values())
        return tuple(hits[p] for p in sorted(hits))

    def flat_plan(self, keys: Tuple[str, ...]) -> FlatPlan:
        """``check`` + ``apply_actions`` for extras whose values are all scalars, memoised.

        With no mapping among the values only single-segment fields can match, so
        the outcome depends on the key set alone: the violations, the keys to redact
        and whether the event is blocked are computed once per key tuple.
        """
        plan = self._plans.get(keys)
        if plan is None:
            violations = self.check(dict.fromkeys(keys))
            redact = frozenset(
                key
                for key in keys
                for v in violations
                if v.action == ACTION_REDACT and v.path == (key.lower(),)
            )
            blocked = any(v.action == ACTION_BLOCK for v in violations)
            plan = FlatPlan(violations, redact, blocked, {})
            if len(self._plans) < _MAX_PLANS:
                self._plans[keys] = plan
        return plan


class FlatPlan(NamedTuple):
    """What governance does to a record with scalar extras of a given key set."""

    violations: Tuple[Violation, ...]
    redact: FrozenSet[str]
    blocked: bool
    # what consumers derive from the plan, kept with it (the event encoder stores the
    # packed Violations here); bounded and dropped with the plan, so with the Governance
    memo: Dict[str, Any]


_MAX_PLANS = 1024


def _walk(
    mapping: Mapping[Any, Any], trie: Dict[str, _Node], hits: Optional[Dict[int, Violation]]
) -> Optional[Dict[int, Violation]]:
    """Add the violations of ``trie`` found in ``mapping`` to ``hits`` (created on first hit)."""
    for key, value in mapping.items():
        if not isinstance(key, str):
            continue
        node = trie.get(key if key.islower() else key.lower())
        if node is None:
            continue
        if node.hits:
            if hits is None:
                hits = {}
            for position, violation in node.hits:
                hits[position] = violation
        if node.children and (value.__class__ is dict or isinstance(value, Mapping)):
            hits = _walk(value, node.children, hits)
    return hits


_LEAF: Any = object()  # marks "redact this whole value" in a redaction tree


def apply_actions(
    extras: Mapping[str, Any], violations: Sequence[Violation]
) -> Tuple[Mapping[str, Any], bool]:
    """Apply Redact/Block; returns ``(extras, blocked)``. Never mutates its input.

    Redact replaces the value at each violation's path (every case variant, nested
    dicts copied on write) by :data:`REDACTED`. When any violation is Block, the
    caller drops message and extras, so the extras come back unredacted with
    ``blocked=True``. Without anything to redact the input object itself comes back.
    """
    tree: Optional[Dict[str, Any]] = None
    for violation in violations:
        if violation.action == ACTION_BLOCK:
            return extras, True
        if violation.action == ACTION_REDACT:
            if tree is None:
                tree = {}
            node = tree
            *parents, last = violation.path
            for segment in parents:
                node = node.setdefault(segment, {})
                if node is _LEAF:
                    break  # an enclosing value is redacted whole already
            else:
                node[last] = _LEAF
    if tree is None:
        return extras, False
    redacted = _redact(extras, tree)
    return (extras if redacted is None else redacted), False


def _redact(mapping: Mapping[Any, Any], tree: Dict[str, Any]) -> Optional[Dict[Any, Any]]:
    """A copy of ``mapping`` with the ``tree`` paths redacted, or None when none is present."""
    out: Optional[Dict[Any, Any]] = None
    for key, value in mapping.items():
        if not isinstance(key, str):
            continue
        sub = tree.get(key if key.islower() else key.lower())
        if sub is None:
            continue
        if sub is _LEAF:
            new_value: Any = REDACTED
        else:
            if value.__class__ is not dict and not isinstance(value, Mapping):
                continue
            new_value = _redact(value, sub)
            if new_value is None:
                continue
        if out is None:
            out = dict(mapping)
        out[key] = new_value
    return out


# --------------------------------------------------------------------------- loading


def load_governance(path: PathLike, profile: str = "default") -> Governance:
    """Read, validate and compile ``profile`` of the governance file at ``path``.

    Raises :class:`GovernanceConfigError` naming the file, the JSON location and the problem.
    """
    fspath = os.fspath(path)
    try:
        with open(fspath, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise GovernanceConfigError(fspath, _FILE, "file not found") from None
    except IsADirectoryError:
        raise GovernanceConfigError(fspath, _FILE, "is a directory, not a JSON file") from None
    except OSError as exc:
        raise GovernanceConfigError(
            fspath, _FILE, f"cannot read file: {exc.strerror or exc}"
        ) from None
    return parse_governance(data, path=fspath, profile=profile)


def parse_governance(data: Union[bytes, str], *, path: str, profile: str) -> Governance:
    """Validate governance JSON text; ``path`` only names the source in errors."""
    if isinstance(data, bytes):
        digest = hashlib.sha256(data).hexdigest()
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise GovernanceConfigError(
                path, f"byte {exc.start}", "file is not valid UTF-8"
            ) from None
    else:
        digest = hashlib.sha256(data.encode("utf-8", "surrogatepass")).hexdigest()
        text = data
    if not text.strip():
        raise GovernanceConfigError(path, _FILE, "file is empty; expected a JSON object")
    try:
        doc = json.loads(text, object_pairs_hook=_JsonObject.from_pairs)
    except json.JSONDecodeError as exc:
        raise GovernanceConfigError(
            path, f"line {exc.lineno}, column {exc.colno}", f"invalid JSON: {exc.msg}"
        ) from None
    except RecursionError:
        raise GovernanceConfigError(path, _FILE, "invalid JSON: nested too deeply") from None
    profiles = _validate_document(doc, path)
    if profile not in profiles:
        known = ", ".join(repr(name) for name in profiles) or "none"
        raise GovernanceConfigError(
            path, "profiles", f"unknown profile {profile!r}; known profiles: {known}"
        )
    return Governance(rules=profiles[profile], profile=profile, path=path, sha256=digest)


class _JsonObject(Dict[str, Any]):
    """A JSON object that remembers keys the document repeated (json keeps the last)."""

    duplicates: Tuple[str, ...] = ()

    @classmethod
    def from_pairs(cls, pairs: List[Tuple[str, Any]]) -> _JsonObject:
        obj = cls(pairs)
        if len(obj) != len(pairs):
            seen: Dict[str, int] = {}
            for key, _ in pairs:
                seen[key] = seen.get(key, 0) + 1
            obj.duplicates = tuple(k for k, n in seen.items() if n > 1)
        return obj


def _loc(base: str, key: str) -> str:
    part = key if _IDENT.match(key) else f"[{json.dumps(key, ensure_ascii=False)}]"
    if not base:
        return part
    return f"{base}{part}" if part.startswith("[") else f"{base}.{part}"


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _object(value: Any, path: str, location: str, what: str) -> Dict[str, Any]:
    if not isinstance(value, dict):
        raise GovernanceConfigError(
            path, location, f"expected {what} (a JSON object), got {_type_name(value)}"
        )
    duplicates = getattr(value, "duplicates", ())
    if duplicates:
        raise GovernanceConfigError(
            path, location, f"duplicate key {duplicates[0]!r} (JSON would keep only the last)"
        )
    return value


def _validate_document(doc: Any, path: str) -> Dict[str, Tuple[Rule, ...]]:
    root = _object(doc, path, _ROOT, "the governance document")
    if "profiles" not in root:
        raise GovernanceConfigError(path, "profiles", "missing required key")
    profiles = _object(root["profiles"], path, "profiles", "a map of profile name to profile")
    if not profiles:
        raise GovernanceConfigError(path, "profiles", "no profiles defined")
    result: Dict[str, Tuple[Rule, ...]] = {}
    for name, body in profiles.items():
        loc = _loc("profiles", name)
        if not name.strip():
            raise GovernanceConfigError(path, loc, "profile name must be non-empty")
        profile = _object(body, path, loc, "a profile")
        rules_loc = _loc(loc, "rules")
        if "rules" not in profile:
            raise GovernanceConfigError(path, rules_loc, "missing required key")
        raw_rules = profile["rules"]
        if not isinstance(raw_rules, list):
            raise GovernanceConfigError(
                path, rules_loc, f"expected an array of rules, got {_type_name(raw_rules)}"
            )
        rules: List[Rule] = []
        first_at: Dict[str, int] = {}
        for i, raw in enumerate(raw_rules):
            rule = _validate_rule(raw, path, f"{rules_loc}[{i}]")
            if rule.rule_id in first_at:
                raise GovernanceConfigError(
                    path,
                    f"{rules_loc}[{i}].ruleId",
                    f"duplicate ruleId {rule.rule_id!r} in profile {name!r} "
                    f"(first at rules[{first_at[rule.rule_id]}])",
                )
            first_at[rule.rule_id] = i
            rules.append(rule)
        result[name] = tuple(rules)
    return result


def _nonempty_str(rule: Dict[str, Any], key: str, path: str, loc: str) -> str:
    if key not in rule:
        raise GovernanceConfigError(path, loc, f"missing required key {key!r}")
    value = rule[key]
    where = f"{loc}.{key}"
    if not isinstance(value, str):
        raise GovernanceConfigError(
            path, where, f"expected a non-empty string, got {_type_name(value)}"
        )
    if not value.strip():
        raise GovernanceConfigError(path, where, "must be a non-empty string")
    return value


def _validate_rule(raw: Any, path: str, loc: str) -> Rule:
    rule = _object(raw, path, loc, "a rule")
    for key in rule:
        if key not in _RULE_KEYS:
            hint = next((k for k in _RULE_KEYS if k.lower() == key.lower()), None)
            problem = f"unknown key {key!r}"
            problem += (
                f"; did you mean {hint!r}?" if hint else f"; allowed keys: {', '.join(_RULE_KEYS)}"
            )
            raise GovernanceConfigError(path, _loc(loc, key), problem)
    rule_id = _nonempty_str(rule, "ruleId", path, loc)
    code = _nonempty_str(rule, "code", path, loc)
    severity = _nonempty_str(rule, "severity", path, loc)
    fields = _validate_fields(rule, path, loc)

    message: Optional[str] = None
    if rule.get("message") is not None:
        message = _nonempty_str(rule, "message", path, loc)

    action: Optional[str] = None
    raw_action = rule.get("action")
    if raw_action is not None:
        if not isinstance(raw_action, str):
            raise GovernanceConfigError(
                path,
                f"{loc}.action",
                f'expected "Redact" or "Block", got {_type_name(raw_action)}',
            )
        action = _ACTIONS.get(raw_action.strip().lower())
        if action is None:
            raise GovernanceConfigError(
                path,
                f"{loc}.action",
                f'unknown action {raw_action!r}; expected "Redact" or "Block" '
                "(case-insensitive), or no action for flag only",
            )
    return Rule(
        rule_id=rule_id,
        code=code,
        fields=fields,
        severity=severity,
        message=message,
        action=action,
    )


def _validate_fields(rule: Dict[str, Any], path: str, loc: str) -> Tuple[str, ...]:
    if "fields" not in rule:
        raise GovernanceConfigError(path, loc, "missing required key 'fields'")
    raw = rule["fields"]
    if not isinstance(raw, list) or not raw:
        got = "an empty array" if isinstance(raw, list) else _type_name(raw)
        raise GovernanceConfigError(
            path, f"{loc}.fields", f"expected a non-empty array of field paths, got {got}"
        )
    seen: Dict[Tuple[str, ...], int] = {}
    for j, item in enumerate(raw):
        where = f"{loc}.fields[{j}]"
        if not isinstance(item, str):
            raise GovernanceConfigError(
                path, where, f"expected a non-empty string, got {_type_name(item)}"
            )
        segments = item.split(".")
        if any(not s or s != s.strip() for s in segments):
            raise GovernanceConfigError(
                path,
                where,
                f"invalid field path {item!r}: dot-separated segments must be non-empty "
                "and must not start or end with whitespace",
            )
        key = tuple(s.lower() for s in segments)
        if key in seen:
            raise GovernanceConfigError(
                path,
                where,
                f"duplicate field {item!r} (same as fields[{seen[key]}], case-insensitively)",
            )
        seen[key] = j
    return tuple(raw)
