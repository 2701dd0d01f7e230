"""The unified matcher API (``xds.type.matcher.v3.Matcher``), as Envoy's ``Matcher`` namespace
evaluates it: compiled once into a tree, evaluated per request or connection.

A user of the API (the RBAC filters, for one) gives two tables when compiling: the inputs
it can offer (``DataInput``: what an input's ``typed_config`` type reads from its data) and
the actions it understands (what an action's ``typed_config`` type compiles to). Anything
else is refused at configuration time with the path of the offending field, as Envoy
refuses an input or action its user does not register.

Semantics (the proto's comments, and Envoy 1.40 where they are silent):

- ``matcher_list``: field matchers in order, the first whose predicate holds wins;
- ``matcher_tree``: the input's value looked up in ``exact_match_map``, or in
  ``prefix_match_map`` where the longest matching prefix is tried first and shorter ones
  after it when its ``on_match`` (a nested matcher) finds nothing;
- an ``on_match`` with a nested ``matcher`` that finds nothing has not matched: the list
  goes on with its next field matcher;
- ``on_no_match``, when set, is what a matcher that found nothing answers;
- a ``single_predicate`` on an absent input (a missing header) is false; ``not_matcher``
  of it is then true; ``or_matcher`` / ``and_matcher`` combine their predicates.

A predicate's ``custom_match`` takes the input matchers its user offers (the IP range matcher,
``envoy.extensions.matching.input_matchers.ip.v3.Ip``, for RBAC); a tree's ``custom_match``
is refused by field path, and ``keep_matching`` as Envoy's RBAC filters refuse it ("not
supported in this context").
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from legatus.common.matchers import StringMatcher
from legatus.config.errors import ConfigError, join_path
from legatus.config.proto_json import message_class, type_name
from legatus.config.supported import check_supported

# An input reads one value (a string, or None when the data has none) from the data.
DataInput = Callable[[Any], "str | None"]
# Compilers by proto message name: (config message, path) -> an input / an action.
InputFactories = dict[str, Callable[[Any, str], DataInput]]
ActionFactories = dict[str, Callable[[Any, str], Any]]
# Compilers of ``custom_match`` input matchers: (config message, path) -> value -> bool.
InputMatcherFactories = dict[str, Callable[[Any, str], Callable[[str], bool]]]

_NO_MATCH = None


@dataclass(frozen=True, slots=True)
class _Factories:
    inputs: InputFactories
    actions: ActionFactories
    input_matchers: InputMatcherFactories
    what: str  # who is compiling, for error messages ("RBAC HTTP filter")


class MatchTree:
    """A compiled matcher: ``match(data)`` is the action of the match, or None."""

    __slots__ = ()

    def match(self, data: Any) -> Any:  # pragma: no cover - every subclass overrides
        raise NotImplementedError


class _OnMatch:
    """An ``OnMatch``: an action, or a nested matcher (whose answer may be None)."""

    __slots__ = ("action", "matcher")

    def __init__(self, action: Any, matcher: MatchTree | None) -> None:
        self.action = action
        self.matcher = matcher

    def result(self, data: Any) -> Any:
        if self.matcher is None:
            return self.action
        return self.matcher.match(data)


class _List(MatchTree):
    __slots__ = ("matchers", "on_no_match")

    def __init__(self, matchers: tuple, on_no_match: _OnMatch | None) -> None:
        self.matchers = matchers
        self.on_no_match = on_no_match

    def match(self, data: Any) -> Any:
        for predicate, on_match in self.matchers:
            if predicate(data):
                result = on_match.result(data)
                if result is not None:
                    return result
        on_no_match = self.on_no_match
        return None if on_no_match is None else on_no_match.result(data)


class _ExactMap(MatchTree):
    __slots__ = ("input", "map", "on_no_match")

    def __init__(self, input: DataInput, map, on_no_match: _OnMatch | None) -> None:
        self.input = input
        self.map = map
        self.on_no_match = on_no_match

    def match(self, data: Any) -> Any:
        value = self.input(data)
        if value is not None:
            result = self._found(value, data)
            if result is not None:
                return result
        on_no_match = self.on_no_match
        return None if on_no_match is None else on_no_match.result(data)

    def _found(self, value: str, data: Any) -> Any:
        on_match = self.map.get(value)
        return None if on_match is None else on_match.result(data)


class _PrefixMap(_ExactMap):
    """Prefixes tried longest first (``map``: (prefix, on_match) pairs in that order)."""

    __slots__ = ()

    def _found(self, value: str, data: Any) -> Any:
        for prefix, on_match in self.map:
            if value.startswith(prefix):
                result = on_match.result(data)
                if result is not None:
                    return result
        return None


def compile_matcher(
    proto,
    path: str,
    *,
    inputs: InputFactories,
    actions: ActionFactories,
    what: str,
    input_matchers: InputMatcherFactories | None = None,
) -> MatchTree:
    """Compile the ``xds.type.matcher.v3.Matcher`` at ``path`` for a user that offers
    ``inputs``, understands ``actions`` and takes ``input_matchers`` in a predicate's
    ``custom_match`` (all keyed by proto message name)."""
    return _matcher(proto, path, _Factories(inputs, actions, input_matchers or {}, what))


def _matcher(proto, path: str, factories: _Factories) -> MatchTree:
    check_supported(proto, ("matcher_list", "matcher_tree", "on_no_match"), path, "Matcher")
    on_no_match = (
        _on_match(proto.on_no_match, join_path(path, "on_no_match"), factories)
        if proto.HasField("on_no_match")
        else None
    )
    which = proto.WhichOneof("matcher_type")
    if which == "matcher_list":
        where = join_path(path, "matcher_list")
        if not proto.matcher_list.matchers:
            raise ConfigError(join_path(where, "matchers"), "at least one matcher is required")
        matchers = []
        for i, field in enumerate(proto.matcher_list.matchers):
            at = f"{where}.matchers[{i}]"
            check_supported(field, ("predicate", "on_match"), at, "FieldMatcher")
            if not field.HasField("predicate"):
                raise ConfigError(join_path(at, "predicate"), "a predicate is required")
            if not field.HasField("on_match"):
                raise ConfigError(join_path(at, "on_match"), "an on_match is required")
            matchers.append(
                (
                    _predicate(field.predicate, join_path(at, "predicate"), factories),
                    _on_match(field.on_match, join_path(at, "on_match"), factories),
                )
            )
        return _List(tuple(matchers), on_no_match)
    if which == "matcher_tree":
        tree = proto.matcher_tree
        where = join_path(path, "matcher_tree")
        check_supported(tree, ("input", "exact_match_map", "prefix_match_map"), where,
                        "MatcherTree")  # fmt: skip
        data_input = _input(tree, where, factories)
        kind = tree.WhichOneof("tree_type")
        if kind is None:
            raise ConfigError(join_path(where, "tree_type"), "a match map is required")
        entries = getattr(tree, kind).map
        if not entries:
            raise ConfigError(join_path(where, f"{kind}.map"), "at least one entry is required")
        compiled = {
            key: _on_match(entries[key], join_path(where, f"{kind}.map['{key}']"), factories)
            for key in sorted(entries)
        }
        if kind == "exact_match_map":
            return _ExactMap(data_input, compiled, on_no_match)
        longest_first = tuple(sorted(compiled.items(), key=lambda item: -len(item[0])))
        return _PrefixMap(data_input, longest_first, on_no_match)
    raise ConfigError(join_path(path, "matcher_type"), "matcher_list or matcher_tree is required")


def _on_match(proto, path: str, factories: _Factories) -> _OnMatch:
    if proto.keep_matching:  # (Envoy's words: its RBAC filters refuse it too)
        raise ConfigError(
            join_path(path, "keep_matching"), "keep_matching is not supported in this context"
        )
    check_supported(proto, ("matcher", "action"), path, "OnMatch")
    which = proto.WhichOneof("on_match")
    if which == "matcher":
        return _OnMatch(None, _matcher(proto.matcher, join_path(path, "matcher"), factories))
    if which == "action":
        return _OnMatch(_action(proto.action, join_path(path, "action"), factories), None)
    raise ConfigError(join_path(path, "on_match"), "a matcher or an action is required")


def _input(holder, path: str, factories: _Factories) -> DataInput:
    """The compiled ``input`` of a MatcherTree or a SinglePredicate (``holder`` at ``path``)."""
    path = join_path(path, "input")
    if not holder.HasField("input"):
        raise ConfigError(path, "an input is required")
    supported = ", ".join(n.rpartition(".")[2] for n in factories.inputs)
    return _build(holder.input, path, factories.inputs, lambda url: (
        f"{factories.what} cannot match on '{url}' (inputs legatus offers it: {supported})"
    ))  # fmt: skip


def _action(extension, path: str, factories: _Factories) -> Any:
    expected = ", ".join(sorted(factories.actions))
    return _build(extension, path, factories.actions, lambda url: (
        f"{factories.what} cannot take the action '{url}' (expected {expected})"
    ))  # fmt: skip


def _build(extension, path: str, table: Mapping[str, Callable], refusal) -> Any:
    """What ``table``'s compiler for the type of a TypedExtensionConfig's ``typed_config``
    makes of it; ``refusal(type_url)`` says why a type the table lacks is refused."""
    where = join_path(path, "typed_config")
    if not extension.HasField("typed_config"):
        raise ConfigError(where, "a typed_config is required")
    url = extension.typed_config.type_url
    name = type_name(url)
    factory = table.get(name)
    if factory is None:
        raise ConfigError(where, refusal(url))
    cls = message_class(name)
    if cls is None:  # pragma: no cover - every table names generated types
        raise ConfigError(where, f"unknown proto type {name}")
    message = cls()
    extension.typed_config.Unpack(message)
    return factory(message, where)


def _predicate(proto, path: str, factories: _Factories) -> Callable[[Any], bool]:
    which = proto.WhichOneof("match_type")
    if which == "single_predicate":
        single = proto.single_predicate
        where = join_path(path, "single_predicate")
        check_supported(single, ("input", "value_match", "custom_match"), where,
                        "SinglePredicate")  # fmt: skip
        data_input = _input(single, where, factories)
        if single.HasField("custom_match"):
            known = ", ".join(sorted(factories.input_matchers)) or "none"
            matches = _build(single.custom_match, join_path(where, "custom_match"),
                             factories.input_matchers, lambda url: (
                f"input matcher '{url}' is not supported by legatus in the {factories.what} "
                f"matcher (supported: {known})"))  # fmt: skip
        elif single.HasField("value_match"):
            matches = StringMatcher(single.value_match, join_path(where, "value_match")).matches
        else:
            raise ConfigError(join_path(where, "matcher"), "a value_match is required")

        def single_predicate(data: Any) -> bool:
            value = data_input(data)
            return value is not None and matches(value)

        return single_predicate
    if which in ("or_matcher", "and_matcher"):
        where = join_path(path, which)
        listed = getattr(proto, which).predicate
        if len(listed) < 2:
            raise ConfigError(join_path(where, "predicate"), "at least two predicates are required")
        parts = tuple(
            _predicate(p, f"{where}.predicate[{i}]", factories) for i, p in enumerate(listed)
        )
        if which == "or_matcher":
            return lambda data: any(p(data) for p in parts)
        return lambda data: all(p(data) for p in parts)
    if which == "not_matcher":
        inner = _predicate(proto.not_matcher, join_path(path, "not_matcher"), factories)
        return lambda data: not inner(data)
    raise ConfigError(join_path(path, "match_type"), "a predicate is required")
