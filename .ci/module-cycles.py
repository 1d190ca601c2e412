#!/usr/bin/env python3
"""Fails if modules of any workspace crate import each other in a circle.

For every crate's `src/`, each file is a module (`a/b.rs` and `a/b/mod.rs` are `a::b`). A path
written in the code (`crate::a::b`, `super::c`, `self::d`, inside `use` groups too) makes an
edge from the module that writes it to the deepest module the path names. Edges are projected
onto siblings (`a::b::x -> a::c::y` is `b -> c` under `a`), and every strongly connected group
of siblings is reported. A module using its parent (`super::Item` defined in `mod.rs`) is not
a sibling edge. Test code (`#[cfg(test)]` modules) is skipped: tests may import anything.

Usage: python3 .ci/module-cycles.py [crate-dir ...]   (default: every member of the workspace)
"""

import pathlib
import re
import sys
import tomllib

ROOT = pathlib.Path(__file__).resolve().parent.parent


def crates():
    members = tomllib.loads((ROOT / "Cargo.toml").read_text())["workspace"]["members"]
    return [ROOT / m for m in members]


def module_of(src, path):
    parts = list(path.relative_to(src).with_suffix("").parts)
    if parts[-1] in ("mod", "lib", "main"):
        parts = parts[:-1]
    return tuple(parts)


def strip_tests(text):
    """Drops `#[cfg(test)]`-gated items (a module or a single item) and comments."""
    text = re.sub(r"//[^\n]*", "", text)
    out, i = [], 0
    for m in re.finditer(r"#\[cfg\(test\)\]\s*(?:pub(?:\([^)]*\))?\s+)?(?:mod|use|fn|impl)\b", text):
        if m.start() < i:
            continue
        out.append(text[i : m.start()])
        j = m.end()
        # Skip to the end of the item: a `;` before any `{`, or the matching `}`.
        depth = 0
        while j < len(text):
            c = text[j]
            if c == ";" and depth == 0:
                j += 1
                break
            if c == "{":
                depth += 1
            elif c == "}":
                depth -= 1
                if depth == 0:
                    j += 1
                    break
            j += 1
        i = j
    out.append(text[i:])
    return "".join(out)


def expand_use(path, rest):
    """`a::{b, c::{d, e}}` -> [a::b, a::c::d, a::c::e] (only the module-path prefixes matter)."""
    if not rest.startswith("{"):
        return [path]
    depth, start, items = 0, 1, []
    for k, c in enumerate(rest):
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                items.append(rest[start:k])
                break
        elif c == "," and depth == 1:
            items.append(rest[start:k])
            start = k + 1
    paths = []
    for item in items:
        item = item.strip()
        if not item:
            continue
        m = re.match(r"([A-Za-z_][A-Za-z0-9_]*(?:::[A-Za-z_][A-Za-z0-9_]*)*)(::)?(.*)", item, re.S)
        if not m:
            continue
        sub = path + "::" + m.group(1)
        if m.group(2) and m.group(3).lstrip().startswith("{"):
            paths += expand_use(sub, m.group(3).lstrip())
        else:
            paths.append(sub)
    return paths


def references(text):
    for m in re.finditer(
        r"\b((?:crate|super|self)(?:::(?:super|[A-Za-z_][A-Za-z0-9_]*))*)::(\{)?", text
    ):
        path = m.group(1)
        if m.group(2):
            yield from expand_use(path, text[m.end() - 1 :])
        else:
            yield path


def reexports(module, text, modules):
    """`pub use a::b::{C, d::E}` in `module`: {"C": module of a::b, "E": module of a::b::d}."""
    names = {}
    for m in re.finditer(r"\bpub(?:\([^)]*\))?\s+use\s+([^;]+);", text):
        body = m.group(1).strip()
        head = re.match(r"((?:[A-Za-z_][A-Za-z0-9_]*::)*)(\{.*\}|[A-Za-z_][A-Za-z0-9_]*|\*)$", body, re.S)
        if not head:
            continue
        prefix = head.group(1).rstrip(":") or "self"
        if not re.match(r"(crate|super|self)\b", prefix):
            prefix = "self::" + prefix
        leaf = head.group(2)
        if leaf == "*":
            names.setdefault("*", []).append(resolve(module, prefix, modules, {}))
            continue
        paths = expand_use(prefix, leaf) if leaf.startswith("{") else [prefix + "::" + leaf]
        for path in paths:
            name = path.rsplit("::", 1)[-1]
            names[name] = resolve(module, path.rsplit("::", 1)[0], modules, {})
    return names


def resolve(module, path, modules, exported):
    parts = path.split("::")
    if parts[0] == "crate":
        base, parts = (), parts[1:]
    else:
        base = module
        while parts and parts[0] in ("self", "super"):
            if parts[0] == "super":
                base = base[:-1]
            parts = parts[1:]
    target = base
    for p in parts:
        if target + (p,) in modules:
            target = target + (p,)
        else:
            # An item re-exported here (`crate::Error`) belongs to the module that defines it.
            return exported.get((target, p), target)
    return target


def cycles(crate):
    src = crate / "src"
    if not src.is_dir():
        return []
    files = {module_of(src, f): f for f in src.rglob("*.rs")}
    # A file that is a directory module's child declared inline is not a separate file; fine.
    modules = set(files)
    texts = {module: strip_tests(f.read_text()) for module, f in files.items()}
    exported = {}
    globs = {}
    for module, text in texts.items():
        for name, target in reexports(module, text, modules).items():
            if name == "*":
                globs[module] = target
            elif target != module:
                exported[(module, name)] = target
    # `pub use model::*`: every item `model` defines or re-exports is reachable from here.
    defined = re.compile(r"\bpub\s+(?:struct|enum|trait|type|fn|const|static|mod)\s+([A-Za-z_][A-Za-z0-9_]*)")
    for module, targets in globs.items():
        for target in targets:
            for name in defined.findall(texts.get(target, "")):
                exported.setdefault((module, name), target)
            for (m, name), t in list(exported.items()):
                if m == target:
                    exported.setdefault((module, name), t)
    edges = {}
    for module, f in files.items():
        # `mod.rs`-less files: a submodule file's `super` is its parent directory's module.
        for path in references(texts[module]):
            target = resolve(module, path, modules, exported)
            a, b = module, target
            common = 0
            while common < min(len(a), len(b)) and a[common] == b[common]:
                common += 1
            if common == len(a) or common == len(b):
                continue  # same module, or an ancestor/descendant
            parent = a[:common]
            edges.setdefault(parent, {}).setdefault(a[common], set()).add(b[common])
    found = []
    for parent, graph in edges.items():
        for scc in strongly_connected(graph):
            if len(scc) > 1:
                found.append((parent, sorted(scc), graph))
    return found


def strongly_connected(graph):
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]
    nodes = set(graph) | {b for bs in graph.values() for b in bs}

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            scc = set()
            while True:
                w = stack.pop()
                on.discard(w)
                scc.add(w)
                if w == v:
                    break
            out.append(scc)

    sys.setrecursionlimit(10000)
    for v in sorted(nodes):
        if v not in index:
            visit(v)
    return out


def main():
    dirs = [pathlib.Path(a).resolve() for a in sys.argv[1:]] or crates()
    bad = 0
    for crate in dirs:
        for parent, scc, graph in cycles(crate):
            bad += 1
            where = "::".join(("crate",) + parent)
            print(f"{crate.name}: modules under {where} import each other in a circle:")
            for a in scc:
                print(f"  {a} -> {', '.join(sorted(b for b in graph.get(a, ()) if b in scc))}")
    if bad:
        sys.exit(1)
    print(f"no module cycles in {len(dirs)} crates")


if __name__ == "__main__":
    main()
