#!/usr/bin/env python3
"""Fails when the files of a crate import each other in a circle.

Each `.rs` file of a crate is a node; `use crate::…`, `use super::…` and paths written out in
the code (`crate::room::Room`) are edges to the file that defines the longest module prefix of
the path. A module reaching into its own children (declaring them, re-exporting their names)
is not counted: it holds them. A strongly connected group of more than one file is a circle:
printed, and the exit status is 1. Test modules (`#[cfg(test)] mod …`) are left out.

Usage: scripts/module-cycles.py [CRATE_SRC_DIR ...]   (default: actors/src src)
"""

import re
import sys
from pathlib import Path

IDENT = r"[A-Za-z_][A-Za-z0-9_]*"


def module_of(root: Path, file: Path) -> tuple:
    rel = file.relative_to(root).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] in ("mod", "lib", "main"):
        parts = parts[:-1]
    return tuple(parts)


def strip_comments(text: str) -> str:
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    text = re.sub(r"//[^\n]*", "", text)
    # String literals could hold anything that looks like a path.
    return re.sub(r'"(?:\\.|[^"\\])*"', '""', text)


def expand(tree: str) -> list:
    """`a::{b, c::{d, e}}` -> [a::b, a::c::d, a::c::e] (as lists of segments)."""
    tree = tree.strip()
    if not tree:
        return []
    depth = 0
    for i, ch in enumerate(tree):
        if ch == "{":
            if depth == 0:
                head = tree[:i].rstrip(":").strip()
                close = matching(tree, i)
                inner = tree[i + 1 : close]
                out = []
                for item in split_top(inner):
                    for sub in expand(item):
                        out.append(segments(head) + sub)
                return out
            depth += 1
        elif ch == "}":
            depth -= 1
    path = re.split(r"\s+as\s+", tree)[0]
    return [segments(path)]


def segments(path: str) -> list:
    return [p for p in path.strip().split("::") if p]


def matching(text: str, open_at: int) -> int:
    depth = 0
    for i in range(open_at, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return i
    return len(text)


def split_top(text: str) -> list:
    items, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
        elif ch == "," and depth == 0:
            items.append(text[start:i])
            start = i + 1
    items.append(text[start:])
    return items


def paths_in(text: str) -> list:
    """Every module path the file names; a path that starts with one of the file's own child
    modules (`mod state;` then `state::RoomState`) is given as `self::…`."""
    children = set(re.findall(rf"\bmod\s+({IDENT})\s*;", text))
    found = []
    for m in re.finditer(r"\buse\s+([^;]+);", text):
        found.extend(expand(m.group(1)))
    body = re.sub(r"\buse\s+[^;]+;", "", text)
    starts = "|".join(["crate", "super", "self"] + sorted(children))
    for m in re.finditer(rf"(?<![:\w])((?:{starts})(?:::{IDENT})+)", body):
        found.append(segments(m.group(1)))
    return [["self"] + p if p and p[0] in children else p for p in found]


def resolve(path: list, here: tuple) -> tuple | None:
    if not path:
        return None
    if path[0] == "crate":
        return tuple(path[1:])
    if path[0] == "self":
        return tuple(list(here) + path[1:])
    if path[0] == "super":
        # In `a/b.rs` and in `a/b/mod.rs` alike, `super` is `a`.
        base, rest = list(here), path
        while rest and rest[0] == "super":
            base, rest = base[:-1], rest[1:]
        return tuple(base + rest)
    return None


def without_tests(text: str) -> str:
    """Drops `#[cfg(test)] mod … { … }`: tests may import what they like."""
    out, at = [], 0
    for m in re.finditer(r"#\[cfg\(test\)\]\s*(?:pub(?:\([^)]*\))?\s+)?mod\s+\w+\s*\{", text):
        if m.start() < at:
            continue
        out.append(text[at : m.start()])
        at = matching(text, m.end() - 1) + 1
    out.append(text[at:])
    return "".join(out)


def graph(root: Path) -> dict:
    files = {module_of(root, f): f for f in root.rglob("*.rs")}
    edges = {m: set() for m in files}
    for mod, file in files.items():
        for path in paths_in(without_tests(strip_comments(file.read_text()))):
            target = resolve(path, mod)
            if target is None:
                continue
            # The file that defines the longest prefix of the path.
            while target and target not in files:
                target = target[:-1]
            # A module holding its children (declaring them, re-exporting their names) is
            # containment, not a dependency: only the other direction counts.
            if target and target[: len(mod)] != mod:
                edges[mod].add(target)
    return edges


def cycles(edges: dict) -> list:
    """Tarjan's strongly connected components of more than one node."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                out.append(sorted(group))

    sys.setrecursionlimit(10000)
    for v in edges:
        if v not in index:
            visit(v)
    return out


def name(mod: tuple) -> str:
    return "::".join(mod) or "(crate root)"


def main() -> int:
    roots = [Path(a) for a in sys.argv[1:]] or [Path("actors/src"), Path("src")]
    failed = False
    for root in roots:
        edges = graph(root)
        for group in cycles(edges):
            failed = True
            inside = set(group)
            print(f"{root}: {len(group)} files import each other in a circle:")
            for mod in group:
                back = sorted(name(t) for t in edges[mod] if t in inside)
                print(f"  {name(mod)} -> {', '.join(back)}")
    if not failed:
        print("no import circles in " + ", ".join(str(r) for r in roots))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
