"""cerbi_governance.json → immutable rules; ``check`` and ``apply_actions`` are pure.

File format (docs/CONTRACT.md §3, docs/GOVERNANCE.md)::

    {"profiles": {"<name>": {"rules": [
        {"ruleId": str, "code": str, "fields": [dotted path, ...] (optional with patterns),
         "patterns": [regular expression, ...] (optional), "severity": str,
         "message": str (optional), "action": "Redact" | "Block" (optional)}
    ]}}}

Validation is strict where a mistake would silently weaken governance: every
profile in the file is validated (not only the one asked for), unknown keys in a
rule are errors (``"acton": "Redact"`` must not turn into flag-only), and so are
duplicate JSON keys, duplicate ruleIds in a profile, a field or pattern listed twice
in a rule, a pattern that does not compile or matches the empty string. Top-level and
profile objects may carry extra keys (``$schema``, notes).

Matching (docs/GOVERNANCE.md): each field is a dotted path into the record's fields
(cerbistream_spool/fields.py); every segment matches a key case-insensitively
(``str.lower``; a bytes key by its UTF-8 text; ``k~2``, the event builder's name for a
second ``k``, as ``k``). A literal dotted key is the path it spells (``"user.email"``
is user → email), and the dicts inside a list are searched as the value itself. A rule
naming a path matches every key at or below it. One violation per rule field, however
many places it matched; Redact replaces every one of them. Patterns search the message
and every string value (:meth:`Governance.scan_text`) with the ``regex`` package, within
:data:`SCAN_BUDGET_S` per record; a scan that runs out of time fails closed.

Hot reload: :func:`load_governance` returns a new :class:`Governance`; swapping
rules is one attribute assignment, and a record sees either the old or the new set.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from dataclasses import dataclass, field
from typing import (
    Any,
    Callable,
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

import regex

from cerbistream_spool.errors import GovernanceConfigError

__all__ = [
    "ACTION_BLOCK",
    "ACTION_REDACT",
    "MAX_PATTERN_CHARS",
    "MAX_SCAN_CHARS",
    "REDACTED",
    "SCAN_BUDGET_S",
    "FlatPlan",
    "Governance",
    "Rule",
    "TextScan",
    "Violation",
    "apply_actions",
    "load_governance",
    "parse_governance",
]

ACTION_REDACT = "Redact"
ACTION_BLOCK = "Block"
REDACTED = "***REDACTED***"

_ACTIONS = {"redact": ACTION_REDACT, "block": ACTION_BLOCK}
_RULE_KEYS = ("ruleId", "code", "fields", "patterns", "severity", "message", "action")
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
    path: Tuple[str, ...]  # lower-cased segments of ``field``; () for a pattern match

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
    """One validated rule; ``severity``, ``fields`` and ``patterns`` exactly as written."""

    rule_id: str
    code: str
    fields: Tuple[str, ...]
    severity: str
    message: Optional[str] = None  # None: the default message per field
    action: Optional[str] = None  # ACTION_REDACT, ACTION_BLOCK or None (flag only)
    patterns: Tuple[str, ...] = ()  # regular expressions over the message and string values

    def violation_for(self, field_path: str) -> Violation:
        """The violation this rule reports for ``field_path``."""
        default = f"Field '{field_path}' violates rule {self.rule_id}"
        message = default if self.message is None else self.message
        return self._violation(field_path, message, tuple(field_path.lower().split(".")))

    def pattern_violation(self, field_path: str) -> Violation:
        """The violation this rule reports when one of its patterns matches at ``field_path``."""
        default = f"Field '{field_path}' matches a pattern of rule {self.rule_id}"
        return self._violation(field_path, default if self.message is None else self.message, ())

    def timeout_violation(self, field_path: str) -> Violation:
        """The violation this rule reports when its patterns ran out of time at ``field_path``."""
        message = (
            f"Field '{field_path}' not scanned by the patterns of rule {self.rule_id}: "
            f"the scan ran out of time ({SCAN_BUDGET_S * 1000:g} ms per record); "
            f"the text was replaced by {REDACTED}"
        )
        return self._violation(field_path, message, ())

    def _violation(self, field_path: str, message: str, path: Tuple[str, ...]) -> Violation:
        return Violation(
            rule_id=self.rule_id,
            code=self.code,
            field=field_path,
            severity=self.severity,
            message=message,
            action=self.action,
            path=path,
        )


class _Node:
    """One lower-cased path segment of the compiled rule trie."""

    __slots__ = ("children", "hits")

    def __init__(self) -> None:
        self.hits: Tuple[Tuple[int, Violation], ...] = ()  # (rule/field order, violation)
        self.children: Dict[str, _Node] = {}


class _TextRule(NamedTuple):
    """A rule with patterns, compiled once at load."""

    rule: Rule
    patterns: Tuple[regex.Pattern[str], ...]


class TextScan(NamedTuple):
    """What :meth:`Governance.scan_text` found and made of the texts."""

    violations: Tuple[Violation, ...]  # rule order, then the order the texts were given
    message: Optional[str]  # the message, matches replaced by Redact rules
    values: Mapping[str, Any]  # the values (the same object when nothing was replaced)
    blocked: bool
    timed_out: bool = False  # a text ran out of time and was replaced by REDACTED


@dataclass(frozen=True)
class Governance:
    """The immutable rule set of one profile. ``check`` is safe to call from any thread."""

    rules: Tuple[Rule, ...] = ()
    profile: str = "default"
    path: str = ""
    sha256: str = ""  # of the file bytes; lets a reloader skip unchanged versions
    _trie: Dict[str, _Node] = field(init=False, repr=False, compare=False, default_factory=dict)
    # the rules with patterns; empty for a file without any, so the handler skips the scan
    patterns: Tuple[_TextRule, ...] = field(init=False, repr=False, compare=False, default=())
    # flat_plan() memo: extras key tuple -> plan; bounded, filled lazily (dict ops are atomic)
    _plans: Dict[Tuple[str, ...], FlatPlan] = field(
        init=False, repr=False, compare=False, default_factory=dict
    )
    _flat_patterns: Tuple[Tuple[int, bool, regex.Pattern[str]], ...] = field(
        init=False, repr=False, compare=False, default=()
    )
    # pattern violations by (rule index, field path, timed out); bounded like _plans
    _text_hits: Dict[Tuple[int, str, bool], Violation] = field(
        init=False, repr=False, compare=False, default_factory=dict
    )
    # called with (rule ids, field path) when a scan runs out of time (the handler reports)
    _on_timeout: List[Callable[[Tuple[str, ...], str], None]] = field(
        init=False, repr=False, compare=False, default_factory=list
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
        object.__setattr__(
            self,
            "patterns",
            tuple(
                _TextRule(rule, tuple(_compile(p) for p in rule.patterns))
                for rule in self.rules
                if rule.patterns
            ),
        )
        object.__setattr__(
            self,
            "_flat_patterns",
            tuple(
                (index, text_rule.rule.action == ACTION_REDACT, pattern)
                for index, text_rule in enumerate(self.patterns)
                for pattern in text_rule.patterns
            ),
        )

    def on_timeout(self, callback: Callable[[Tuple[str, ...], str], None]) -> None:
        """Call ``callback(rule ids, field path)`` whenever a pattern scan runs out of time.

        Called from the logging thread, inside ``emit``: it must be quick and not log."""
        self._on_timeout.append(callback)

    def check(self, extras: Mapping[str, Any]) -> Tuple[Violation, ...]:
        """Violations for ``extras``, in rule order then field order; ``()`` when none match."""
        if not self._trie:
            return _NO_VIOLATIONS
        hits = _walk(extras, self._trie, None, 0)
        if hits is None:
            return _NO_VIOLATIONS
        if len(hits) == 1:
            return tuple(hits.values())
        return tuple(hits[p] for p in sorted(hits))

    def flat_plan(self, keys: Tuple[str, ...]) -> FlatPlan:
        """``check`` + ``apply_actions`` for extras whose values are all scalars, memoised.

        With no mapping or list among the values only the keys themselves can match, so
        the outcome depends on the key set alone: the violations, the keys to redact
        and whether the event is blocked are computed once per key tuple.
        """
        plan = self._plans.get(keys)
        if plan is None:
            probe = dict.fromkeys(keys)
            violations = self.check(probe)
            redacted, blocked = apply_actions(probe, violations)
            redact = frozenset(key for key in keys if redacted[key] is not None)
            plan = FlatPlan(violations, redact, blocked)
            if len(self._plans) < _MAX_PLANS:
                self._plans[keys] = plan
        return plan

    def scan_text(self, message: Optional[str], values: Mapping[str, Any]) -> TextScan:
        """Pattern rules over ``message`` and every string in ``values`` (nested dicts, lists).

        A match is a violation of its rule at ``message`` or at the dotted key path of the
        value (list positions add no segment); with Redact the matched text is replaced by
        :data:`REDACTED`. Each text is scanned up to :data:`MAX_SCAN_CHARS`; a longer one is
        cut there and ends with a marker (the rest is neither scanned nor kept). Strings
        that are exactly :data:`REDACTED` are skipped. Never mutates its input.

        All texts of one call share :data:`SCAN_BUDGET_S`. A text whose scan runs out of
        it fails closed: it becomes :data:`REDACTED` and every pattern rule not yet found
        in it reports a timeout violation (a Block rule blocks); so does each text after.
        """
        state = _Scan(self._flat_patterns, len(self.patterns))
        if message is not None:
            message = state.text(message, "", "message")
        out = state.mapping(values, "", 0)
        if state.found is None:
            return TextScan(_NO_VIOLATIONS, message, values if out is None else out, False)
        violations = tuple(self._text_violation(*key) for key in sorted(state.found))
        if state.timed_out is not None:
            late = dict.fromkeys(self.patterns[i].rule.rule_id for i, _, t in state.found if t)
            self._report_timeout(tuple(late), state.timed_out)
        return TextScan(
            violations,
            message,
            values if out is None else out,
            any(v.action == ACTION_BLOCK for v in violations),
            state.timed_out is not None,
        )

    def _text_violation(self, index: int, path: str, timed_out: bool) -> Violation:
        key = (index, path, timed_out)
        violation = self._text_hits.get(key)
        if violation is None:
            rule = self.patterns[index].rule
            violation = rule.timeout_violation(path) if timed_out else rule.pattern_violation(path)
            if len(self._text_hits) < _MAX_PLANS:
                self._text_hits[key] = violation
        return violation

    def _report_timeout(self, rule_ids: Tuple[str, ...], path: str) -> None:
        for callback in tuple(self._on_timeout):
            try:
                callback(rule_ids, path)
            except Exception:  # noqa: BLE001, S112 - a report must never fail the record
                continue


class FlatPlan(NamedTuple):
    """What governance does to a record with scalar extras of a given key set."""

    violations: Tuple[Violation, ...]
    redact: FrozenSet[str]
    blocked: bool


_MAX_PLANS = 1024
MAX_SCAN_CHARS = 65536  # per text: patterns see at most this many characters of it
# per record: the time all pattern searches of one scan_text call may take together.
# wall-clock time from the scan's start; each search gets what is left as its timeout.
SCAN_BUDGET_S = 0.050
_MAX_WALK_DEPTH = 64  # nesting levels check/redact descend (lists of lists included)


def _key_text(key: Any) -> Optional[str]:
    """The lower-cased text a key is matched by: ``str`` as is, bytes decoded as UTF-8."""
    if key.__class__ is str:
        text: str = key  # Any narrowed by hand: mypy 3.9 does not narrow on __class__
        return text if text.islower() else text.lower()
    if isinstance(key, str):
        return str.__str__(key).lower()
    if isinstance(key, (bytes, bytearray)):
        return bytes(key).decode("utf-8", "backslashreplace").lower()
    return None


def _reach(trie: Dict[str, _Node], key: Any) -> Tuple[Tuple[_Node, ...], bool]:
    """The trie nodes ``key`` reaches, and whether it reached its end: a segment itself
    is its node; ``a.b`` is the path a → b (as far as the trie goes), ``k~2`` (the name the
    event builder gives a key whose text was taken) is ``k``; a key that is no text
    reaches none."""
    text = _key_text(key)
    if text is None:
        return (), False
    node = trie.get(text)
    if node is not None:
        return (node,), True
    return _chain(trie, text)


def _chain(trie: Dict[str, _Node], text: str) -> Tuple[Tuple[_Node, ...], bool]:
    """The trie nodes a key that is not a segment itself reaches, and whether it reached
    its end: ``a.b`` is the path a → b (as far as the trie goes), ``k~2`` (the name the
    event builder gives a key whose text was taken) is ``k``."""
    base, tilde, number = text.rpartition("~")
    if tilde and base and number.isdigit() and number[0] != "0":
        node = trie.get(base)
        if node is not None:
            return (node,), True
        text = base
    if "." not in text:
        return (), False
    nodes: List[_Node] = []
    children = trie
    for segment in text.split("."):
        node = children.get(segment)
        if node is None:
            return tuple(nodes), False
        nodes.append(node)
        children = node.children
    return tuple(nodes), True


def _is_list(value: Any) -> bool:
    return value.__class__ is list or isinstance(value, (list, tuple))


def _walk(
    mapping: Mapping[Any, Any],
    trie: Dict[str, _Node],
    hits: Optional[Dict[int, Violation]],
    depth: int,
) -> Optional[Dict[int, Violation]]:
    """Add the violations of ``trie`` found in ``mapping`` to ``hits`` (created on first hit)."""
    for key, value in mapping.items():  # the hot path: _reach inlined (a call per key)
        text = _key_text(key)
        if text is None:
            continue
        node = trie.get(text)
        if node is None:
            nodes, complete = _chain(trie, text)
            for passed in nodes:
                if passed.hits:
                    if hits is None:
                        hits = {}
                    for position, violation in passed.hits:
                        hits[position] = violation
            if not (complete and nodes):
                continue
            node = nodes[-1]
        elif node.hits:
            if hits is None:
                hits = {}
            for position, violation in node.hits:
                hits[position] = violation
        if node.children and depth < _MAX_WALK_DEPTH:
            if value.__class__ is dict or isinstance(value, Mapping):
                hits = _walk(value, node.children, hits, depth + 1)
            elif _is_list(value):
                hits = _walk_list(value, node.children, hits, depth + 1)
    return hits


def _walk_list(
    items: Any, trie: Dict[str, _Node], hits: Optional[Dict[int, Violation]], depth: int
) -> Optional[Dict[int, Violation]]:
    """The dicts in a list (and in lists inside it) are searched as the value itself."""
    for item in items:
        if item.__class__ is dict or isinstance(item, Mapping):
            hits = _walk(item, trie, hits, depth)
        elif _is_list(item) and depth < _MAX_WALK_DEPTH:
            hits = _walk_list(item, trie, hits, depth + 1)
    return hits


def apply_actions(
    extras: Mapping[str, Any], violations: Sequence[Violation]
) -> Tuple[Mapping[str, Any], bool]:
    """Apply Redact/Block of field violations; returns ``(extras, blocked)``. Never mutates.

    Redact replaces every value the violation's path matches (every case variant, a
    literal dotted key, the dicts inside lists; containers copied on write) by
    :data:`REDACTED`. When any violation is Block, the caller drops message and extras,
    so the extras come back unredacted with ``blocked=True``. Without anything to
    redact the input object itself comes back. Pattern violations (``path == ()``) are
    applied by :meth:`Governance.scan_text`, not here.
    """
    trie: Optional[Dict[str, _Node]] = None
    for violation in violations:
        if violation.action == ACTION_BLOCK:
            return extras, True
        if violation.action == ACTION_REDACT and violation.path:
            if trie is None:
                trie = {}
            children = trie
            node = _Node()
            for segment in violation.path:
                node = children.setdefault(segment, _Node())
                children = node.children
            node.hits = ((0, violation),)
    if trie is None:
        return extras, False
    redacted = _redact(extras, trie, 0)
    return (extras if redacted is None else redacted), False


def _redact(
    mapping: Mapping[Any, Any], trie: Dict[str, _Node], depth: int
) -> Optional[Dict[Any, Any]]:
    """A copy of ``mapping`` with the ``trie`` paths redacted, or None when none is present."""
    out: Optional[Dict[Any, Any]] = None
    for key, value in mapping.items():
        nodes, complete = _reach(trie, key)
        hit = next((n for n in nodes if n.hits), None)
        if hit is not None:  # a rule names this key or a path it lies under
            node = hit
        elif complete and nodes:
            node = nodes[-1]
        else:
            continue
        new_value: Any
        if node.hits:
            new_value = REDACTED
        elif depth >= _MAX_WALK_DEPTH:
            continue
        elif value.__class__ is dict or isinstance(value, Mapping):
            new_value = _redact(value, node.children, depth + 1)
        elif _is_list(value):
            new_value = _redact_list(value, node.children, depth + 1)
        else:
            continue
        if new_value is None:
            continue
        if out is None:
            out = dict(mapping)
        out[key] = new_value
    return out


def _redact_list(items: Any, trie: Dict[str, _Node], depth: int) -> Optional[List[Any]]:
    """A copy of the list ``items`` with the dicts in it redacted, or None when unchanged."""
    out: Optional[List[Any]] = None
    for i, item in enumerate(items):
        if item.__class__ is dict or isinstance(item, Mapping):
            new_item: Any = _redact(item, trie, depth)
        elif _is_list(item) and depth < _MAX_WALK_DEPTH:
            new_item = _redact_list(item, trie, depth + 1)
        else:
            continue
        if new_item is None:
            continue
        if out is None:
            out = list(items)
        out[i] = new_item
    return out


class _Scan:
    """One :meth:`Governance.scan_text` call: what it found, as (rule index, path, timed out).

    Every search gets what is left of :data:`SCAN_BUDGET_S` as its ``timeout``; ``regex``
    raises :class:`TimeoutError` past it, and the text fails closed (:meth:`text`).
    """

    __slots__ = ("deadline", "found", "patterns", "rules", "timed_out")

    def __init__(
        self, patterns: Tuple[Tuple[int, bool, regex.Pattern[str]], ...], rules: int
    ) -> None:
        self.patterns = patterns  # (rule index, redact?, compiled), in rule order
        self.rules = rules
        self.deadline = time.monotonic() + SCAN_BUDGET_S
        self.found: Optional[Dict[Tuple[int, str, bool], None]] = None
        self.timed_out: Optional[str] = None  # the path of the first text that ran out

    def _left(self) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0.0:
            raise TimeoutError("scan budget spent")
        return left

    def text(self, text: str, parent: str, name: str) -> str:
        if text == REDACTED:
            return text
        if len(text) > MAX_SCAN_CHARS:
            text = text[:MAX_SCAN_CHARS] + _cut_marker(len(text) - MAX_SCAN_CHARS)
        hit: Optional[Dict[int, None]] = None
        try:
            for index, redact, pattern in self.patterns:
                if hit is not None and index in hit and not redact:
                    continue
                if pattern.search(text, timeout=self._left()) is None:
                    continue
                if hit is None:
                    hit = {}
                hit[index] = None
                if redact:
                    text = pattern.sub(REDACTED, text, timeout=self._left())
        except TimeoutError:  # fail closed: nothing of a text not fully scanned is kept
            path = f"{parent}.{name}" if parent else name
            found = self.found if self.found is not None else {}
            self.found = found
            for index in range(self.rules):
                found[(index, path, hit is None or index not in hit)] = None
            if self.timed_out is None:
                self.timed_out = path
            return REDACTED
        if hit is not None:
            path = f"{parent}.{name}" if parent else name
            found = self.found if self.found is not None else {}
            self.found = found
            for index in hit:
                found[(index, path, False)] = None
        return text

    def value(self, value: Any, parent: str, name: str, depth: int) -> Any:
        """``value`` with its strings scanned; the same object when nothing changed."""
        cls = value.__class__
        if cls is str:
            new = self.text(value, parent, name)
            return value if new == value else new
        if cls is int or cls is float or cls is bool or value is None:
            return value
        if isinstance(value, str):
            new = self.text(str.__str__(value), parent, name)
            return value if new == value else new
        if depth >= _MAX_WALK_DEPTH:
            return value
        if cls is dict or isinstance(value, Mapping):
            out = self.mapping(value, f"{parent}.{name}" if parent else name, depth + 1)
            return value if out is None else out
        if _is_list(value):
            changed: Optional[List[Any]] = None
            for i, item in enumerate(value):
                new_item = self.value(item, parent, name, depth + 1)
                if new_item is not item:
                    if changed is None:
                        changed = list(value)
                    changed[i] = new_item
            return value if changed is None else changed
        return value

    def mapping(
        self, mapping: Mapping[Any, Any], path: str, depth: int
    ) -> Optional[Dict[Any, Any]]:
        out: Optional[Dict[Any, Any]] = None
        for key, value in mapping.items():
            name = key if key.__class__ is str else _key_text(key) or str(key)
            new = self.value(value, path, name, depth)
            if new is not value:
                if out is None:
                    out = dict(mapping)
                out[key] = new
        return out


def _cut_marker(dropped: int) -> str:
    return f"...[cerbistream_spool: {dropped} more characters not scanned, removed]"


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
    patterns = _validate_patterns(rule, path, loc)
    fields = _validate_fields(rule, path, loc, required=not patterns)

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
        patterns=patterns,
    )


def _validate_fields(
    rule: Dict[str, Any], path: str, loc: str, *, required: bool
) -> Tuple[str, ...]:
    if "fields" not in rule:
        if not required:
            return ()
        raise GovernanceConfigError(
            path, loc, "missing required key 'fields' (a rule needs 'fields', 'patterns' or both)"
        )
    raw = rule["fields"]
    if not required and isinstance(raw, list) and not raw:
        return ()
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


MAX_PATTERN_CHARS = 1000  # longer regular expressions are refused at load


def _validate_patterns(rule: Dict[str, Any], path: str, loc: str) -> Tuple[str, ...]:
    """The rule's ``patterns``: a non-empty array of regular expressions (``regex`` syntax,
    version 0: that of ``re``) that compile and do not match the empty string."""
    if "patterns" not in rule or rule["patterns"] is None:
        return ()
    raw = rule["patterns"]
    if not isinstance(raw, list) or not raw:
        got = "an empty array" if isinstance(raw, list) else _type_name(raw)
        raise GovernanceConfigError(
            path,
            f"{loc}.patterns",
            f"expected a non-empty array of regular expressions, got {got}",
        )
    seen: Dict[str, int] = {}
    for j, item in enumerate(raw):
        where = f"{loc}.patterns[{j}]"
        if not isinstance(item, str) or not item:
            got = "an empty string" if isinstance(item, str) else _type_name(item)
            raise GovernanceConfigError(
                path, where, f"expected a regular expression (a non-empty string), got {got}"
            )
        if len(item) > MAX_PATTERN_CHARS:
            raise GovernanceConfigError(
                path, where, f"regular expression longer than {MAX_PATTERN_CHARS} characters"
            )
        if item in seen:
            raise GovernanceConfigError(
                path, where, f"duplicate pattern {item!r} (same as patterns[{seen[item]}])"
            )
        seen[item] = j
        try:
            compiled = _compile(item)
        except regex.error as exc:
            pos = getattr(exc, "pos", None)  # regex's error has re's msg and pos
            at = "" if pos is None else f" at position {pos}"
            msg = getattr(exc, "msg", None) or str(exc)
            raise GovernanceConfigError(
                path, where, f"invalid regular expression {item!r}: {msg}{at}"
            ) from None
        except (RecursionError, OverflowError):
            raise GovernanceConfigError(
                path, where, f"invalid regular expression {item!r}: too complex"
            ) from None
        if compiled.search("") is not None:
            raise GovernanceConfigError(
                path, where, f"regular expression {item!r} matches the empty string"
            )
    return tuple(raw)


def _compile(pattern: str) -> regex.Pattern[str]:
    return regex.compile(pattern)
