#!/usr/bin/env python3
"""The house rules of the workspace, checked (CI runs this; standard library only).

1. No import circle between the files of a crate. A file imports another
   when it names an item of that file's module (`use crate::a::b`,
   `crate::a::b::f()`, `super::x`, `sluice::a` from the crate's binary).
   Declaring a child module (`mod x;`) and re-exporting it (`pub use x::Y;`)
   make a facade, not a dependency, and `#[cfg(test)] mod tests` blocks
   are left out. A circle inside one small module is allowed only when it
   is listed in ALLOWED_CIRCLES with the reason.
2. No source file over 600 lines.
3. No library crate depends on clap or indicatif (only binaries parse
   flags and draw progress).

Usage: python3 .ci/house.py [--graph]   (--graph prints every crate's edges)
"""
import json
import os
import re
import subprocess
import sys

MAX_LINES = 600

# Circles inside one small module, each with why it is allowed.
ALLOWED_CIRCLES = {
    ("sluice-outbox", ("batches", "counters", "damage", "records", "set_aside")):
        "one SQLite transaction spans these tables; each file owns one table's "
        "statements, and an operation on one must change the others in the same "
        "transaction (dropping a record dissolves its batch, a refused record is "
        "set aside and counted, a damaged row is set aside where it is read)",
    ("sluice-plugin", ("bindings", "nn", "sandbox")):
        "wasmtime's bindgen! maps the WIT resources to the host types of nn.rs "
        "(`with:`), which hold the generated enums; the instance state of "
        "sandbox.rs holds the wasi:nn context whose host traits nn.rs implements "
        "for that state (the pattern of wasmtime-wasi)",
}

# What only binaries may depend on.
BINARY_ONLY = ("clap", "indicatif")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def workspace():
    meta = json.loads(subprocess.check_output(
        ["cargo", "metadata", "--no-deps", "--format-version", "1"], cwd=ROOT))
    return meta["packages"]


def module_files(src_root):
    """Map module paths (tuples) to files, from a crate root file."""
    files = {}

    def walk(path, module):
        files[module] = path
        text = read(path)
        base = os.path.dirname(path)
        if not (path.endswith("mod.rs") or path.endswith("lib.rs") or path.endswith("main.rs")):
            base = os.path.join(base, os.path.splitext(os.path.basename(path))[0])
        for m in re.finditer(r'^\s*(?:#\[path\s*=\s*"([^"]+)"\]\s*)?(?:pub(?:\([^)]*\))?\s+)?mod\s+([a-z_0-9]+)\s*;', text, re.M):
            explicit, name = m.group(1), m.group(2)
            if explicit:
                child = os.path.join(os.path.dirname(path), explicit)
            else:
                child = os.path.join(base, name + ".rs")
                if not os.path.exists(child):
                    child = os.path.join(base, name, "mod.rs")
            if os.path.exists(child):
                walk(child, module + (name,))

    walk(src_root, ())
    return files


def read(path):
    with open(path, encoding="utf-8") as f:
        text = f.read()
    # Leave out test modules at the end of a file.
    cut = re.search(r'^#\[cfg\(test\)\]\s*\n\s*mod\s+\w+\s*\{', text, re.M)
    return text[:cut.start()] if cut else text


def strip_comments(text):
    text = re.sub(r'//[^\n]*', '', text)
    return re.sub(r'"(?:\\.|[^"\\])*"', '""', text)


def resolve(files, path):
    """The file of the longest module prefix of `path` (a tuple)."""
    for n in range(len(path), -1, -1):
        if path[:n] in files:
            return path[:n]
    return None


def uses(text):
    """Every path a file names: expanded `use` trees and inline paths."""
    out = []
    for m in re.finditer(r'\buse\s+([^;]+);', text):
        out.extend(p.partition("@")[0] for p in expand(m.group(1)))
    for m in re.finditer(r'\b((?:crate|super|self)(?:::[A-Za-z_][A-Za-z_0-9]*)+)', text):
        out.append(m.group(1))
    return out


def expand(tree):
    """A `use` tree as its paths; `a as b` kept as `a@b`."""
    tree = re.sub(r'\s+as\s+', '@', tree)
    tree = re.sub(r'\s+', '', tree)
    if "{" not in tree:
        return [tree]
    i = tree.index("{")
    prefix, inner = tree[:i], tree[i + 1:tree.rindex("}")]
    parts, depth, cur = [], 0, ""
    for ch in inner:
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
            continue
        depth += ch == "{"
        depth -= ch == "}"
        cur += ch
    parts.append(cur)
    out = []
    for p in parts:
        if p in ("", "self"):
            out.append(prefix.rstrip(":"))
        else:
            out.extend(expand(prefix + p))
    return out


def absolute(module, p, crate_aliases):
    """Path `p` named in `module` as a module path from the crate root, or
    None for another crate's."""
    parts = p.split("::")
    if parts[0] in crate_aliases or parts[0] == "crate":
        return tuple(parts[1:])
    if parts[0] == "super":
        base, rest = module[:-1], parts[1:]
        while rest and rest[0] == "super":
            base, rest = base[:-1], rest[1:]
        return base + tuple(rest)
    if parts[0] == "self":
        return module + tuple(parts[1:])
    return None


def reexports_of(files, crate_aliases):
    """For each module, the names it re-exports: name -> absolute path (or
    None when from another crate)."""
    out = {}
    for module, path in files.items():
        names = {}
        text = strip_comments(read(path))
        for m in re.finditer(r'\bpub(?:\([^)]*\))?\s+use\s+([^;]+);', text):
            for p in expand(m.group(1)):
                p, _, alias = p.partition("@")
                last = alias or p.split("::")[-1]
                target = absolute(module, p, crate_aliases)
                if target is None and p.split("::")[0] in [c[0] for c in files if c]:
                    target = tuple(p.split("::"))
                names[last] = target
        out[module] = names
    return out


def graph(files, crate_aliases):
    edges = {m: set() for m in files}
    reexports = reexports_of(files, crate_aliases)
    for module, path in files.items():
        text = strip_comments(read(path))
        facade = set()
        for m in re.finditer(r'\bpub(?:\([^)]*\))?\s+use\s+([^;]+);', text):
            facade.update(p.partition("@")[0] for p in expand(m.group(1)))
        for p in uses(text):
            if p in facade:
                continue
            target = absolute(module, p, crate_aliases)
            for _ in range(8):
                if target is None:
                    break
                found = resolve(files, target)
                rest = target[len(found):] if found is not None else ()
                # Through a re-export: to where the item really lives.
                if found is not None and rest and rest[0] in reexports.get(found, {}):
                    target = reexports[found][rest[0]]
                    target = None if target is None else target + rest[1:]
                    continue
                break
            if target is None:
                continue
            found = resolve(files, target)
            if found is not None and found != module:
                edges[module].add(found)
    return edges


def circles(edges):
    """Strongly connected components of more than one file (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]
    sys.setrecursionlimit(10000)

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges[v]:
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

    for v in edges:
        if v not in index:
            visit(v)
    return out


def name(module):
    return "::".join(module) or "(root)"


def main():
    failures = []
    show = "--graph" in sys.argv
    packages = workspace()
    for pkg in packages:
        crate = pkg["name"].replace("-", "_")
        for target in pkg["targets"]:
            if not set(target["kind"]) & {"lib", "bin"}:
                continue
            src = target["src_path"]
            files = module_files(src)
            aliases = {crate} if "bin" in target["kind"] else set()
            edges = graph(files, aliases)
            label = f"{pkg['name']} ({'/'.join(target['kind'])} {target['name']})"
            if show:
                for m in sorted(edges):
                    print(f"{label}: {name(m)} -> {', '.join(name(t) for t in sorted(edges[m]))}")
            for comp in circles(edges):
                key = (pkg["name"], tuple(name(m) for m in comp))
                if key in ALLOWED_CIRCLES:
                    continue
                failures.append(f"import circle in {label}: " + " <-> ".join(name(m) for m in comp))
    for dirpath, dirnames, filenames in os.walk(ROOT):
        dirnames[:] = [d for d in dirnames if d not in ("target", ".git", "node_modules") and not d.startswith(".")]
        for f in filenames:
            if f.endswith(".rs"):
                path = os.path.join(dirpath, f)
                rel = os.path.relpath(path, ROOT)
                with open(path, encoding="utf-8") as fh:
                    lines = sum(1 for _ in fh)
                if lines > MAX_LINES:
                    failures.append(f"{rel}: {lines} lines (at most {MAX_LINES}: split it by role)")
    libraries = {p["name"] for p in packages if any("lib" in t["kind"] for t in p["targets"])}
    for crate in BINARY_ONLY:
        tree = subprocess.run(
            ["cargo", "tree", "--workspace", "--edges", "normal", "--prefix", "none",
             "--invert", crate, "--depth", "1"],
            cwd=ROOT, capture_output=True, text=True).stdout
        for line in tree.splitlines():
            m = re.match(r'(sluice[\w-]*) v', line)
            if m and m.group(1) in libraries:
                failures.append(f"library crate {m.group(1)} depends on {crate} (only binaries parse flags and print)")
    for f in failures:
        print("house:", f, file=sys.stderr)
    print(f"house: {len(failures)} problems")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
