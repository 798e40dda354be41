"""cerbi_governance.json loading, validation, check() and apply_actions() (docs/CONTRACT.md §3)."""

from __future__ import annotations

import copy
import dataclasses
import json
import os
from pathlib import Path
from types import MappingProxyType
from typing import Any, Dict, List, Tuple

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tiers import examples

from cerbistream_spool.errors import GovernanceConfigError
from cerbistream_spool.governance import (
    ACTION_BLOCK,
    ACTION_REDACT,
    MAX_SCAN_CHARS,
    REDACTED,
    Governance,
    Rule,
    apply_actions,
    load_governance,
    parse_governance,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
GOLDEN = Path(__file__).resolve().parent / "golden"


def rule(**overrides: Any) -> Dict[str, Any]:
    """A valid rule dict, with overrides (None removes the key)."""
    base: Dict[str, Any] = {
        "ruleId": "R-1",
        "code": "PII",
        "fields": ["email"],
        "severity": "Warning",
    }
    for key, value in overrides.items():
        if value is None:
            base.pop(key, None)
        else:
            base[key] = value
    return base


def write(tmp_path: Path, doc: Any, name: str = "gov.json") -> Path:
    path = tmp_path / name
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc), encoding="utf-8")
    return path


def gov_of(tmp_path: Path, rules: List[Dict[str, Any]], profile: str = "default") -> Governance:
    return load_governance(write(tmp_path, {"profiles": {profile: {"rules": rules}}}), profile)


def config_error(path: Path, profile: str = "default") -> GovernanceConfigError:
    with pytest.raises(GovernanceConfigError) as info:
        load_governance(path, profile)
    err = info.value
    assert err.path == str(path)
    assert str(path) in str(err)
    assert err.location in str(err)
    assert err.problem in str(err)
    return err


# ---------------------------------------------------------------- the shipped files


def test_repo_example_file_loads_every_profile() -> None:
    for profile in ("default", "payments"):
        gov = load_governance(REPO_ROOT / "cerbi_governance.json", profile)
        assert gov.profile == profile
        assert gov.rules


def test_repo_example_covers_redact_block_nested_and_flag_only() -> None:
    gov = load_governance(REPO_ROOT / "cerbi_governance.json", "default")
    actions = {r.action for r in gov.rules}
    assert actions == {ACTION_REDACT, ACTION_BLOCK, None}
    assert any("." in f for r in gov.rules for f in r.fields)


def test_contract_section3_example_loads_as_written() -> None:
    gov = load_governance(GOLDEN / "contract_governance.json")
    assert [dataclasses.astuple(r) for r in gov.rules] == [
        (
            "PII-001",
            "PII",
            ("email", "ssn", "phone", "user.email"),
            "Warning",
            "PII field detected",
            "Redact",
            (),
        ),
        (
            "SEC-001",
            "Security",
            ("password", "api_key", "secret"),
            "Critical",
            "Security field detected",
            "Block",
            (),
        ),
    ]


# ---------------------------------------------------------------- check()


def test_severity_is_copied_verbatim_from_the_file(tmp_path: Path) -> None:
    gov = gov_of(tmp_path, [rule(severity="Sev-7 (custom) ")])
    (violation,) = gov.check({"email": "a@b.c"})
    assert violation.severity == "Sev-7 (custom) "
    assert violation.as_dict()["Severity"] == "Sev-7 (custom) "


def test_violation_dict_has_contract_keys_in_order(tmp_path: Path) -> None:
    gov = gov_of(tmp_path, [rule(message="PII field detected")])
    (violation,) = gov.check({"email": "x"})
    assert list(violation.as_dict().items()) == [
        ("RuleId", "R-1"),
        ("Code", "PII"),
        ("Field", "email"),
        ("Severity", "Warning"),
        ("Message", "PII field detected"),
    ]


def test_message_defaults_to_field_violates_rule(tmp_path: Path) -> None:
    gov = gov_of(tmp_path, [rule(ruleId="PII-9", fields=["user.Email"])])
    (violation,) = gov.check({"user": {"email": "x"}})
    assert violation.message == "Field 'user.Email' violates rule PII-9"


def test_null_message_means_default_message(tmp_path: Path) -> None:
    gov = gov_of(tmp_path, [rule(message=None)])
    gov2 = load_governance(
        write(tmp_path, {"profiles": {"default": {"rules": [{**rule(), "message": None}]}}}, "b")
    )
    assert gov.check({"email": 1})[0].message == gov2.check({"email": 1})[0].message


def test_nested_paths_match_case_insensitively_and_report_field_as_written(
    tmp_path: Path,
) -> None:
    gov = gov_of(tmp_path, [rule(fields=["User.EMail", "ssn"])])
    violations = gov.check({"USER": {"email": "a@b.c"}, "SSN": "1"})
    assert [v.field for v in violations] == ["User.EMail", "ssn"]


def test_deeply_nested_path_matches(tmp_path: Path) -> None:
    gov = gov_of(tmp_path, [rule(fields=["a.b.c.d"])])
    assert gov.check({"a": {"B": {"c": {"D": None}}}})
    assert not gov.check({"a": {"B": {"c": {"e": None}}}})


def test_path_does_not_descend_into_scalars_or_match_elsewhere(tmp_path: Path) -> None:
    gov = gov_of(tmp_path, [rule(fields=["user.email"])])
    assert gov.check({"user": "email"}) == ()
    assert gov.check({"user": ["email", 1, None]}) == ()
    assert gov.check({"email": "x"}) == ()
    assert gov.check({"other": {"user": {"email": "x"}}}) == ()


def test_one_violation_per_matched_field_in_rule_then_field_order(tmp_path: Path) -> None:
    gov = gov_of(
        tmp_path,
        [
            rule(ruleId="A", fields=["x", "y"]),
            rule(ruleId="B", fields=["y", "z"]),
        ],
    )
    violations = gov.check({"z": 1, "y": 2, "x": 3, "other": 4})
    assert [(v.rule_id, v.field) for v in violations] == [
        ("A", "x"),
        ("A", "y"),
        ("B", "y"),
        ("B", "z"),
    ]


def test_case_variants_of_one_key_give_one_violation(tmp_path: Path) -> None:
    gov = gov_of(tmp_path, [rule()])
    assert len(gov.check({"email": 1, "EMAIL": 2, "Email": 3})) == 1


def test_key_present_with_none_value_still_violates(tmp_path: Path) -> None:
    gov = gov_of(tmp_path, [rule()])
    assert len(gov.check({"email": None})) == 1


def test_no_match_returns_the_shared_empty_tuple(tmp_path: Path) -> None:
    gov = gov_of(tmp_path, [rule()])
    assert gov.check({"user_id": 1, "request": {"email": "x"}}) is gov.check({})
    assert gov.check({}) == ()


def test_empty_governance_matches_nothing() -> None:
    assert Governance().check({"email": "x", "password": "y"}) == ()


def test_non_string_keys_are_ignored_by_check(tmp_path: Path) -> None:
    gov = gov_of(tmp_path, [rule(fields=["a.b"])])
    assert gov.check({1: "x", "a": {2: "y"}}) == ()  # type: ignore[dict-item]


# ---------------------------------------------------------------- apply_actions()


def test_redact_replaces_top_level_and_nested_values_in_a_copy(tmp_path: Path) -> None:
    gov = gov_of(tmp_path, [rule(fields=["email", "user.email"], action="Redact")])
    extras = {"email": "a@b.c", "user": {"id": 7, "Email": "c@d.e"}, "keep": [1]}
    before = copy.deepcopy(extras)
    inner = extras["user"]
    out, blocked = apply_actions(extras, gov.check(extras))
    assert not blocked
    assert out == {"email": REDACTED, "user": {"id": 7, "Email": REDACTED}, "keep": [1]}
    assert extras == before  # caller's dicts untouched, nested included
    assert extras["user"] is inner


def test_redact_replaces_every_case_variant_of_the_key(tmp_path: Path) -> None:
    gov = gov_of(tmp_path, [rule(action="redact")])
    out, _ = apply_actions({"email": 1, "EMAIL": 2}, gov.check({"email": 1, "EMAIL": 2}))
    assert out == {"email": REDACTED, "EMAIL": REDACTED}


def test_redact_whole_subtree_when_field_names_a_dict(tmp_path: Path) -> None:
    gov = gov_of(tmp_path, [rule(fields=["user"], action="Redact")])
    extras = {"user": {"email": "x"}}
    out, _ = apply_actions(extras, gov.check(extras))
    assert out == {"user": REDACTED}


def test_flag_only_rule_keeps_the_value(tmp_path: Path) -> None:
    gov = gov_of(tmp_path, [rule()])
    extras = {"email": "a@b.c"}
    violations = gov.check(extras)
    out, blocked = apply_actions(extras, violations)
    assert violations and not blocked
    assert out == {"email": "a@b.c"}


def test_block_reports_blocked_whatever_else_matched(tmp_path: Path) -> None:
    gov = gov_of(
        tmp_path,
        [rule(ruleId="P", action="Redact"), rule(ruleId="S", fields=["password"], action="BLOCK")],
    )
    extras = {"email": "x", "password": "hunter2"}
    _, blocked = apply_actions(extras, gov.check(extras))
    assert blocked
    assert extras == {"email": "x", "password": "hunter2"}


def test_redacting_a_parent_and_a_child_path_redacts_the_parent_whole(tmp_path: Path) -> None:
    for fields in (["user", "user.email"], ["user.email", "user"]):
        gov = gov_of(tmp_path, [rule(fields=fields, action="Redact")])
        extras = {"user": {"email": "x", "id": 1}}
        violations = gov.check(extras)
        assert [v.field for v in violations] == fields
        out, _ = apply_actions(extras, violations)
        assert out == {"user": REDACTED}


def test_paths_descend_through_any_mapping(tmp_path: Path) -> None:
    gov = gov_of(tmp_path, [rule(fields=["user.email"], action="Redact")])
    extras = {"user": MappingProxyType({"Email": "x"})}
    violations = gov.check(extras)
    assert len(violations) == 1
    out, _ = apply_actions(extras, violations)
    assert out == {"user": {"Email": REDACTED}}


def test_no_violations_returns_input_unchanged_without_copy() -> None:
    extras = {"a": 1}
    out, blocked = apply_actions(extras, ())
    assert out is extras and not blocked


json_leaf = st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=8))
json_tree = st.recursive(
    json_leaf,
    lambda kids: (
        st.lists(kids, max_size=3)
        | st.dictionaries(
            st.sampled_from(["email", "Email", "user", "USER", "x"]), kids, max_size=4
        )
    ),
    max_leaves=12,
)
extras_strategy = st.dictionaries(
    st.sampled_from(["email", "EMAIL", "user", "User", "password", "id"]), json_tree, max_size=5
)


@settings(max_examples=examples(200, fast=50), deadline=None)
@given(extras=extras_strategy)
def test_check_and_redact_never_mutate_and_leave_no_matched_value(extras: Dict[str, Any]) -> None:
    gov = load_governance(GOLDEN / "contract_governance.json")
    redact_only = Governance(rules=tuple(r for r in gov.rules if r.action == ACTION_REDACT))
    before = copy.deepcopy(extras)
    violations = redact_only.check(extras)
    out, blocked = apply_actions(extras, violations)
    assert extras == before
    assert not blocked
    assert redact_only.check(out) == violations  # same fields still present ...
    for v in violations:  # ... but every matched value is now redacted
        assert all(value == REDACTED for value in _values_at(out, v.path))


def _values_at(value: Any, path: Tuple[str, ...]) -> List[Any]:
    if not path:
        return [value]
    if not isinstance(value, dict):
        return []
    found: List[Any] = []
    for key, child in value.items():
        if isinstance(key, str) and key.lower() == path[0]:
            found.extend(_values_at(child, path[1:]))
    return found


# ---------------------------------------------------------------- immutability and reload


def test_governance_and_rules_are_immutable(tmp_path: Path) -> None:
    gov = gov_of(tmp_path, [rule()])
    with pytest.raises(dataclasses.FrozenInstanceError):
        gov.rules = ()  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        gov.rules[0].severity = "x"  # type: ignore[misc]
    assert isinstance(gov.rules, tuple) and isinstance(gov.rules[0].fields, tuple)


def test_reloading_returns_a_new_object_and_leaves_the_old_one_intact(tmp_path: Path) -> None:
    path = write(tmp_path, {"profiles": {"default": {"rules": [rule()]}}})
    old = load_governance(path)
    path.write_text(json.dumps({"profiles": {"default": {"rules": [rule(fields=["ssn"])]}}}))
    new = load_governance(path)
    assert new is not old and new.sha256 != old.sha256
    assert old.check({"email": 1}) and not old.check({"ssn": 1})
    assert new.check({"ssn": 1}) and not new.check({"email": 1})


def test_flat_plan_is_memoised_per_key_tuple_and_not_kept_across_a_reload(
    tmp_path: Path,
) -> None:
    """One plan per key tuple and Governance; the plan is governance's outcome only."""
    path = write(tmp_path, {"profiles": {"default": {"rules": [rule(action="Redact")]}}})
    gov = load_governance(path)
    plan = gov.flat_plan(("email", "k"))
    assert plan == (plan.violations, frozenset({"email"}), False)
    assert gov.flat_plan(("email", "k")) is plan
    assert gov.flat_plan(("k", "email")) is not plan
    assert gov.flat_plan(("k", "email")) == plan
    assert load_governance(path).flat_plan(("email", "k")) is not plan


def test_utf8_bom_and_str_input_are_accepted(tmp_path: Path) -> None:
    doc = json.dumps({"profiles": {"default": {"rules": [rule()]}}})
    path = tmp_path / "bom.json"
    path.write_bytes(b"\xef\xbb\xbf" + doc.encode())
    assert load_governance(path).rules == parse_governance(doc, path="x", profile="default").rules


def test_empty_rules_list_is_a_valid_profile(tmp_path: Path) -> None:
    assert gov_of(tmp_path, []).rules == ()


@pytest.mark.parametrize(("written", "canonical"), [("redact", "Redact"), ("BLOCK", "Block")])
def test_actions_compare_case_insensitively(tmp_path: Path, written: str, canonical: str) -> None:
    assert gov_of(tmp_path, [rule(action=written)]).rules[0].action == canonical


def test_rule_dataclass_defaults_are_flag_only() -> None:
    r = Rule(rule_id="X", code="C", fields=("a",), severity="S")
    assert r.action is None and r.violation_for("a").message == "Field 'a' violates rule X"


# ---------------------------------------------------------------- errors: file and JSON


def test_missing_file_names_file(tmp_path: Path) -> None:
    err = config_error(tmp_path / "nope.json")
    assert err.location == "<file>"
    assert "not found" in err.problem


def test_directory_instead_of_file_is_reported(tmp_path: Path) -> None:
    err = config_error(tmp_path)
    assert err.location == "<file>"
    assert "directory" in err.problem


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root reads any file")
def test_unreadable_file_is_reported(tmp_path: Path) -> None:
    path = write(tmp_path, {"profiles": {}})
    path.chmod(0)
    try:
        err = config_error(path)
    finally:
        path.chmod(0o600)
    assert "cannot read" in err.problem


def test_unreadable_file_is_reported_when_open_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, {"profiles": {}})

    def deny(*args: Any, **kwargs: Any) -> Any:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("builtins.open", deny)
    err = config_error(path)
    assert err.location == "<file>"
    assert err.problem == "cannot read file: Permission denied"


def test_bad_json_reports_line_and_column(tmp_path: Path) -> None:
    path = write(tmp_path, '{"profiles": {\n  "default": {\n    "rules": [,]\n  }\n}}')
    err = config_error(path)
    assert err.location == "line 3, column 15"
    assert err.problem.startswith("invalid JSON: ")


def test_empty_file_is_reported(tmp_path: Path) -> None:
    err = config_error(write(tmp_path, "  \n"))
    assert "empty" in err.problem


def test_invalid_utf8_is_reported_with_byte_offset(tmp_path: Path) -> None:
    path = tmp_path / "latin1.json"
    path.write_bytes(b'{"profiles": "\xe9"}')
    err = config_error(path)
    assert err.location == "byte 14"
    assert "UTF-8" in err.problem


def test_unknown_profile_lists_known_profiles(tmp_path: Path) -> None:
    path = write(tmp_path, {"profiles": {"default": {"rules": []}, "strict": {"rules": []}}})
    err = config_error(path, "prod")
    assert err.location == "profiles"
    assert err.problem == "unknown profile 'prod'; known profiles: 'default', 'strict'"


# ---------------------------------------------------------------- errors: document and rules


def _doc(*rules: Any) -> Dict[str, Any]:
    return {"profiles": {"default": {"rules": list(rules)}}}


R0 = "profiles.default.rules[0]"
R1 = "profiles.default.rules[1]"

RULE_ERRORS = [
    pytest.param(_doc(rule(ruleId=None)), R0, "missing required key 'ruleId'", id="missing-ruleId"),
    pytest.param(_doc(rule(code=None)), R0, "missing required key 'code'", id="missing-code"),
    pytest.param(_doc(rule(fields=None)), R0, "missing required key 'fields'", id="missing-fields"),
    pytest.param(
        _doc(rule(severity=None)), R0, "missing required key 'severity'", id="missing-severity"
    ),
    pytest.param(
        _doc(rule(), rule(ruleId="R-2", severity="")),
        R1 + ".severity",
        "must be a non-empty string",
        id="empty-severity",
    ),
    pytest.param(
        _doc(rule(severity="   ")),
        R0 + ".severity",
        "must be a non-empty string",
        id="blank-severity",
    ),
    pytest.param(
        _doc(rule(severity=3)),
        R0 + ".severity",
        "expected a non-empty string, got number",
        id="numeric-severity",
    ),
    pytest.param(
        _doc(rule(ruleId="")), R0 + ".ruleId", "must be a non-empty string", id="empty-ruleId"
    ),
    pytest.param(
        _doc(rule(code=[])),
        R0 + ".code",
        "expected a non-empty string, got array",
        id="code-not-string",
    ),
    pytest.param(
        _doc(rule(fields=[])),
        R0 + ".fields",
        "expected a non-empty array of field paths, got an empty array",
        id="fields-empty",
    ),
    pytest.param(
        _doc(rule(fields="email")),
        R0 + ".fields",
        "expected a non-empty array of field paths, got string",
        id="fields-string",
    ),
    pytest.param(
        _doc(rule(fields=["email", ""])),
        R0 + ".fields[1]",
        "must be non-empty",
        id="field-empty-string",
    ),
    pytest.param(
        _doc(rule(fields=["email", 5])),
        R0 + ".fields[1]",
        "expected a non-empty string, got number",
        id="field-not-string",
    ),
    pytest.param(
        _doc(rule(fields=["user..email"])),
        R0 + ".fields[0]",
        "invalid field path 'user..email'",
        id="field-empty-segment",
    ),
    pytest.param(
        _doc(rule(fields=["user.email "])),
        R0 + ".fields[0]",
        "whitespace",
        id="field-trailing-space",
    ),
    pytest.param(
        _doc(rule(fields=["email", "EMAIL"])),
        R0 + ".fields[1]",
        "duplicate field 'EMAIL' (same as fields[0]",
        id="field-duplicate",
    ),
    pytest.param(
        _doc(rule(action="Mask")),
        R0 + ".action",
        'unknown action \'Mask\'; expected "Redact" or "Block"',
        id="unknown-action",
    ),
    pytest.param(_doc(rule(action=True)), R0 + ".action", "got boolean", id="action-not-string"),
    pytest.param(
        _doc(rule(message="")), R0 + ".message", "must be a non-empty string", id="empty-message"
    ),
    pytest.param(
        _doc(rule(), rule(code="Other")),
        R1 + ".ruleId",
        "duplicate ruleId 'R-1' in profile 'default' (first at rules[0])",
        id="duplicate-ruleId",
    ),
    pytest.param(
        _doc(rule(acton="Redact")),
        R0 + ".acton",
        "unknown key 'acton'; allowed keys: ruleId, code",
        id="unknown-key",
    ),
    pytest.param(
        _doc(rule(ruleId=None, RuleId="X")),
        R0 + ".RuleId",
        "unknown key 'RuleId'; did you mean 'ruleId'?",
        id="wrong-case-key",
    ),
    pytest.param(
        _doc("PII"), R0, "expected a rule (a JSON object), got string", id="rule-not-object"
    ),
    pytest.param(
        {"profiles": {"default": {"rules": {}}}},
        "profiles.default.rules",
        "expected an array of rules, got object",
        id="rules-not-array",
    ),
    pytest.param(
        {"profiles": {"default": {}}},
        "profiles.default.rules",
        "missing required key",
        id="rules-missing",
    ),
    pytest.param(
        {"profiles": {"default": []}},
        "profiles.default",
        "expected a profile (a JSON object), got array",
        id="profile-not-object",
    ),
    pytest.param(
        {"profiles": {"default": {"rules": []}, "my.app": {"rules": [rule(code="")]}}},
        'profiles["my.app"].rules[0].code',
        "must be a non-empty string",
        id="other-profile-also-validated",
    ),
    pytest.param(
        _doc(rule(patterns=["("])),
        R0 + ".patterns[0]",
        "invalid regular expression '(': missing ) at position 1",
        id="pattern-does-not-compile",
    ),
    pytest.param(
        _doc(rule(fields=None, patterns=[])),
        R0 + ".patterns",
        "expected a non-empty array of regular expressions, got an empty array",
        id="patterns-empty",
    ),
    pytest.param(
        _doc(rule(patterns="x+")),
        R0 + ".patterns",
        "expected a non-empty array of regular expressions, got string",
        id="patterns-not-array",
    ),
    pytest.param(
        _doc(rule(patterns=[1])), R0 + ".patterns[0]", "got number", id="pattern-not-string"
    ),
    pytest.param(
        _doc(rule(patterns=["a", "a"])),
        R0 + ".patterns[1]",
        "duplicate pattern 'a' (same as patterns[0])",
        id="pattern-twice",
    ),
    pytest.param(
        _doc(rule(patterns=["x?"])),
        R0 + ".patterns[0]",
        "matches the empty string",
        id="pattern-matches-empty",
    ),
    pytest.param(
        _doc(rule(patterns=["a" * 1001])),
        R0 + ".patterns[0]",
        "regular expression longer than 1000 characters",
        id="pattern-too-long",
    ),
    pytest.param(
        _doc(rule(fields=None)),
        R0,
        "missing required key 'fields' (a rule needs 'fields', 'patterns' or both)",
        id="neither-fields-nor-patterns",
    ),
    pytest.param({"profiles": {}}, "profiles", "no profiles defined", id="no-profiles"),
    pytest.param({"rules": []}, "profiles", "missing required key", id="profiles-missing"),
    pytest.param({"profiles": []}, "profiles", "got array", id="profiles-not-object"),
    pytest.param([1], "<root>", "got array", id="root-not-object"),
]


@pytest.mark.parametrize(("doc", "location", "problem"), RULE_ERRORS)
def test_malformed_document_names_file_location_and_problem(
    tmp_path: Path, doc: Any, location: str, problem: str
) -> None:
    err = config_error(write(tmp_path, doc))
    assert err.location == location
    assert problem in err.problem


def test_duplicate_json_key_in_a_rule_is_an_error(tmp_path: Path) -> None:
    text = (
        '{"profiles": {"default": {"rules": [{"ruleId": "A", "code": "C", "fields": ["x"],'
        ' "severity": "S", "action": "Redact", "action": "Block"}]}}}'
    )
    err = config_error(write(tmp_path, text))
    assert err.location == "profiles.default.rules[0]"
    assert "duplicate key 'action'" in err.problem


def test_duplicate_profile_name_is_an_error(tmp_path: Path) -> None:
    text = '{"profiles": {"default": {"rules": []}, "default": {"rules": []}}}'
    err = config_error(write(tmp_path, text))
    assert err.location == "profiles"
    assert "duplicate key 'default'" in err.problem


def test_error_message_format_is_path_location_problem(tmp_path: Path) -> None:
    path = write(tmp_path, _doc(rule(severity="")))
    err = config_error(path)
    assert str(err) == f"{path}: at profiles.default.rules[0].severity: must be a non-empty string"


# ---------------------------------------------------------------- dotted keys, lists, bytes keys


def test_a_literal_dotted_key_is_the_nested_path(tmp_path: Path) -> None:
    gov = gov_of(tmp_path, [rule(fields=["user.email"], action="Redact")])
    extras = {"User.Email": "a", "user": {"email": "b"}, "user.name": "c"}
    assert [v.field for v in gov.check(extras)] == ["user.email"]
    out, blocked = apply_actions(extras, gov.check(extras))
    assert out == {"User.Email": REDACTED, "user": {"email": REDACTED}, "user.name": "c"}
    assert not blocked


def test_a_dotted_key_below_a_governed_parent_is_redacted_whole(tmp_path: Path) -> None:
    """``user.email.primary`` lies under ``user.email``; ``user`` + ``{"email.x": ..}`` too."""
    gov = gov_of(tmp_path, [rule(fields=["user.email"], action="Redact")])
    extras = {"user.email.primary": "a", "user": {"email.work": "b", "id": 1}}
    out, _ = apply_actions(extras, gov.check(extras))
    assert out == {"user.email.primary": REDACTED, "user": {"email.work": REDACTED, "id": 1}}


def test_dicts_inside_lists_are_searched_and_redacted_in_a_copy(tmp_path: Path) -> None:
    gov = gov_of(tmp_path, [rule(fields=["users.email"], action="Redact")])
    extras = {"users": [{"email": "a"}, "x", [{"EMAIL": "b"}], ({"email": "c"},)]}
    snapshot = copy.deepcopy(extras)
    violations = gov.check(extras)
    assert [v.field for v in violations] == ["users.email"]
    out, _ = apply_actions(extras, violations)
    assert out == {
        "users": [{"email": REDACTED}, "x", [{"EMAIL": REDACTED}], [{"email": REDACTED}]]
    }
    assert extras == snapshot


def test_block_inside_a_list_blocks(tmp_path: Path) -> None:
    gov = gov_of(tmp_path, [rule(fields=["items.password"], action="Block")])
    assert apply_actions({"items": [{"password": "x"}]}, gov.check({"items": [{"password": 1}]}))[1]


def test_bytes_keys_and_collision_suffixes_match_their_text(tmp_path: Path) -> None:
    gov = gov_of(tmp_path, [rule(fields=["password"], action="Redact")])
    extras = {b"Password": "a", "password~2": "b", "password~x": "c", "password~02": "d"}
    out, _ = apply_actions(extras, gov.check(extras))
    assert out == {
        b"Password": REDACTED,
        "password~2": REDACTED,
        "password~x": "c",
        "password~02": "d",
    }


def test_self_referencing_lists_end_the_walk(tmp_path: Path) -> None:
    gov = gov_of(tmp_path, [rule(fields=["a.b"], action="Redact")])
    loop: List[Any] = []
    loop.append(loop)
    assert gov.check({"a": loop}) == ()
    assert apply_actions({"a": loop}, gov.check({"a": [{"b": 1}]}))[0]["a"] is loop


# ---------------------------------------------------------------- patterns


def test_patterns_are_compiled_once_at_load_and_absent_patterns_cost_no_scan(
    tmp_path: Path,
) -> None:
    gov = gov_of(tmp_path, [rule(patterns=[r"\bsk-[a-z0-9]+"], action="Redact")])
    assert [p.pattern for p in gov.patterns[0].patterns] == [r"\bsk-[a-z0-9]+"]
    assert gov_of(tmp_path, [rule()]).patterns == ()


def test_a_pattern_redacts_the_matched_text_only(tmp_path: Path) -> None:
    gov = gov_of(
        tmp_path, [rule(fields=None, patterns=[r"(?<=password=)[^&\s]+"], action="Redact")]
    )
    scan = gov.scan_text("GET /r?password=hunter2&a=1", {"q": ["password=x y"], "n": 1})
    assert scan.message == f"GET /r?password={REDACTED}&a=1"
    assert scan.values == {"q": [f"password={REDACTED} y"], "n": 1}
    assert [(v.rule_id, v.field, v.severity) for v in scan.violations] == [
        ("R-1", "message", "Warning"),
        ("R-1", "q", "Warning"),
    ]
    assert not scan.blocked


def test_a_pattern_with_block_blocks_and_flag_only_keeps_the_text(tmp_path: Path) -> None:
    gov = gov_of(
        tmp_path,
        [
            rule(fields=None, patterns=["tok-[0-9]+"], action="Block"),
            rule(ruleId="R-2", fields=None, patterns=["flag"]),
        ],
    )
    scan = gov.scan_text("tok-1 flag", {})
    assert scan.blocked and scan.message == "tok-1 flag"
    assert [v.rule_id for v in scan.violations] == ["R-1", "R-2"]
    assert gov.scan_text("nothing", {"a": {"b": "c"}}).violations == ()


def test_text_beyond_the_scan_bound_is_cut_with_a_marker(tmp_path: Path) -> None:
    gov = gov_of(tmp_path, [rule(fields=None, patterns=["secret"], action="Redact")])
    text = "a" * MAX_SCAN_CHARS + "secret"
    scan = gov.scan_text(text, {"v": text})
    assert "secret" not in scan.message  # type: ignore[operator]
    assert scan.message.startswith("a" * MAX_SCAN_CHARS)  # type: ignore[union-attr]
    assert scan.message.endswith("6 more characters not scanned, removed]")  # type: ignore[union-attr]
    assert scan.values["v"] == scan.message and scan.violations == ()


# patterns the old load-time heuristic refused; regex matches them fast, the budget bounds them
@pytest.mark.parametrize(
    ("pattern", "text"),
    [
        (r"(a+)+$", "x aaa"),
        (r"(\w+\s?)*x", "ab cd x"),
        (r"(a)\1", "x aa"),
        (r"(?:[a-z0-9-]+\.)+com\b", "to mail.example.com"),
    ],
)
def test_nested_repeats_and_backreferences_load_and_match(
    tmp_path: Path, pattern: str, text: str
) -> None:
    gov = gov_of(tmp_path, [rule(fields=None, patterns=[pattern], action="Redact")])
    scan = gov.scan_text(text, {})
    assert not scan.timed_out and REDACTED in scan.message  # type: ignore[operator]


STALLING = "a.*a.*x"  # cubic backtracking: seconds on 2,000 characters, with re and regex


def test_a_scan_out_of_time_fails_closed(tmp_path: Path) -> None:
    """The text being scanned is replaced, the rule reports a timeout violation with its
    severity, and every text after it (the record's budget is spent) is replaced too."""
    gov = gov_of(
        tmp_path,
        [rule(fields=None, patterns=[STALLING], action="Redact", severity="Critical")],
    )
    scan = gov.scan_text("a" * 2000 + " password=hunter2", {"v": "hunter2", "n": 1})
    assert scan.timed_out and not scan.blocked
    assert scan.message == REDACTED and scan.values == {"v": REDACTED, "n": 1}
    assert [(v.rule_id, v.field, v.severity) for v in scan.violations] == [
        ("R-1", "message", "Critical"),
        ("R-1", "v", "Critical"),
    ]
    assert "the scan ran out of time (50 ms per record)" in scan.violations[0].message
    # the next record has a budget of its own
    assert gov.scan_text("short", {}).violations == ()


def test_a_block_rule_out_of_time_blocks_and_a_flag_rule_still_replaces(tmp_path: Path) -> None:
    block = gov_of(tmp_path, [rule(fields=None, patterns=[STALLING], action="Block")])
    assert block.scan_text("a" * 2000, {}).blocked
    flag = gov_of(tmp_path, [rule(fields=None, patterns=[r"a+b"])])  # quadratic: 6 s with re
    scan = flag.scan_text("a" * MAX_SCAN_CHARS, {})
    assert scan.timed_out and not scan.blocked and scan.message == REDACTED
    assert [v.action for v in scan.violations] == [None]


def test_patterns_keep_their_own_meaning_beside_others(tmp_path: Path) -> None:
    """Inline flags and group references of one pattern change nothing of the others:
    the violations are those of each pattern on its own."""
    for extra in (r"s3cr3t", r"(?a)secret", r"(?i)SECRET", r"(e)cr\1t"):
        gov = gov_of(
            tmp_path,
            [
                rule(fields=None, patterns=[extra], action="Redact"),
                rule(ruleId="R-2", fields=None, patterns=[r"a b", r"\bk-[0-9]+", r"é\w"]),
            ],
        )
        scan = gov.scan_text("x a b y", {"k": "k-12", "s": "secret", "u": "éé"})
        found = [(v.rule_id, v.field) for v in scan.violations]
        r1 = [] if extra == "s3cr3t" else [("R-1", "s")]
        assert found == [*r1, ("R-2", "k"), ("R-2", "message"), ("R-2", "u")], extra
