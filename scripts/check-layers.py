#!/usr/bin/env python3
"""Fails (exit 1) when a workspace crate has an import cycle between its top-level modules.

A crate's top-level module is the first path segment under its src/ (`src/engine.rs`,
`src/guardrail/rules.rs` -> `guardrail`); the crate roots (lib.rs, main.rs) and src/bin/ are not
modules (binaries are crates of their own and reach the library only by its name). An edge
A -> B is a reference from a file of A to B:

  * `use crate::B...`, grouped ones included (`use crate::{b::X, c}`), and any `crate::B::` path
    in code;
  * `crate::Name` where the crate root re-exports Name from B (`pub use b::Name;` in lib.rs);
  * `super::` and `self::` paths, resolved against the file's module path (inline `mod x { }`
    blocks counted), when they land outside A.

Comments and string literals are skipped. Data is meant to flow one way (see
/work/shared/STYLE.md, "Data flows one way"), so any cycle is an error.

  scripts/check-layers.py              # every workspace member
  scripts/check-layers.py -v policy    # one crate, printing its module graph
  scripts/check-layers.py --self-test  # the checker's own tests (scripts/tests/)
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from collections import defaultdict, deque
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_CRATES = ["proto", "common", "policy", "agent", "coordinator", "autohealctl", "tests"]
ROOT_FILES = {"lib.rs", "main.rs"}

IDENT = r"(?:r#)?[A-Za-z_][A-Za-z0-9_]*"


# --- lexing -------------------------------------------------------------------------------------


def strip_code(text: str) -> str:
    """The source with comments, string and char literals blanked (newlines kept for line
    numbers), so paths inside them are not read as references."""
    out = []
    i, n = 0, len(text)

    def blank(s: str) -> str:
        return "".join("\n" if c == "\n" else " " for c in s)

    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            j = n if j < 0 else j
            out.append(blank(text[i:j]))
            i = j
        elif text.startswith("/*", i):
            depth, j = 1, i + 2
            while j < n and depth:
                if text.startswith("/*", j):
                    depth, j = depth + 1, j + 2
                elif text.startswith("*/", j):
                    depth, j = depth - 1, j + 2
                else:
                    j += 1
            out.append(blank(text[i:j]))
            i = j
        elif (m := re.compile(r'b?r(#*)"').match(text, i)) and (
            i == 0 or not (text[i - 1].isalnum() or text[i - 1] == "_")
        ):
            end = '"' + m.group(1)
            j = text.find(end, m.end())
            j = n if j < 0 else j + len(end)
            out.append(blank(text[i:j]))
            i = j
        elif c == '"' or (c == "b" and text.startswith('b"', i)
                          and (i == 0 or not (text[i - 1].isalnum() or text[i - 1] == "_"))):
            j = i + (2 if c == "b" else 1)
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            j = min(j + 1, n)
            out.append(blank(text[i:j]))
            i = j
        elif c == "'":
            # A char literal ('a', '\n', '\u{1F600}'), not a lifetime ('a, 'static).
            m = re.compile(r"'(?:\\(?:u\{[0-9A-Fa-f]+\}|x[0-9A-Fa-f]{2}|.)|[^\\'\n])'").match(text, i)
            if m:
                out.append(blank(m.group(0)))
                i = m.end()
            else:
                out.append(c)
                i += 1
        else:
            out.append(c)
            i += 1
    return "".join(out)


# --- paths --------------------------------------------------------------------------------------

PATH_START = re.compile(r"(?<![\w$:])(crate|super|self)\s*::")
SEG_SEP = re.compile(r"\s*::\s*")


def parse_group(code: str, i: int) -> tuple[list[list[str]], int]:
    """Parses a use group starting at code[i] == '{'; returns the paths it names (each as its
    segments, nested groups flattened) and the index after the closing brace."""
    assert code[i] == "{"
    paths: list[list[str]] = []
    i += 1
    while i < len(code):
        m = re.compile(r"\s*").match(code, i)
        i = m.end()
        if i >= len(code):
            break
        if code[i] == "}":
            return paths, i + 1
        if code[i] == ",":
            i += 1
            continue
        sub, i = parse_tree(code, i)
        paths.extend(sub)
    return paths, i


def parse_tree(code: str, i: int) -> tuple[list[list[str]], int]:
    """Parses a use tree (`a::b::{c, d::e}`, `a as b`, `*`) at code[i]."""
    segs: list[str] = []
    while True:
        m = re.compile(r"\s*").match(code, i)
        i = m.end()
        if i < len(code) and code[i] == "{":
            inner, i = parse_group(code, i)
            return ([segs + p for p in inner] or [segs]), i
        if i < len(code) and code[i] == "*":
            return [segs + ["*"]], i + 1
        m = re.compile(IDENT).match(code, i)
        if not m:
            return ([segs] if segs else []), i
        segs.append(m.group(0).removeprefix("r#"))
        i = m.end()
        m = SEG_SEP.match(code, i)
        if m and m.end() > i and code[i:m.end()].strip() == "::":
            i = m.end()
            continue
        m = re.compile(r"\s+as\s+" + IDENT).match(code, i)
        if m:
            i = m.end()
        return [segs], i


def references(code: str) -> list[tuple[int, str, list[str]]]:
    """Every `crate::`/`super::`/`self::` path in stripped code: (offset, kind, segments after
    the leading keyword and any further `super`s, which are kept as segments)."""
    refs = []
    for m in PATH_START.finditer(code):
        kind = m.group(1)
        trees, _ = parse_tree(code, m.end())
        for segs in trees:
            refs.append((m.start(), kind, segs))
    return refs


MOD_DECL = re.compile(r"(?<![\w])mod\s+(" + IDENT + r")\s*([;{])")
CFG_TEST_BEFORE = re.compile(r"#\[\s*cfg\s*\(\s*test\s*\)\s*\]\s*(?:#\[[^\]]*\]\s*)*(?:pub(?:\s*\([^)]*\))?\s+)?$")


def is_cfg_test(code: str, mod_start: int) -> bool:
    """Whether the `mod` at mod_start carries `#[cfg(test)]`."""
    return bool(CFG_TEST_BEFORE.search(code[max(0, mod_start - 300):mod_start]))


def inline_modules(code: str) -> list[tuple[int, int, str, bool]]:
    """`mod name { ... }` blocks: (start, end, name, under #[cfg(test)]) by offset in stripped
    code."""
    blocks = []
    for m in MOD_DECL.finditer(code):
        if m.group(2) != "{":
            continue
        depth, j = 1, m.end()
        while j < len(code) and depth:
            if code[j] == "{":
                depth += 1
            elif code[j] == "}":
                depth -= 1
            j += 1
        blocks.append((m.start(), j, m.group(1).removeprefix("r#"), is_cfg_test(code, m.start())))
    return blocks


def test_files(code: str) -> set[str]:
    """Modules this file declares as `#[cfg(test)] mod name;` (their files are test code)."""
    return {m.group(1).removeprefix("r#") for m in MOD_DECL.finditer(code)
            if m.group(2) == ";" and is_cfg_test(code, m.start())}


# --- crates -------------------------------------------------------------------------------------


@dataclass
class Edge:
    where: str
    path: str
    test: bool = False


@dataclass
class Graph:
    crate: str
    modules: set[str] = field(default_factory=set)
    # (from, to) -> every reference that makes the edge
    edges: dict[tuple[str, str], list[Edge]] = field(default_factory=lambda: defaultdict(list))


def declared_mods(code: str) -> set[str]:
    return {m.group(1).removeprefix("r#") for m in MOD_DECL.finditer(code)}


def root_reexports(code: str, modules: set[str]) -> dict[str, str]:
    """Names the crate root re-exports from a module: `pub use engine::Engine;` -> Engine: engine."""
    names = {}
    for m in re.finditer(r"(?<![\w])pub(?:\s*\([^)]*\))?\s+use\s+", code):
        for segs in parse_tree(code, m.end())[0]:
            if segs and segs[0] == "crate":
                segs = segs[1:]
            if len(segs) >= 2 and segs[0] in modules and segs[-1] != "*":
                names[segs[-1]] = segs[0]
    return names


def module_path(rel: Path) -> list[str]:
    """src-relative file -> its module path: engine.rs -> [engine], guardrail/mod.rs ->
    [guardrail], guardrail/rules.rs -> [guardrail, rules]."""
    parts = list(rel.with_suffix("").parts)
    if parts[-1] == "mod":
        parts.pop()
    return parts


def analyse(crate_dir: Path, name: str | None = None) -> Graph:
    src = crate_dir / "src"
    graph = Graph(name or crate_dir.name)
    roots = [src / f for f in sorted(ROOT_FILES) if (src / f).is_file()]
    root_code = {r.name: strip_code(r.read_text(errors="replace")) for r in roots}
    files = [p for p in sorted(src.rglob("*.rs"))
             if p.relative_to(src).parts[0] != "bin"
             and not (p.parent == src and p.name in ROOT_FILES)]
    modules = {module_path(p.relative_to(src))[0] for p in files}
    # A crate with a library and a main.rs: modules only main.rs declares belong to the binary.
    if "lib.rs" in root_code and "main.rs" in root_code:
        bin_only = declared_mods(root_code["main.rs"]) - declared_mods(root_code["lib.rs"])
        modules -= bin_only
        files = [p for p in files if module_path(p.relative_to(src))[0] not in bin_only]
    root_name = "lib.rs" if "lib.rs" in root_code else "main.rs"
    root = root_code.get(root_name, "")
    # Modules written inline in the root (`pub mod fake { ... }`) are top-level modules too.
    modules |= {name for start, _, name, _ in inline_modules(root)
                if not any(o[0] < start < o[1] for o in inline_modules(root))}
    graph.modules = modules
    reexports = root_reexports(root, modules)

    # (file label, module path of the file, stripped code); the root's module path is empty, and
    # only what sits in its inline modules counts.
    units = [(f"{crate_dir.name}/src/{p.relative_to(src)}", module_path(p.relative_to(src)),
              strip_code(p.read_text(errors="replace"))) for p in files]
    if root:
        units.append((f"{crate_dir.name}/src/{root_name}", [], root))
    # Files that are test code: declared `#[cfg(test)] mod x;` by the file of their parent.
    declares_tests = {tuple(path): test_files(code) for _, path, code in units}
    test_prefixes = {tuple(path) + (name,) for path, names in declares_tests.items() for name in names}

    for label, base_path, code in units:
        blocks = inline_modules(code)
        file_is_test = any(tuple(base_path[:k]) in test_prefixes for k in range(1, len(base_path) + 1))
        for offset, kind, segs in references(code):
            if not segs:
                continue
            # The module the reference sits in, inline blocks included.
            inner = sorted(b for b in blocks if b[0] < offset < b[1])
            mod_path = base_path + [b[2] for b in inner]
            in_test = file_is_test or any(b[3] for b in inner)
            if not mod_path:
                continue
            here = mod_path[0]
            if kind == "crate":
                target = list(segs)
            else:
                target = list(mod_path) if kind == "self" else list(mod_path[:-1])
                rest = list(segs)
                while rest and rest[0] == "super" and target:
                    target.pop()
                    rest.pop(0)
                target += rest
            if not target or target[0] in ("super", "self", "*"):
                continue
            top = target[0] if target[0] in modules else reexports.get(target[0])
            if top is None or top == here:
                continue
            line = code.count("\n", 0, offset) + 1
            graph.edges[(here, top)].append(
                Edge(f"{label}:{line}", f"{kind}::{'::'.join(segs)}", in_test))
    return graph


# --- cycles -------------------------------------------------------------------------------------


def strongly_connected(nodes: set[str], succ: dict[str, set[str]]) -> list[list[str]]:
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(succ.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(max(1000, 10 * len(nodes)))
    for v in sorted(nodes):
        if v not in index:
            visit(v)
    return sorted(out)


def shortest_path(succ: dict[str, set[str]], start: str, goal: str, within: set[str]) -> list[str]:
    prev = {start: None}
    q = deque([start])
    while q:
        v = q.popleft()
        if v == goal:
            path = []
            while v is not None:
                path.append(v)
                v = prev[v]
            return path[::-1]
        for w in sorted(succ.get(v, ())):
            if w in within and w not in prev:
                prev[w] = v
                q.append(w)
    return []


def cycles(graph: Graph, with_tests: bool = True) -> list[list[str]]:
    """A small set of cycles covering every edge inside each strongly connected component, each
    as [a, b, ..., a], rotated to start at its smallest module. `with_tests=False`: only edges
    that non-test code makes."""
    succ: dict[str, set[str]] = defaultdict(set)
    for (a, b), refs in graph.edges.items():
        if with_tests or any(not e.test for e in refs):
            succ[a].add(b)
    found: list[list[str]] = []
    seen: set[tuple[str, ...]] = set()
    for comp in strongly_connected(graph.modules, succ):
        members = set(comp)
        for a in comp:
            for b in sorted(succ[a] & members):
                back = shortest_path(succ, b, a, members)
                cyc = [a] + back  # a -> b ... -> a
                ring = cyc[:-1]
                k = ring.index(min(ring))
                ring = ring[k:] + ring[:k]
                key = tuple(ring)
                if key not in seen:
                    seen.add(key)
                    found.append(ring + [ring[0]])
    return sorted(found, key=lambda c: (len(c), c))


# --- main ---------------------------------------------------------------------------------------


def workspace_crates(root: Path) -> list[str]:
    manifest = root / "Cargo.toml"
    members: list[str] = []
    if manifest.is_file():
        members = tomllib.loads(manifest.read_text()).get("workspace", {}).get("members", [])
    names = list(dict.fromkeys(members + DEFAULT_CRATES))
    return [m for m in names if (root / m / "src").is_dir()]


def run(root: Path, crates: list[str], verbose: bool, with_tests: bool = True,
        out=sys.stdout) -> int:
    failed = False
    for crate in crates:
        graph = analyse(root / crate, crate)
        found = cycles(graph, with_tests)
        outside_tests = {tuple(c) for c in cycles(graph, with_tests=False)}
        if verbose:
            print(f"{crate}: {len(graph.modules)} modules, {len(graph.edges)} edges", file=out)
            for (a, b), refs in sorted(graph.edges.items()):
                tests = sum(e.test for e in refs)
                note = f", {tests} in test code" if tests else ""
                print(f"  {a} -> {b}  ({len(refs)}x{note}, first {refs[0].where} {refs[0].path})",
                      file=out)
        for cyc in found:
            failed = True
            note = "" if tuple(cyc) in outside_tests else " (only through test code)"
            print(f"{crate}: import cycle: {' -> '.join(cyc)}{note}", file=out)
            if verbose:
                for a, b in zip(cyc, cyc[1:]):
                    refs = [e for e in graph.edges[(a, b)] if with_tests or not e.test]
                    refs.sort(key=lambda e: e.test)
                    for e in refs[:3]:
                        tag = " (test)" if e.test else ""
                        print(f"    {a} -> {b}: {e.where} {e.path}{tag}", file=out)
        if not found:
            print(f"{crate}: no import cycle between top-level modules", file=out)
    return 1 if failed else 0


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("crates", nargs="*", help="crate directories (default: every workspace member)")
    ap.add_argument("-v", "--verbose", action="store_true", help="print each crate's module graph")
    ap.add_argument("--root", type=Path, default=Path(__file__).resolve().parent.parent,
                    help="workspace root (default: this script's repository)")
    ap.add_argument("--ignore-tests", action="store_true",
                    help="leave out references from #[cfg(test)] code")
    ap.add_argument("--self-test", action="store_true", help="run the checker's own tests")
    args = ap.parse_args(argv)
    if args.self_test:
        import unittest

        here = Path(__file__).resolve().parent
        suite = unittest.defaultTestLoader.discover(str(here / "tests"), pattern="test_check_layers.py",
                                                    top_level_dir=str(here / "tests"))
        return 0 if unittest.TextTestRunner(verbosity=2).run(suite).wasSuccessful() else 1
    crates = args.crates or workspace_crates(args.root)
    missing = [c for c in crates if not (args.root / c / "src").is_dir()]
    if missing:
        print(f"no such crate: {', '.join(missing)} (looked under {args.root})", file=sys.stderr)
        return 2
    return run(args.root, crates, args.verbose, with_tests=not args.ignore_tests)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
