//! The library's layering (docs/architecture.md): every top-level module of
//! `crates/scoregen/src` imports only modules that come before it in
//! [`ORDER`] — foundation, then the math, then the models, training, pictures
//! and the application layer. A total order forbids import cycles, and in
//! particular keeps the config and the commands (`app`) out of every math,
//! model and training module. Test modules are held to the same rule.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Top-level modules from the bottom up; a module may use itself and those before it.
/// `init` is `crate::init`, the library entry point in `lib.rs`.
const ORDER: &[&str] = &[
    // foundation
    "error",
    "device",
    "points",
    "rng",
    "progress",
    "io",
    "autodiff",
    "init",
    // math
    "sde",
    "score",
    "oracle",
    "data",
    "objectives",
    "samplers",
    "likelihood",
    "guidance",
    "metrics",
    // models, training, pictures
    "nets",
    "train",
    "viz",
    // application
    "app",
];

/// The top-level module a source file belongs to (`lib.rs` is the foundation's `init`).
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).unwrap();
    let first = rel.components().next().unwrap().as_os_str().to_string_lossy().to_string();
    match first.strip_suffix(".rs") {
        Some("lib") => "init".into(),
        Some(m) => m.into(),
        None => first,
    }
}

/// Every `crate::NAME` a source text refers to (line comments and doc comments
/// removed), with its line number; `crate::{a, b::c}` groups count each name.
fn imports(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let code: Vec<String> = text.lines().map(|l| l.split("//").next().unwrap_or("").to_string()).collect();
    let joined = code.join("\n");
    let line_of = |pos: usize| joined[..pos].matches('\n').count() + 1;
    let bytes = joined.as_bytes();
    let mut i = 0;
    while let Some(k) = joined[i..].find("crate::") {
        let start = i + k;
        let after = start + "crate::".len();
        // skip `scoregen_crate::` and the like
        let preceded = start > 0 && (bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        if !preceded {
            if bytes.get(after) == Some(&b'{') {
                let end = matching_brace(&joined, after);
                for name in top_level_names(&joined[after + 1..end]) {
                    out.push((line_of(start), name));
                }
            } else {
                let name: String =
                    joined[after..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
                if !name.is_empty() {
                    out.push((line_of(start), name));
                }
            }
        }
        i = after;
    }
    out
}

fn matching_brace(s: &str, open: usize) -> usize {
    let mut depth = 0;
    for (j, c) in s[open..].char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return open + j;
                }
            }
            _ => {}
        }
    }
    s.len()
}

/// The first path segment of each item of a `{…}` use group, at depth 0.
fn top_level_names(group: &str) -> Vec<String> {
    let (mut depth, mut cur, mut names) = (0, String::new(), Vec::new());
    for c in group.chars() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                names.push(std::mem::take(&mut cur));
                continue;
            }
            _ => {}
        }
        cur.push(c);
    }
    names.push(cur);
    names
        .iter()
        .filter_map(|n| {
            let first: String = n.trim().chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
            (!first.is_empty() && first != "self").then_some(first)
        })
        .collect()
}

/// "file:line: `from` uses `to`" for every import that goes up the order.
fn violations(files: &[(String, PathBuf, String)]) -> Vec<String> {
    let rank = |m: &str| ORDER.iter().position(|o| *o == m);
    let mut bad = Vec::new();
    for (module, path, text) in files {
        let from = rank(module).unwrap_or_else(|| panic!("module `{module}` ({}) is not in ORDER", path.display()));
        for (line, to) in imports(text) {
            // items of lib.rs other than modules (init, CANDLE_SPIN_LIMIT_VAR) are the foundation
            let Some(r) = rank(&to).or_else(|| (to.chars().next().is_some_and(|c| c.is_uppercase())).then_some(0))
            else {
                bad.push(format!("{}:{line}: `{module}` uses `crate::{to}`, which is not in ORDER", path.display()));
                continue;
            };
            if r > from {
                bad.push(format!("{}:{line}: `{module}` uses `crate::{to}`, a layer above it", path.display()));
            }
        }
    }
    bad
}

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            sources(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

fn library() -> Vec<(String, PathBuf, String)> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut paths = Vec::new();
    sources(&src, &mut paths);
    paths.sort();
    paths.into_iter().map(|p| (module_of(&src, &p), p.clone(), std::fs::read_to_string(&p).unwrap())).collect()
}

#[test]
fn every_module_imports_only_layers_below_it() {
    let files = library();
    assert!(files.len() > 50, "found only {} source files", files.len());
    let found: BTreeSet<&str> = files.iter().map(|f| f.0.as_str()).collect();
    for m in ["sde", "samplers", "nets", "train", "app"] {
        assert!(found.contains(m), "module `{m}` not found: the scan is looking in the wrong place");
    }
    let bad = violations(&files);
    assert!(bad.is_empty(), "imports against the layering (docs/architecture.md):\n{}", bad.join("\n"));
}

/// The checker itself: a math module that reads the config, a model that
/// uses the training loop and a grouped import are all caught; downward
/// imports and look-alikes in comments are not.
#[test]
fn the_checker_catches_a_forbidden_import() {
    let file = |m: &str, text: &str| (m.to_string(), PathBuf::from(format!("{m}.rs")), text.to_string());
    let bad = violations(&[
        file("samplers", "use crate::app::config::RunConfig;\nuse crate::sde::Sde;\n"),
        file("nets", "use crate::{score::ScoreFn, train::checkpoint};\n"),
        file("score", "// see crate::app::factory\n/// [`crate::nets::Network`]\nuse crate::sde;\n"),
    ]);
    assert_eq!(bad.len(), 2, "{bad:#?}");
    assert!(bad[0].contains("`samplers` uses `crate::app`"), "{}", bad[0]);
    assert!(bad[1].contains("`nets` uses `crate::train`"), "{}", bad[1]);
}
