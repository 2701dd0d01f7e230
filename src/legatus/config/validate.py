"""protoc-gen-validate (PGV) rules, checked on any protobuf message.

Envoy's protos annotate fields with ``(validate.rules)`` and oneofs with
``(validate.required)``, and Envoy rejects a config that breaks them when it loads it. legatus
must reject the same configs, and say where: ``validate_message`` walks a message and returns
one ConfigError per violating field, with the field's YAML path
(``static_resources.clusters[0].name: value length must be at least 1 characters``).

Semantics follow PGV's C++ generator, which is what Envoy runs:

- scalar rules apply to unset (default-valued) fields too; fields of an unset oneof and unset
  proto3 ``optional`` fields are not checked;
- set sub-messages, repeated message elements and message map values are walked unless the
  field says ``message.skip``; ``google.protobuf.Any`` is never unpacked (its typed config is
  validated by whoever unpacks it);
- wrapper types (``UInt32Value`` ...) check the wrapped value when set;
- each field reports its first violation (PGV's order), but every field is checked.

Theory of operation: each message type is compiled once into a plan, a tuple of steps (one
closure per field that carries rules or can lead to a message that does). Whether a type can
lead to rules at all is decided once per type over its whole reachable graph (recursive types
included), so subtrees without rules are never visited.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from validate import validate_pb2

from legatus.config.errors import ConfigError, join_path
from legatus.config.validate_rules import compile_check

__all__ = ["validate_message"]

# step(message, path, errors): check one field of `message`, appending violations.
Step = Callable[[Any, str, list[ConfigError]], None]
# handler(value, path, errors): check one present value (an element, a map value, a field).
Handler = Callable[[Any, str, list[ConfigError]], None]

_WRAPPERS = frozenset(
    f"google.protobuf.{name}Value"
    for name in ("Double", "Float", "Int64", "UInt64", "Int32", "UInt32", "Bool", "String", "Bytes")
)
_PRESENCE_KINDS = ("duration", "timestamp", "any")  # kinds with their own `required`

_PLANS: dict[Descriptor, tuple[Step, ...]] = {}
_NEEDS: dict[Descriptor, bool] = {}


def validate_message(message: Any, path: str = "") -> list[ConfigError]:
    """All PGV violations in `message` and its sub-messages; [] when valid. Before them,
    Envoy's own check of every Duration (MessageUtil::validateDurationFields): none may be
    negative."""
    errors: list[ConfigError] = []
    _check_durations(message, path, errors)  # first, as Envoy checks them before PGV
    if _needs(message.DESCRIPTOR):
        _walk(message, path, errors)
    return errors


_DURATION = "google.protobuf.Duration"
_ANY = "google.protobuf.Any"


def _check_durations(message: Any, path: str, errors: list[ConfigError]) -> None:
    """Every set Duration below ``message`` (not inside an Any: whoever unpacks it checks
    it), refused when negative with Envoy's text."""
    for fd, value in message.ListFields():
        mt = fd.message_type
        if mt is None or mt.full_name == _ANY:
            continue
        fpath = join_path(path, fd.name)
        if _is_map(fd):
            value_fd = mt.fields_by_name["value"]
            if value_fd.message_type is not None and value_fd.message_type.full_name != _ANY:
                for key, item in value.items():
                    _check_durations(item, f"{fpath}[{key!r}]", errors)
            continue
        items = value if fd.is_repeated else (value,)
        for i, item in enumerate(items):
            ipath = f"{fpath}[{i}]" if fd.is_repeated else fpath
            if mt.full_name == _DURATION:
                if item.seconds < 0 or item.nanos < 0:
                    errors.append(ConfigError(ipath, "Invalid duration: Expected positive "
                                              f"duration: seconds: {item.seconds}"))  # fmt: skip
            else:
                _check_durations(item, ipath, errors)


def _walk(message: Any, path: str, errors: list[ConfigError]) -> None:
    desc = message.DESCRIPTOR
    plan = _PLANS.get(desc)
    if plan is None:
        plan = _PLANS[desc] = _compile_plan(desc)
    for step in plan:
        step(message, path, errors)


# Which types need a walk at all


def _field_rules(fd: FieldDescriptor) -> Any:
    options = fd.GetOptions()
    if not options.HasExtension(validate_pb2.rules):
        return None
    return options.Extensions[validate_pb2.rules]


def _is_disabled(desc: Descriptor) -> bool:
    # `disabled` makes Validate() a no-op; `ignored` generates none: either way nothing below.
    options = desc.GetOptions()
    return any(
        options.HasExtension(ext) and options.Extensions[ext]
        for ext in (validate_pb2.disabled, validate_pb2.ignored)
    )


def _required_oneofs(desc: Descriptor) -> list[Any]:
    return [
        oneof
        for oneof in desc.oneofs
        if oneof.GetOptions().HasExtension(validate_pb2.required)
        and oneof.GetOptions().Extensions[validate_pb2.required]
    ]


def _is_map(fd: FieldDescriptor) -> bool:
    return fd.is_repeated and fd.message_type is not None and fd.message_type.GetOptions().map_entry


def _element_rules(fd: FieldDescriptor, rules: Any) -> Any:
    """The FieldRules that govern one element / map value of `fd`, or the field's own."""
    if rules is None:
        return None
    if _is_map(fd):
        return rules.map.values if rules.HasField("map") and rules.map.HasField("values") else None
    if fd.is_repeated:
        has_items = rules.HasField("repeated") and rules.repeated.HasField("items")
        return rules.repeated.items if has_items else None
    return rules


def _walked_type(fd: FieldDescriptor, rules: Any) -> Descriptor | None:
    """The message type whose values the walker descends into through `fd`, if any."""
    target = fd.message_type.fields_by_name["value"] if _is_map(fd) else fd
    if target.message_type is None:
        return None
    elem = _element_rules(fd, rules)
    if elem is not None and (elem.WhichOneof("type") is not None or elem.message.skip):
        return None  # typed rules (wrapper, duration, any...) replace the walk, or skip it
    return target.message_type


def _needs(root: Descriptor) -> bool:
    """Whether a value of this type can violate any rule (own or below it)."""
    known = _NEEDS.get(root)
    if known is not None:
        return known
    # Collect the unseen part of the type graph, then solve it as a fixpoint so cycles
    # (Struct, matcher trees) get the same answer whichever type was asked first.
    own: dict[Descriptor, bool] = {}
    edges: dict[Descriptor, list[Descriptor]] = {}
    stack = [root]
    while stack:
        desc = stack.pop()
        if desc in own or desc in _NEEDS:
            continue
        disabled = _is_disabled(desc)
        own[desc] = not disabled and (
            bool(_required_oneofs(desc)) or any(_field_rules(fd) is not None for fd in desc.fields)
        )
        kids = [] if disabled else [_walked_type(fd, _field_rules(fd)) for fd in desc.fields]
        edges[desc] = kids = [k for k in kids if k is not None]
        stack.extend(kids)
    result = dict(own)
    changed = True
    while changed:
        changed = False
        for desc, kids in edges.items():
            if not result[desc] and any(result.get(k, _NEEDS.get(k)) for k in kids):
                result[desc] = changed = True
    _NEEDS.update(result)
    return result[root]


# Plans


def _compile_plan(desc: Descriptor) -> tuple[Step, ...]:
    if _is_disabled(desc):
        return ()
    steps: list[Step] = []
    for fd in desc.fields:
        if fd.containing_oneof is None:
            step = _field_step(fd)
            if step is not None:
                steps.append(step)
    # Oneofs after plain fields, as PGV does; a member is checked only when it is the one set
    # (this also covers proto3 `optional`, whose synthetic oneof holds only that field).
    for oneof in desc.oneofs:
        for fd in oneof.fields:
            step = _field_step(fd)
            if step is not None:
                steps.append(_when_set(fd.name, step))
    for oneof in _required_oneofs(desc):
        steps.append(_oneof_required_step(oneof))
    return tuple(steps)


def _when_set(name: str, step: Step) -> Step:
    def when_set(message: Any, path: str, errors: list[ConfigError]) -> None:
        if message.HasField(name):
            step(message, path, errors)

    return when_set


def _oneof_required_step(oneof: Any) -> Step:
    name = oneof.name
    names = [fd.name for fd in oneof.fields]
    listed = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]
    text = f"one of {listed} must be set (oneof {name} is required)"

    def oneof_required(message: Any, path: str, errors: list[ConfigError]) -> None:
        if message.WhichOneof(name) is None:
            errors.append(ConfigError(path, text))

    return oneof_required


def _field_step(fd: FieldDescriptor) -> Step | None:
    rules = _field_rules(fd)
    if _is_map(fd):
        return _map_step(fd, rules)
    if fd.is_repeated:
        return _repeated_step(fd, rules)
    if fd.message_type is not None:
        return _message_field_step(fd, rules)
    if rules is None:
        return None
    check = _scalar_check(fd, rules)
    if check is None:
        return None
    name = fd.name

    def scalar(message: Any, path: str, errors: list[ConfigError]) -> None:
        text = check(getattr(message, name))
        if text is not None:
            errors.append(ConfigError(join_path(path, name), text))

    return scalar


def _scalar_check(fd: FieldDescriptor, rules: Any) -> Callable[[Any], str | None] | None:
    kind = rules.WhichOneof("type")
    if kind is None:
        return None
    return compile_check(kind, getattr(rules, kind), fd.enum_type)


def _report(check: Callable[[Any], str | None] | None) -> Handler | None:
    if check is None:
        return None

    def report(value: Any, path: str, errors: list[ConfigError]) -> None:
        text = check(value)
        if text is not None:
            errors.append(ConfigError(path, text))

    return report


def _value_handler(fd: FieldDescriptor, rules: Any, msg_type: Descriptor | None) -> Handler | None:
    """How to check one present value of `fd`'s element type under `rules` (may be None)."""
    if msg_type is None:
        return _report(_scalar_check(fd, rules)) if rules is not None else None
    kind = rules.WhichOneof("type") if rules is not None else None
    if kind is None:
        if (rules is not None and rules.message.skip) or not _needs(msg_type):
            return None
        return _walk
    if kind in _PRESENCE_KINDS:
        return _report(compile_check(kind, getattr(rules, kind)))
    if msg_type.full_name in _WRAPPERS:
        check = compile_check(kind, getattr(rules, kind))
        if check is None:
            return None

        def wrapped(value: Any, path: str, errors: list[ConfigError]) -> None:
            text = check(value.value)
            if text is not None:
                errors.append(ConfigError(path, text))

        return wrapped
    return None  # rules of a kind that cannot apply to this message type


def _message_field_step(fd: FieldDescriptor, rules: Any) -> Step | None:
    handler = _value_handler(fd, rules, fd.message_type)
    required_text = None
    if rules is not None:
        kind = rules.WhichOneof("type")
        presence = kind in _PRESENCE_KINDS and getattr(rules, kind).required
        if presence or rules.message.required:
            required_text = "value is required"
            if kind is not None and kind not in _PRESENCE_KINDS:  # a wrapper with value rules
                required_text = "value is required and must not be nil."
    if handler is None and required_text is None:
        return None
    name = fd.name

    def message_field(message: Any, path: str, errors: list[ConfigError]) -> None:
        if message.HasField(name):
            if handler is not None:
                handler(getattr(message, name), join_path(path, name), errors)
        elif required_text is not None:
            errors.append(ConfigError(join_path(path, name), required_text))

    return message_field


def _count_check(
    rules: Any, least: str, most: str, noun: str
) -> Callable[[int], str | None] | None:
    """PGV's min_items/max_items (noun "item") and min_pairs/max_pairs (noun "pair")."""
    lo = getattr(rules, least)
    hi = getattr(rules, most) if rules.HasField(most) else None
    if lo and lo == hi:
        text = f"value must contain exactly {lo} {noun}(s)"
        return lambda n: None if n == lo else text
    if lo and hi is not None:
        text = f"value must contain between {lo} and {hi} {noun}s, inclusive"
        return lambda n: None if lo <= n <= hi else text
    if lo:
        text = f"value must contain at least {lo} {noun}(s)"
        return lambda n: None if n >= lo else text
    if hi is not None:
        text = f"value must contain no more than {hi} {noun}(s)"
        return lambda n: None if n <= hi else text
    return None


_NOT_UNIQUE = "repeated value must contain unique items"


def _unique_key(value: Any) -> Any:
    if hasattr(value, "SerializeToString"):
        return value.SerializeToString(deterministic=True)
    return value


def _repeated_step(fd: FieldDescriptor, rules: Any) -> Step | None:
    container = rules.repeated if rules is not None and rules.HasField("repeated") else None
    count = _count_check(container, "min_items", "max_items", "item") if container else None
    unique = bool(container and container.unique)
    ignore_empty = bool(container and container.ignore_empty)
    elem = _value_handler(fd, _element_rules(fd, rules), fd.message_type)
    if count is None and not unique and elem is None:
        return None
    name = fd.name

    def repeated(message: Any, path: str, errors: list[ConfigError]) -> None:
        values = getattr(message, name)
        n = len(values)
        if ignore_empty and not n:
            return
        field_path = join_path(path, name)
        if count is not None:
            text = count(n)
            if text is not None:
                errors.append(ConfigError(field_path, text))
        if unique:
            seen: set[Any] = set()
            for i, value in enumerate(values):
                key = _unique_key(value)
                if key in seen:
                    errors.append(ConfigError(f"{field_path}[{i}]", _NOT_UNIQUE))
                seen.add(key)
        if elem is not None:
            for i, value in enumerate(values):
                elem(value, f"{field_path}[{i}]", errors)

    return repeated


def _key_text(key: Any) -> str:
    if isinstance(key, str):
        return json.dumps(key, ensure_ascii=False)
    if isinstance(key, bool):
        return "true" if key else "false"
    return str(key)


def _map_step(fd: FieldDescriptor, rules: Any) -> Step | None:
    container = rules.map if rules is not None and rules.HasField("map") else None
    count = _count_check(container, "min_pairs", "max_pairs", "pair") if container else None
    ignore_empty = bool(container and container.ignore_empty)
    key_fd = fd.message_type.fields_by_name["key"]
    value_fd = fd.message_type.fields_by_name["value"]
    keys = container.keys if container is not None and container.HasField("keys") else None
    key_check = _scalar_check(key_fd, keys) if keys is not None else None
    value = _value_handler(value_fd, _element_rules(fd, rules), value_fd.message_type)
    if count is None and key_check is None and value is None:
        return None
    name = fd.name

    def map_field(message: Any, path: str, errors: list[ConfigError]) -> None:
        entries = getattr(message, name)
        if ignore_empty and not entries:
            return
        field_path = join_path(path, name)
        if count is not None:
            text = count(len(entries))
            if text is not None:
                errors.append(ConfigError(field_path, text))
        if key_check is None and value is None:
            return
        for key in entries:
            entry_path = f"{field_path}[{_key_text(key)}]"
            if key_check is not None:
                text = key_check(key)
                if text is not None:
                    errors.append(ConfigError(entry_path, f"invalid key: {text}"))
            if value is not None:
                value(entries[key], entry_path, errors)

    return map_field
