//! The runtime's layers run one way, and this test keeps them so. Each top-level module has a
//! layer; a module may name (`crate::…`) only modules of lower layers, never its own layer's
//! peers or anything above, so the module graph has no cycle:
//!
//! ```text
//! 5 server            Flight service, auth, admission, metrics, link pacing
//! 4 exec              prepare, placement, the query pipeline
//! 3 scan   compute    Parquet pruning and decoding | backends, sandbox, programs
//! 2 storage           namespace, objects, catalog, reader, media bandwidth
//! 1 plan   demo       the bound plan and its native evaluation | demo data
//! 0 error
//! ```
//!
//! The crate root (`lib.rs`, the `Device`) sits above them all.

/// Each top-level module and its layer.
const LAYERS: &[(&str, u8)] = &[
    ("error", 0),
    ("plan", 1),
    ("demo", 1),
    ("storage", 2),
    ("scan", 3),
    ("compute", 3),
    ("exec", 4),
    ("server", 5),
];

/// Items the crate root re-exports, and the module that defines them.
const ROOT_REEXPORTS: &[(&str, &str)] = &[("Error", "error"), ("Result", "error")];

fn layer(module: &str) -> Option<u8> {
    LAYERS.iter().find(|(m, _)| *m == module).map(|(_, l)| *l)
}

/// The top-level modules a source text names through `crate::` paths, including those in
/// grouped imports (`use crate::{a::X, b::Y}`); comment lines are skipped.
fn named_modules(text: &str) -> Vec<String> {
    let code: String = text
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n");
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect()
    };
    let mut out = Vec::new();
    for (at, _) in code.match_indices("crate::") {
        let rest = code[at + "crate::".len()..].trim_start();
        if let Some(group) = rest.strip_prefix('{') {
            // Top-level items of the group: split at commas outside nested braces.
            let mut depth = 0;
            let mut start = true;
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => start = true,
                    c if start && !c.is_whitespace() => {
                        out.push(ident(&group[i..]));
                        start = false;
                    }
                    _ => {}
                }
            }
        } else {
            out.push(ident(rest));
        }
    }
    out.retain(|m| !m.is_empty() && m != "self");
    out
}

/// What is wrong with the `crate::` paths of a file of `module` (empty when nothing is).
fn violations(module: &str, text: &str) -> Vec<String> {
    let Some(own) = layer(module) else {
        return vec![format!("module '{module}' has no layer in LAYERS")];
    };
    let mut out = Vec::new();
    for named in named_modules(text) {
        let target = ROOT_REEXPORTS
            .iter()
            .find(|(item, _)| *item == named)
            .map_or(named.as_str(), |(_, m)| m);
        if target == module {
            continue;
        }
        match layer(target) {
            None => out.push(format!("names crate::{named}, which has no layer")),
            Some(l) if l >= own => out.push(format!(
                "{module} (layer {own}) names crate::{named} (layer {l}): imports must run down"
            )),
            Some(_) => {}
        }
    }
    out
}

#[test]
fn layers_run_one_way() {
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = vec![];
    let mut dirs = vec![src.clone()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).expect("reading src") {
            let p = e.expect("dir entry").path();
            if p.is_dir() {
                dirs.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                files.push(p);
            }
        }
    }
    let mut problems = vec![];
    for f in &files {
        let rel = f.strip_prefix(&src).expect("under src");
        let first = rel.components().next().expect("a path");
        let module = first.as_os_str().to_string_lossy();
        let module = module.trim_end_matches(".rs");
        if module == "lib" || module == "layers" {
            continue;
        }
        let text = std::fs::read_to_string(f).expect("reading a source file");
        for v in violations(module, &text) {
            problems.push(format!("{}: {v}", rel.display()));
        }
    }
    assert!(files.len() > 20, "found only {} source files", files.len());
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_check_catches_upward_sideways_and_grouped_imports() {
    assert!(violations("compute", "use crate::plan::PhysExpr;\nuse crate::Result;").is_empty());
    assert_eq!(violations("compute", "use crate::exec::Executor;").len(), 1);
    assert_eq!(
        violations("compute", "use crate::scan::ScanCounters;").len(),
        1
    );
    assert_eq!(
        violations("storage", "use crate::{error::Error, server::qos::X};").len(),
        1
    );
    assert_eq!(
        violations("scan", "fn f(b: crate::server::qos::MediaBucket) {}").len(),
        1
    );
    assert!(violations("plan", "// see crate::exec::run\nuse crate::error::Error;").is_empty());
    assert_eq!(violations("nowhere", "").len(), 1);
}
