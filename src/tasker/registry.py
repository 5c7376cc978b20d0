"""Which templates exist: namespace / name / semantic version, with `default` namespace and latest
version.

The same name may live in two namespaces and several versions may coexist, so a running task keeps
the version it was created with while new tasks take the latest.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from tasker.domain.errors import TaskerInputError, UnknownTemplateError
from tasker.domain.templates import DEFAULT_NAMESPACE, SEMVER, TaskTemplate, semver_key


@dataclass(frozen=True)
class TemplateRef:
    namespace: str
    name: str
    version: str | None = None

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}" + (f"@{self.version}" if self.version else "")


def parse_ref(text: str, version: str | None = None) -> TemplateRef:
    """Parse `ns/name@1.2.3`, `ns/name` or `name` (namespace `default`); `version` overrides `@`."""
    if not text or not isinstance(text, str):
        raise TaskerInputError(
            "a template reference is required, like 'namespace/name' or 'namespace/name@1.0.0'"
        )
    ref, sep, at = text.strip().partition("@")
    if "/" in ref:
        namespace, _, name = ref.partition("/")
    else:
        namespace, name = DEFAULT_NAMESPACE, ref
    version = version or (at or None)
    if not namespace or not name or "/" in name or (sep and not at):
        raise TaskerInputError(
            f"'{text}' is not a template reference; fix: write 'namespace/name[@version]'"
        )
    if version is not None and not SEMVER.match(version):
        raise TaskerInputError(f"'{version}' is not a semantic version; fix: write it like 1.2.3")
    return TemplateRef(namespace, name, version)


class TemplateRegistry:
    """Thread-safe map of loaded templates. Registering the same key again replaces it (a
    reload)."""

    def __init__(self) -> None:
        self._by_name: dict[tuple[str, str], dict[str, TaskTemplate]] = {}
        self._lock = threading.Lock()

    def register(self, template: TaskTemplate) -> None:
        with self._lock:
            self._by_name.setdefault((template.namespace_name, template.name), {})[
                template.version
            ] = template

    def get(self, ref: str | TemplateRef, version: str | None = None) -> TaskTemplate:
        r = parse_ref(ref, version) if isinstance(ref, str) else ref
        if version and isinstance(ref, TemplateRef):
            r = TemplateRef(r.namespace, r.name, version)
        versions = self._by_name.get((r.namespace, r.name))
        if not versions:
            raise UnknownTemplateError(str(r), self.keys())
        if r.version is None:
            return versions[max(versions, key=semver_key)]
        try:
            return versions[r.version]
        except KeyError:
            known = [t.key for t in versions.values()]
            raise UnknownTemplateError(str(r), known) from None

    def versions(self, namespace: str, name: str) -> list[TaskTemplate]:
        versions = self._by_name.get((namespace, name), {})
        return [versions[v] for v in sorted(versions, key=semver_key)]

    def all(self) -> list[TaskTemplate]:
        out: list[TaskTemplate] = []
        for key in sorted(self._by_name):
            out.extend(self.versions(*key))
        return out

    def keys(self) -> list[str]:
        return [t.key for t in self.all()]

    def namespaces(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for ns, _ in self._by_name:
            counts[ns] = counts.get(ns, 0) + 1
        return dict(sorted(counts.items()))

    def __len__(self) -> int:
        return sum(len(v) for v in self._by_name.values())

    def __contains__(self, ref: object) -> bool:
        if not isinstance(ref, str):
            return False
        try:
            self.get(ref)
        except TaskerInputError:
            return False
        return True
