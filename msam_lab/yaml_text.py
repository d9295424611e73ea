"""YAML as config files and ``--set`` values are read: numbers as people write them, bounded size.

PyYAML follows YAML 1.1, where ``1e-5`` (no point, no signed exponent), ``1.5e3``, ``-.5`` and ``09``
are strings and ``010`` is octal 8. :class:`NumberLoader` (a SafeLoader subclass; the global
SafeLoader is left alone) reads numbers the YAML 1.2 / Python way instead: anything Python's
``int()`` reads as a decimal integer is an int (``010`` is 10, ``1_000`` is 1000) and ``1e-5``,
``1E-5``, ``.5``, ``5.``, ``-2e3``, ``+1.5``, ``1_000.5`` are floats equal to Python's ``float()`` of
the text. YAML 1.1's other forms stay (``0x1F``, ``0b101``, ``.inf``, ``.nan``, base 60 ``1:30``).
Words stay strings (``nan``, ``inf``, dataset names, ``fixed:image``).

:func:`read_number` applies the same rule to a string that reached a number field some other way
(a Python dict, a quoted YAML value), so every route reads a given text as the same number.

:func:`load` refuses, before anything is constructed or dumped, a document whose aliases expand to
more than :data:`MAX_VALUES` values (the "billion laughs" bomb: ~600 bytes that ``json.dumps``
expanded into gigabytes); :func:`expanded_size` counts that for YAML nodes and Python values alike.
"""

from __future__ import annotations

import re

import yaml

MAX_BYTES = 2**20  # a config file or --set value; real ones are a few KB
MAX_VALUES = 100_000  # values after alias expansion; real configs hold a few hundred

_DIGITS = r"[0-9][0-9_]*"  # YAML's underscores (Python's int()/float() accept single ones between digits)
_EXPONENT = rf"[eE][-+]?{_DIGITS}"
INT_PATTERN = re.compile(
    rf"""^(?:[-+]?{_DIGITS}              # decimal, leading zeros included
                              |[-+]?0b[0-1_]+|[-+]?0x[0-9a-fA-F_]+  # YAML 1.1 binary and hex
                              |[-+]?[1-9][0-9_]*(?::[0-5]?[0-9])+)$  # YAML 1.1 base 60
                              """,
    re.VERBOSE,
)
FLOAT_PATTERN = re.compile(
    rf"""^(?:[-+]?(?:{_DIGITS}\.[0-9_]*|\.{_DIGITS})(?:{_EXPONENT})?  # a point
                                |[-+]?{_DIGITS}{_EXPONENT}                             # an exponent
                                |[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+\.[0-9_]*            # base 60
                                |[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$""",
    re.VERBOSE,
)


class TooLarge(ValueError):
    """A document over :data:`MAX_BYTES` or whose aliases expand to more than :data:`MAX_VALUES` values."""


class NumberLoader(yaml.SafeLoader):
    """SafeLoader with the number rules of the module docstring."""

    def construct_yaml_int(self, node):
        text = self.construct_scalar(node).replace("_", "")
        digits = text.lstrip("+-")
        if len(digits) > 1 and digits[0] == "0" and digits.isdigit():
            return int(text)  # decimal as in YAML 1.2 and int(): 010 is 10, not octal 8
        return super().construct_yaml_int(node)


# the subclass's own copy of the resolvers, without YAML 1.1's int and float rules
NumberLoader.yaml_implicit_resolvers = {
    first: [
        (tag, regexp) for tag, regexp in resolvers if tag not in ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float")
    ]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
NumberLoader.add_implicit_resolver("tag:yaml.org,2002:int", INT_PATTERN, list("-+0123456789"))
NumberLoader.add_implicit_resolver("tag:yaml.org,2002:float", FLOAT_PATTERN, list("-+0123456789."))
NumberLoader.add_constructor("tag:yaml.org,2002:int", NumberLoader.construct_yaml_int)


def read_number(text: str) -> int | float | None:
    """The int or float a YAML value ``text`` means under :class:`NumberLoader`, else None (not a number)."""
    if not (INT_PATTERN.fullmatch(text) or FLOAT_PATTERN.fullmatch(text)):  # "5\n" too is no number
        return None
    try:
        return yaml.load(text, Loader=NumberLoader)  # a SafeLoader subclass: no arbitrary objects
    except ValueError:  # "._": matched, but no number; int() of over 4300 digits
        return None


def _node_children(node) -> list:
    if isinstance(node, yaml.SequenceNode):
        return node.value
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def _value_children(value) -> list:
    if isinstance(value, dict):
        return [*value.keys(), *value.values()]
    if isinstance(value, (list, tuple)):
        return list(value)
    return []


def expanded_size(root, limit: int = MAX_VALUES, children=_value_children) -> int:
    """Values in ``root`` with every shared container counted once per reference (what ``json.dumps``
    writes), memoised by identity: linear in the distinct containers. Counting stops past ``limit``
    (the result is then some number above it). A reference back to an enclosing container (a cycle)
    counts 1: the JSON check that follows names it."""
    sizes: dict[int, int] = {}
    open_ids: set[int] = set()
    stack = [(root, False)]
    while stack:
        item, closing = stack.pop()
        key = id(item)
        if closing:
            open_ids.discard(key)
            sizes[key] = 1 + sum(sizes.get(id(c), 1) for c in children(item))
            if sizes[key] > limit:
                return sizes[key]
        elif key not in sizes and key not in open_ids:
            kids = children(item)
            if kids:
                open_ids.add(key)
                stack.append((item, True))
                stack.extend((c, False) for c in kids)
    return sizes.get(id(root), 1)


def load(data: str | bytes, what: str):
    """The YAML document ``data`` under :class:`NumberLoader`, refused with :class:`TooLarge` (naming
    ``what``) above :data:`MAX_BYTES` or when its aliases expand past :data:`MAX_VALUES` values."""
    if len(data) > MAX_BYTES:
        raise TooLarge(f"{what} is larger than the limit of {MAX_BYTES // 2**20} MiB ({len(data):,} bytes or more)")
    loader = NumberLoader(data)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        if expanded_size(node, MAX_VALUES, _node_children) > MAX_VALUES:
            raise TooLarge(
                f"{what} expands to more than {MAX_VALUES:,} values through its YAML aliases "
                "(&name / *name); write the values out"
            )
        return loader.construct_document(node)
    finally:
        loader.dispose()
