//! The core reads bottom-up (docs/architecture.md): every module of `src/`
//! has a place in `LAYERS`, and a module may name (`crate::x`, in code, not
//! in comments) only modules that come before it. This test parses `src/`
//! and fails on an import that runs upward, so a new cycle cannot come in
//! unnoticed.
//!
//! One pair is exempt: `PAIR`, the two modules that import each other by
//! design (see the module documentation of `src/local.rs`). Every other
//! upward import fails the test; a lower module that must act on a higher
//! one's state takes a hook that the higher one registers from above (as
//! `fork` does for the locks it holds across a `fork()`).

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

/// The modules of `src/`, lowest first.
const LAYERS: &[&str] = &[
    // platform and synchronisation
    "sync",
    "sys",
    "fault",
    "fork",
    // reports
    "report",
    // building blocks of the read side
    "thread_bound",
    "erased",
    "section_calls",
    "event",
    // the read side
    "flavor",
    "reader",
    "local",
    "detect",
    "watchdog",
    // grace periods
    "grace",
    // callbacks
    "call_rcu",
    "poll",
    // the types built on them
    "cell",
    "online",
    "vm",
    "virtio",
    "vhost_user",
];

/// The one pair allowed to import each other (lower, higher).
const PAIR: (&str, &str) = ("reader", "local");

fn rank(module: &str) -> usize {
    LAYERS
        .iter()
        .position(|m| *m == module)
        .unwrap_or_else(|| panic!("module `{module}` has no place in LAYERS (tests/layers.rs)"))
}

/// `text` without `//` comments (doc comments included) and without the
/// contents of string literals.
fn code_only(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        let mut in_str = false;
        let mut prev = '\0';
        let mut chars = line.chars().peekable();
        while let Some(c) = chars.next() {
            if in_str {
                if c == '"' && prev != '\\' {
                    in_str = false;
                }
                prev = if prev == '\\' && c == '\\' { '\0' } else { c };
                continue;
            }
            if c == '/' && chars.peek() == Some(&'/') {
                break;
            }
            if c == '"' && prev != '\'' {
                in_str = true;
            }
            out.push(c);
            prev = c;
        }
        out.push('\n');
    }
    out
}

/// `code` without `#[cfg(test)] mod … { … }` blocks: unit tests exercise
/// the whole crate and are no part of the layering.
fn without_test_modules(code: &str) -> String {
    let mut out = String::with_capacity(code.len());
    let mut rest = code;
    while let Some(at) = rest.find("#[cfg(test)]") {
        let after = &rest[at + "#[cfg(test)]".len()..];
        let trimmed = after.trim_start();
        let is_mod = trimmed.starts_with("mod ") || trimmed.starts_with("pub(crate) mod ");
        let open = trimmed.find(['{', ';']);
        if !is_mod || open.map(|i| &trimmed[i..i + 1]) != Some("{") {
            out.push_str(&rest[..at + "#[cfg(test)]".len()]);
            rest = after;
            continue;
        }
        out.push_str(&rest[..at]);
        let body = &trimmed[open.unwrap()..];
        let mut depth = 0usize;
        let mut end = body.len();
        for (i, c) in body.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        end = i + 1;
                        break;
                    }
                }
                _ => {}
            }
        }
        rest = &body[end..];
    }
    out.push_str(rest);
    out
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The module (first path component under `src/`) a file belongs to.
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).unwrap();
    let first = rel
        .components()
        .next()
        .unwrap()
        .as_os_str()
        .to_str()
        .unwrap();
    first.trim_end_matches(".rs").to_string()
}

/// The names after `crate::` in `code`: `crate::a::b` gives `a`,
/// `crate::{a::b, c}` gives `a` and `c`.
fn crate_paths(code: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        let before = rest[..at].chars().next_back();
        rest = &rest[at + "crate::".len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '$') {
            continue;
        }
        if let Some(group) = rest.strip_prefix('{') {
            // A group: the first name of each top-level item.
            let mut depth = 0;
            let mut item = String::new();
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        names.push(first_ident(&item));
                        item.clear();
                        continue;
                    }
                    _ => {}
                }
                item.push(c);
            }
            names.push(first_ident(&item));
        } else {
            names.push(first_ident(rest));
        }
    }
    names.retain(|n| !n.is_empty());
    names
}

fn first_ident(s: &str) -> String {
    s.trim_start()
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect()
}

/// For each name `lib.rs` re-exports at the crate root, the module it
/// comes from.
fn root_reexports(lib: &str) -> BTreeMap<String, String> {
    let code = code_only(lib);
    let mut map = BTreeMap::new();
    let mut rest = code.as_str();
    while let Some(at) = rest.find("pub use ") {
        rest = &rest[at + "pub use ".len()..];
        let end = rest.find(';').unwrap();
        let stmt: String = rest[..end].split_whitespace().collect();
        rest = &rest[end..];
        let Some((module, items)) = stmt.split_once("::") else {
            continue;
        };
        for item in items.trim_matches(|c| c == '{' || c == '}').split(',') {
            if !item.is_empty() {
                map.insert(item.to_string(), module.to_string());
            }
        }
    }
    map
}

/// Every import between modules of `src/`: (importer, imported) and where.
fn edges() -> BTreeMap<(String, String), Vec<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let reexports = root_reexports(&fs::read_to_string(src.join("lib.rs")).unwrap());
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut edges: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    for file in files {
        let module = module_of(&src, &file);
        // The crate root wires the modules together, and the guide is
        // documentation: neither is a layer.
        if module == "lib" || module == "guide" {
            continue;
        }
        let code = without_test_modules(&code_only(&fs::read_to_string(&file).unwrap()));
        for name in crate_paths(&code) {
            let target = if LAYERS.contains(&name.as_str()) {
                name
            } else if let Some(m) = reexports.get(&name) {
                m.clone()
            } else {
                panic!(
                    "{}: `crate::{name}` is neither a module nor a re-export",
                    file.display()
                );
            };
            if target != module {
                let at = file.strip_prefix(&src).unwrap().display().to_string();
                edges.entry((module.clone(), target)).or_default().push(at);
            }
        }
    }
    edges
}

/// The imports among `edges` that run upward (but for `PAIR`), one line
/// each.
fn upward(edges: &BTreeMap<(String, String), Vec<String>>) -> Vec<String> {
    let mut upward = Vec::new();
    for ((from, to), files) in edges {
        if rank(to) < rank(from) {
            continue;
        }
        if (from.as_str(), to.as_str()) == PAIR || (to.as_str(), from.as_str()) == PAIR {
            continue;
        }
        upward.push(format!("{from} -> {to} (in {})", files.join(", ")));
    }
    upward
}

#[test]
fn no_module_imports_one_above_it() {
    let upward = upward(&edges());
    assert!(
        upward.is_empty(),
        "imports that run upward (tests/layers.rs, LAYERS):\n  {}",
        upward.join("\n  ")
    );
}

#[test]
fn the_check_flags_an_upward_import_and_only_that() {
    let edge = |from: &str, to: &str| {
        (
            (from.to_string(), to.to_string()),
            vec![format!("{from}.rs")],
        )
    };
    let edges = BTreeMap::from([
        edge("grace", "fork"),
        edge("local", "reader"),
        edge("reader", "local"),
        edge("fork", "grace"),
    ]);
    assert_eq!(upward(&edges), ["fork -> grace (in fork.rs)"]);
}

#[test]
fn every_module_has_a_layer() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    for file in files {
        let module = module_of(&src, &file);
        if module != "lib" && module != "guide" {
            rank(&module);
        }
    }
}

#[test]
fn the_parser_sees_groups_and_skips_comments() {
    let code = code_only(
        "use crate::{a::b, c};\n// use crate::d;\nlet s = \"crate::e\"; f(crate::g::h);\n",
    );
    assert_eq!(crate_paths(&code), ["a", "c", "g"]);
    let code = without_test_modules(
        "f(crate::a);\n#[cfg(test)]\nmod tests { fn t() { crate::b; } }\ng(crate::c);",
    );
    assert_eq!(crate_paths(&code), ["a", "c"]);
}
