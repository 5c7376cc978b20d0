"""YAML parsing for templates that cannot be made to burn minutes, gigabytes or the Python stack.

PyYAML's composer shares one node for every use of an alias, so a "billion laughs" file of a few
hundred bytes parses quickly, then expands exponentially in everything that copies it (environment
merging, validation, the snapshot's JSON). Aliases are therefore allowed only while the copies they
make stay small: the nodes repeated through aliases may total at most `MAX_ALIAS_NODES`. A recursive
alias (a node that contains itself) has no JSON form and is refused, and nesting is capped at
`MAX_DEPTH` levels so that the recursive composer (and every later walk) stays far from Python's
recursion limit.
"""

from __future__ import annotations

from typing import Any

import yaml
from yaml.events import AliasEvent, CollectionStartEvent, NodeEvent
from yaml.nodes import MappingNode, Node, SequenceNode

#: Nodes that aliases may repeat in one document, all uses together (a template writes them once).
MAX_ALIAS_NODES = 10_000
#: Nesting levels of mappings and lists in a template file.
MAX_DEPTH = 64


class TemplateYamlError(yaml.MarkedYAMLError):
    """A file that is valid YAML but refused as a template; `problem_mark` says where, `note` the
    fix."""


class BoundedSafeLoader(yaml.SafeLoader):
    """`yaml.SafeLoader` that bounds what aliases expand to and how deep the document nests."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._alias_nodes = 0
        self._depth = 0
        self._open_anchors: set[str] = set()
        self._sizes: dict[int, int] = {}

    def compose_node(self, parent: Node | None, index: Any) -> Node | None:
        event: Any = self.peek_event()  # type: ignore[no-untyped-call]
        if isinstance(event, AliasEvent):
            self._count_alias(event)
            return super().compose_node(parent, index)
        anchor = event.anchor if isinstance(event, NodeEvent) else None
        nests = isinstance(event, CollectionStartEvent)
        if nests:
            self._depth += 1
            if self._depth > MAX_DEPTH:
                raise TemplateYamlError(
                    problem=f"nested more than {MAX_DEPTH} levels deep",
                    problem_mark=event.start_mark,
                    note="flatten the value",
                )
        if anchor:
            self._open_anchors.add(anchor)
        try:
            return super().compose_node(parent, index)
        finally:
            if anchor:
                self._open_anchors.discard(anchor)
            if nests:
                self._depth -= 1

    def _count_alias(self, event: Any) -> None:
        anchor = event.anchor
        if anchor in self._open_anchors:
            raise TemplateYamlError(
                problem=f"alias *{anchor} is used inside the value it names (a recursive alias)",
                problem_mark=event.start_mark,
                note="a template holds plain data: write the value out",
            )
        node = self.anchors.get(anchor)
        if node is None:
            return  # PyYAML itself reports the undefined alias, with its line
        self._alias_nodes += expanded_size(node, self._sizes)
        if self._alias_nodes > MAX_ALIAS_NODES:
            raise TemplateYamlError(
                problem=(
                    f"aliases expand to more than {MAX_ALIAS_NODES} repeated YAML nodes "
                    f"(alias *{anchor})"
                ),
                problem_mark=event.start_mark,
                note="write the values out, or share smaller values through anchors and aliases",
            )


def expanded_size(node: Node, memo: dict[int, int]) -> int:
    """How many nodes `node` stands for once every alias inside it is copied out.

    Iterative post-order walk with a memo keyed by node identity: an alias is the same node object
    as its anchor, so shared sub-trees are measured once and the walk stays linear in the written
    file. Only called on complete nodes (the composer refuses recursive aliases first), so it
    terminates.
    """
    stack: list[tuple[Node, bool]] = [(node, False)]
    while stack:
        current, children_done = stack.pop()
        if id(current) in memo:
            continue
        kids = _children(current)
        if children_done or not kids:
            memo[id(current)] = 1 + sum(memo[id(k)] for k in kids)
            continue
        stack.append((current, True))
        stack.extend((k, False) for k in kids if id(k) not in memo)
    return memo[id(node)]


def _children(node: Node) -> list[Node]:
    if isinstance(node, MappingNode):
        return [n for pair in node.value for n in pair]
    if isinstance(node, SequenceNode):
        return list(node.value)
    return []


def load(text: str) -> Any:
    """The single document in `text`, like `yaml.safe_load`, within the bounds above."""
    loader = BoundedSafeLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()
