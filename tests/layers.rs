//! The crate's architecture, checked rather than argued: `src/lib.rs` lists
//! the modules bottom-up in numbered layers, and this test reads every
//! source file's imports (`crate::a::b`, `super::b`) and fails when
//!
//! - a module imports from a higher layer,
//! - modules import each other in a cycle (file by file, submodules too;
//!   the bench tool's `bench/src` as well),
//! - a module imports through the crate root's re-exports (`crate::Echo`)
//!   instead of from the module that defines the thing (`crate::echo::Echo`),
//! - a module of `src/` is in no layer.
//!
//! Test modules at the end of a file (`#[cfg(test)] mod tests { .. }`) are
//! not layering: a test may use anything.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Every module of a `src/` directory, by path (`engine::events`), with its
/// file. The crate root (`lib.rs`, `main.rs`) is the empty path.
fn modules(src: &Path) -> BTreeMap<String, PathBuf> {
    fn walk(dir: &Path, src: &Path, out: &mut BTreeMap<String, PathBuf>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
            .map(|e| e.expect("a directory entry").path())
            .collect();
        entries.sort();
        for path in entries {
            if path.is_dir() {
                walk(&path, src, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let rel = path
                    .strip_prefix(src)
                    .expect("under src")
                    .with_extension("");
                let mut parts: Vec<String> = rel
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy().into_owned())
                    .collect();
                if parts.last().is_some_and(|p| p == "mod") {
                    parts.pop();
                }
                if parts == ["lib"] || parts == ["main"] {
                    parts.clear();
                }
                out.insert(parts.join("::"), path);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(src, src, &mut out);
    out
}

/// The text before a file's trailing test module.
fn without_tests(text: &str) -> &str {
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let t = line.trim_start();
        if t.starts_with("#[cfg(test)]") || t.starts_with("#[cfg(all(test") {
            let rest = text[offset + line.len()..].trim_start();
            let rest = rest.strip_prefix("pub(crate) ").unwrap_or(rest);
            if rest.starts_with("mod ") && rest.lines().next().is_some_and(|l| l.contains('{')) {
                return &text[..offset];
            }
        }
        offset += line.len();
    }
    text
}

/// Removes comments, so a path named in a doc comment is not an import.
fn without_comments(text: &str) -> String {
    text.lines()
        .map(|line| match line.find("//") {
            Some(at) => &line[..at],
            None => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every path a text names after `prefix` (`crate`, `super`), with use
/// groups expanded: `crate::{a, b::{c, d}}` gives `a`, `b::c`, `b::d`.
fn paths_after(text: &str, prefix: &str) -> Vec<String> {
    let bytes = text.as_bytes();
    let needle = format!("{prefix}::");
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(at) = text[from..].find(&needle) {
        let start = from + at;
        from = start + needle.len();
        let boundary = start == 0
            || !(bytes[start - 1].is_ascii_alphanumeric()
                || bytes[start - 1] == b'_'
                || bytes[start - 1] == b':');
        if boundary {
            expand(&text[from..], String::new(), &mut out);
        }
    }
    out
}

/// Expands the path (or use group) at the start of `rest` onto `base`.
fn expand(rest: &str, base: String, out: &mut Vec<String>) {
    let rest = rest.trim_start();
    if let Some(group) = rest.strip_prefix('{') {
        let mut depth = 0;
        let mut item = String::new();
        for c in group.chars() {
            match c {
                '{' => depth += 1,
                '}' if depth == 0 => break,
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    expand(&item, base.clone(), out);
                    item.clear();
                    continue;
                }
                _ => {}
            }
            item.push(c);
        }
        expand(&item, base, out);
        return;
    }
    let ident: String = rest
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect();
    if ident.is_empty() {
        if !base.is_empty() {
            out.push(base);
        }
        return;
    }
    let path = if base.is_empty() {
        ident.clone()
    } else {
        format!("{base}::{ident}")
    };
    match rest[ident.len()..].strip_prefix("::") {
        Some(more) => expand(more, path, out),
        None => out.push(path),
    }
}

/// The module a path names: its longest prefix that is a module.
fn module_of(path: &str, mods: &BTreeMap<String, PathBuf>) -> Option<String> {
    let parts: Vec<&str> = path.split("::").collect();
    (1..=parts.len())
        .rev()
        .map(|k| parts[..k].join("::"))
        .find(|candidate| mods.contains_key(candidate))
}

/// What each module imports: (modules, names taken from the crate root).
fn imports(src: &Path) -> BTreeMap<String, (BTreeSet<String>, BTreeSet<String>)> {
    let mods = modules(src);
    let mut out = BTreeMap::new();
    for (name, path) in &mods {
        let text = std::fs::read_to_string(path).expect("a source file");
        let text = without_comments(without_tests(&text));
        let mut deps = BTreeSet::new();
        let mut from_root = BTreeSet::new();
        for p in paths_after(&text, "crate") {
            match module_of(&p, &mods) {
                Some(m) => {
                    deps.insert(m);
                }
                // `crate::Echo`: a re-export of the root (macros aside).
                None if !name.is_empty() => {
                    from_root.insert(p);
                }
                None => {}
            }
        }
        let parent = name.rsplit_once("::").map_or("", |(p, _)| p);
        for p in paths_after(&text, "super") {
            let full = if parent.is_empty() {
                p
            } else {
                format!("{parent}::{p}")
            };
            if let Some(m) = module_of(&full, &mods) {
                deps.insert(m);
            }
        }
        deps.remove(name);
        deps.remove("");
        out.insert(name.clone(), (deps, from_root));
    }
    out
}

/// The cycles (strongly connected components of two or more modules).
fn cycles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    // Kosaraju: finish order on the graph, then components on its reverse.
    fn visit(
        v: &str,
        g: &BTreeMap<String, BTreeSet<String>>,
        seen: &mut BTreeSet<String>,
        order: &mut Vec<String>,
    ) {
        if !seen.insert(v.to_owned()) {
            return;
        }
        for w in g.get(v).into_iter().flatten() {
            visit(w, g, seen, order);
        }
        order.push(v.to_owned());
    }
    let mut seen = BTreeSet::new();
    let mut order = Vec::new();
    for v in graph.keys() {
        visit(v, graph, &mut seen, &mut order);
    }
    let mut reverse: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (v, ws) in graph {
        for w in ws {
            reverse.entry(w.clone()).or_default().insert(v.clone());
        }
    }
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for v in order.iter().rev() {
        let mut component = Vec::new();
        visit(v, &reverse, &mut seen, &mut component);
        if component.len() > 1 {
            component.sort();
            out.push(component);
        }
    }
    out
}

/// The layer of each top-level module, from `lib.rs`'s numbered comments
/// (`// 3. One connection's life, ...`) followed by its `mod` lines.
fn layers(lib: &str) -> BTreeMap<String, u32> {
    let mut layer = None;
    let mut out = BTreeMap::new();
    for line in lib.lines() {
        let t = line.trim();
        if let Some(rest) = t.strip_prefix("// ") {
            if let Some((n, _)) = rest.split_once(". ") {
                if let Ok(n) = n.parse::<u32>() {
                    layer = Some(n);
                }
            }
            continue;
        }
        let decl = t.strip_prefix("pub ").unwrap_or(t);
        if let Some(name) = decl.strip_prefix("mod ").and_then(|m| m.strip_suffix(';')) {
            let n = layer.unwrap_or_else(|| {
                panic!("`mod {name};` in lib.rs comes before any numbered layer comment")
            });
            out.insert(name.to_owned(), n);
        }
    }
    out
}

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn no_module_imports_from_a_higher_layer() {
    let src = manifest_dir().join("src");
    let lib = std::fs::read_to_string(src.join("lib.rs")).expect("src/lib.rs");
    let layer = layers(&lib);
    let top = |m: &str| m.split("::").next().unwrap_or_default().to_owned();
    let mut wrong = Vec::new();
    for (module, (deps, _)) in imports(&src) {
        if module.is_empty() {
            continue;
        }
        let Some(&mine) = layer.get(&top(&module)) else {
            wrong.push(format!("{module} is in no layer of src/lib.rs"));
            continue;
        };
        for dep in deps {
            let theirs = layer[&top(&dep)];
            if theirs > mine && top(&dep) != top(&module) {
                wrong.push(format!(
                    "{module} (layer {mine}) imports {dep} (layer {theirs})"
                ));
            }
        }
    }
    assert!(wrong.is_empty(), "layering broken:\n{}", wrong.join("\n"));
    assert!(layer.len() > 20, "lib.rs's layers were not read: {layer:?}");
}

#[test]
fn no_import_cycles() {
    for dir in ["src", "bench/src"] {
        let graph: BTreeMap<String, BTreeSet<String>> = imports(&manifest_dir().join(dir))
            .into_iter()
            .map(|(m, (deps, _))| (m, deps))
            .collect();
        let found = cycles(&graph);
        assert!(found.is_empty(), "import cycles in {dir}: {found:?}");
    }
}

#[test]
fn modules_import_from_the_module_that_defines_a_thing() {
    let mut wrong = Vec::new();
    for (module, (_, from_root)) in imports(&manifest_dir().join("src")) {
        for name in from_root {
            wrong.push(format!("{module} takes crate::{name} from the crate root"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// The checker itself, on made-up sources: it must see what it looks for.
#[test]
fn the_checker_sees_groups_cycles_and_layers() {
    let mut found = paths_after(
        "use crate::{a, b::{c, d}, e::F};\nlet x = crate::g::h(1);",
        "crate",
    );
    found.sort();
    assert_eq!(found, ["a", "b::c", "b::d", "e::F", "g::h"]);
    assert!(paths_after("notcrate::x", "crate").is_empty());
    assert_eq!(
        without_tests("use a;\n#[cfg(test)]\nmod tests {\n use crate::z;\n}\n"),
        "use a;\n"
    );
    let graph: BTreeMap<String, BTreeSet<String>> = [
        ("a", vec!["b"]),
        ("b", vec!["c"]),
        ("c", vec!["a"]),
        ("d", vec!["a"]),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.into_iter().map(str::to_owned).collect()))
    .collect();
    assert_eq!(cycles(&graph), [["a", "b", "c"]]);
    let lib = "// 1. Bottom\nmod a;\n#[cfg(unix)]\npub mod b;\n// 2. Top: x\nmod c;\n";
    assert_eq!(
        layers(lib),
        [
            ("a".to_owned(), 1),
            ("b".to_owned(), 1),
            ("c".to_owned(), 2)
        ]
        .into()
    );
}
