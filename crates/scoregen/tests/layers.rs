//! The library's layering (docs/architecture.md), in two parts.
//!
//! Between crates, Cargo enforces it: `scoregen-core` (foundation and math)
//! depends on no other scoregen crate, `scoregen-nets` (networks, training)
//! only on core, `scoregen` (pictures, the application layer) on both, and the
//! front ends (`scoregen-cli`, `scoregen-py`) only on `scoregen`. An upward
//! `use` does not compile; [`crates_depend_only_downward`] keeps anyone from
//! adding the upward dependency to a `Cargo.toml` that would make it compile.
//!
//! Inside a crate, each module may import only those before it in its crate's
//! order (a total order, so no cycle), checked by reading the sources: every
//! `crate::…` path and every `super::…` path, resolved against the file's own
//! module (so `super::super::app::x` is caught as well as `crate::app::x`),
//! `use` groups counted name by name, comments ignored. In the application
//! layer each submodule is ordered too (config before the factory, the
//! factory before run folders, one command before another that uses it).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Each crate's modules from the bottom up; a module may use itself and those
/// before it. A path names the longest entry it starts with; the crate root's
/// own items (`init`, `Error`, …) count as the first entry.
const CORE: &[&str] = &[
    // foundation
    "error",
    "named",
    "device",
    "host",
    "points",
    "rng",
    "progress",
    "io",
    "autodiff",
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
];
const NETS: &[&str] = &["nets", "train"];
const TOP: &[&str] = &[
    "viz",
    "app::config",
    "app::budget",
    "app::factory",
    "app::pretrained",
    "app::run_dir",
    "app::figures",
    "app::commands::list",
    "app::commands::suggest_sigmas",
    "app::commands::info",
    "app::commands::classify",
    "app::commands::eval",
    "app::commands::sample",
    "app::commands::inpaint",
    "app::commands::likelihood",
    "app::commands::bench",
    "app::commands::leaderboard",
    "app::commands::report",
    "app::commands::train",
    "app::commands::demo",
    "app::commands::quickstart",
    "app::commands",
    "app",
];

/// The module path of a source file (`lib.rs`: the root, `a/mod.rs`: `a`).
fn module_path(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).unwrap();
    let mut segs: Vec<String> = rel.components().map(|c| c.as_os_str().to_string_lossy().to_string()).collect();
    let last = segs.pop().unwrap();
    match last.strip_suffix(".rs").unwrap() {
        "lib" | "mod" => {}
        stem => segs.push(stem.to_string()),
    }
    segs
}

/// The code of a source text with line comments and doc comments blanked
/// (newlines kept, so positions give line numbers).
fn code_of(text: &str) -> String {
    text.lines().map(|l| l.split("//").next().unwrap_or("")).collect::<Vec<_>>().join("\n")
}

fn ident_at(s: &str, at: usize) -> String {
    s[at..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect()
}

/// Every absolute module path a file's code refers to, with its line:
/// `crate::a::b`, `super::…::a` resolved from `here` (the file's module), and
/// each item of a `{…}` group after either.
fn imports(text: &str, here: &[String]) -> Vec<(usize, Vec<String>)> {
    let code = code_of(text);
    let bytes = code.as_bytes();
    let line_of = |pos: usize| code[..pos].matches('\n').count() + 1;
    // inline modules (`mod tests { … }`): their spans and names, so `super::` inside resolves from them
    let mut inline: Vec<(usize, usize, String)> = Vec::new();
    let mut from = 0;
    while let Some(k) = code[from..].find("mod ") {
        let at = from + k;
        from = at + 4;
        if at > 0 && (bytes[at - 1].is_ascii_alphanumeric() || bytes[at - 1] == b'_') {
            continue;
        }
        let name = ident_at(&code, at + 4);
        let brace = at + 4 + name.len();
        if !name.is_empty() && code[brace..].trim_start().starts_with('{') {
            let open = brace + code[brace..].find('{').unwrap();
            inline.push((open, matching_brace(&code, open), name));
        }
    }
    let module_at = |pos: usize| -> Vec<String> {
        let mut m = here.to_vec();
        m.extend(inline.iter().filter(|(a, b, _)| *a < pos && pos < *b).map(|(_, _, n)| n.clone()));
        m
    };
    let mut out = Vec::new();
    let mut i = 0;
    while i < code.len() {
        let rest = &code[i..];
        let (base, len): (Vec<String>, usize) = if rest.starts_with("crate::") {
            (vec![], "crate::".len())
        } else if rest.starts_with("super::") {
            // count the chain of `super::` and resolve it against `here`
            let mut n = 0;
            while code[i + n * 7..].starts_with("super::") {
                n += 1;
            }
            let here = module_at(i);
            let keep = here.len().saturating_sub(n);
            (here[..keep].to_vec(), n * 7)
        } else {
            i += rest.chars().next().map_or(1, char::len_utf8);
            continue;
        };
        let preceded = i > 0 && (bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_' || bytes[i - 1] == b':');
        let after = i + len;
        if !preceded {
            if bytes.get(after) == Some(&b'{') {
                let end = matching_brace(&code, after);
                for name in group_items(&code[after + 1..end]) {
                    let mut p = base.clone();
                    p.extend(name);
                    out.push((line_of(i), p));
                }
            } else {
                let mut p = base.clone();
                p.extend(path_at(&code, after));
                out.push((line_of(i), p));
            }
        }
        i = after;
    }
    out
}

/// The `a::b::c` path starting at `at` (identifiers joined by `::`).
fn path_at(s: &str, mut at: usize) -> Vec<String> {
    let mut segs = Vec::new();
    loop {
        let id = ident_at(s, at);
        if id.is_empty() {
            break;
        }
        at += id.len();
        segs.push(id);
        if !s[at..].starts_with("::") {
            break;
        }
        at += 2;
    }
    segs
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

/// The leading path of each item of a `{…}` use group, at depth 0 (`self` dropped).
fn group_items(group: &str) -> Vec<Vec<String>> {
    let (mut depth, mut cur, mut items) = (0, String::new(), Vec::new());
    for c in group.chars() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                items.push(std::mem::take(&mut cur));
                continue;
            }
            _ => {}
        }
        cur.push(c);
    }
    items.push(cur);
    items
        .iter()
        .map(|n| {
            let t = n.trim();
            path_at(t, 0).into_iter().take_while(|s| s != "self").collect::<Vec<_>>()
        })
        .filter(|p| !p.is_empty())
        .collect()
}

/// The rank of a module path in `order`: its longest entry that is a prefix;
/// the root's own items (no entry, first segment not a module) rank 0.
fn rank(order: &[&str], path: &[String]) -> Option<usize> {
    let joined = path.join("::");
    let best = order
        .iter()
        .enumerate()
        .filter(|(_, e)| joined == **e || joined.starts_with(&format!("{e}::")))
        .max_by_key(|(_, e)| e.len())
        .map(|(r, _)| r);
    best.or_else(|| {
        let first = path.first()?;
        // `crate::init`, `crate::Error`: items of lib.rs, the foundation
        (!order.iter().any(|e| e.split("::").next() == Some(first.as_str()))).then_some(0)
    })
}

/// "file:line: `from` uses `to`" for every import that goes up the order.
fn violations(order: &[&str], files: &[(Vec<String>, PathBuf, String)]) -> Vec<String> {
    let mut bad = Vec::new();
    for (module, path, text) in files {
        if module.is_empty() {
            continue; // lib.rs declares the modules
        }
        let here = module.join("::");
        let Some(from) = order.iter().position(|e| here == *e || here.starts_with(&format!("{e}::"))).or_else(|| {
            // a module with no entry of its own (app/mod.rs) sits above its entries
            order.iter().rposition(|e| e.starts_with(&format!("{here}::")))
        }) else {
            bad.push(format!("{}: module `{here}` is not in the order", path.display()));
            continue;
        };
        for (line, to) in imports(text, module) {
            let Some(r) = rank(order, &to) else { continue };
            if r > from {
                bad.push(format!("{}:{line}: `{here}` uses `{}`, a layer above it", path.display(), to.join("::")));
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

fn crates_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn crate_sources(name: &str) -> Vec<(Vec<String>, PathBuf, String)> {
    let src = crates_dir().join(name).join("src");
    let mut paths = Vec::new();
    sources(&src, &mut paths);
    paths.sort();
    paths.into_iter().map(|p| (module_path(&src, &p), p.clone(), std::fs::read_to_string(&p).unwrap())).collect()
}

#[test]
fn every_module_imports_only_modules_before_it_in_its_crate() {
    for (name, order, expect) in
        [("scoregen-core", CORE, "samplers"), ("scoregen-nets", NETS, "train"), ("scoregen", TOP, "app")]
    {
        let files = crate_sources(name);
        assert!(files.len() > 5, "found only {} source files in {name}", files.len());
        let found: BTreeSet<String> = files.iter().filter_map(|f| f.0.first().cloned()).collect();
        assert!(found.contains(expect), "module `{expect}` not found in {name}: the scan looks in the wrong place");
        let bad = violations(order, &files);
        assert!(bad.is_empty(), "imports against the layering in {name} (docs/architecture.md):\n{}", bad.join("\n"));
    }
}

/// The scoregen crates each `Cargo.toml` depends on (any section).
fn scoregen_deps(name: &str) -> BTreeSet<String> {
    let text = std::fs::read_to_string(crates_dir().join(name).join("Cargo.toml")).unwrap();
    text.lines()
        .filter_map(|l| {
            let key = l.split(['=', '.']).next()?.trim();
            (key.starts_with("scoregen") && l.contains('=')).then(|| key.to_string())
        })
        .collect()
}

#[test]
fn crates_depend_only_downward() {
    let set = |names: &[&str]| names.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
    assert_eq!(scoregen_deps("scoregen-core"), set(&[]));
    assert_eq!(scoregen_deps("scoregen-nets"), set(&["scoregen-core"]));
    assert_eq!(scoregen_deps("scoregen"), set(&["scoregen-core", "scoregen-nets"]));
    // the front ends see the top crate's public API only
    assert_eq!(scoregen_deps("scoregen-cli"), set(&["scoregen"]));
    assert_eq!(scoregen_deps("scoregen-py"), set(&["scoregen"]));
}

/// The checker itself: a math module that reads the config, a model that uses
/// the training loop, a grouped import, a `super::super` path out of a
/// command into a later command and a factory that uses run folders are all
/// caught; downward imports and look-alikes in comments are not.
#[test]
fn the_checker_catches_a_forbidden_import() {
    let file = |m: &str, text: &str| {
        let module: Vec<String> = m.split("::").map(String::from).collect();
        (module, PathBuf::from(format!("{}.rs", m.replace("::", "/"))), text.to_string())
    };
    let bad = violations(
        CORE,
        &[
            file("samplers", "use crate::metrics::Modes;\nuse crate::sde::Sde;\n"),
            file("score", "// see crate::metrics\n/// [`crate::samplers::x`]\nuse crate::sde;\n"),
            file("sde::ve", "use super::super::{rng::Rng, guidance::Inpaint};\nuse super::Sde;\n"),
        ],
    );
    assert_eq!(bad.len(), 2, "{bad:#?}");
    assert!(bad[0].contains("`samplers` uses `metrics::Modes`"), "{}", bad[0]);
    assert!(bad[1].contains("`sde::ve` uses `guidance::Inpaint`"), "{}", bad[1]);
    let bad = violations(
        TOP,
        &[
            file("app::factory", "use super::run_dir::LoadedModel;\nuse crate::app::config::RunConfig;\n"),
            file(
                "app::commands::sample",
                "use super::super::commands::train::train;\nuse super::eval::Target;\n#[cfg(test)]\nmod tests {\n    use super::*;\n    use super::super::super::config::RunConfig;\n}\n",
            ),
            file("viz::plots", "use crate::{points::Points, app::config};\n"),
        ],
    );
    assert_eq!(bad.len(), 3, "{bad:#?}");
    assert!(bad[0].contains("`app::factory` uses `app::run_dir::LoadedModel`"), "{}", bad[0]);
    assert!(bad[1].contains("`app::commands::sample` uses `app::commands::train::train`"), "{}", bad[1]);
    assert!(bad[2].contains("`viz::plots` uses `app::config`"), "{}", bad[2]);
}
