"""Import-graph helpers shared by the structure tests of `probes/` and `diagnose/`."""

from __future__ import annotations


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import circle in `edges` (module -> modules it imports) as the list of its modules,
    first module repeated at the end, or None."""
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> list[str] | None:
        if module in path:
            return path[path.index(module):] + [module]
        if module in done:
            return None
        for imported in sorted(edges.get(module, ())):
            found = visit(imported, path + [module])
            if found:
                return found
        done.add(module)
        return None

    for module in sorted(edges):
        found = visit(module, [])
        if found:
            return found
    return None
