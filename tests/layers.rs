//! The layers of `src/` are kept by this test: the folder a file is in says what it may import
//! (the rules are written down in the crate doc of `src/lib.rs`). It reads every source file and
//! fails on a `crate::…` path that a rule forbids, naming the file, the line and the rule.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// A layer of the crate: a folder of `src/` or one of its top-level files.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Layer {
    Config,
    Core,
    Broker,
    Http,
    Transport,
    Api,
    Edge,
    /// `lib.rs` and `main.rs`: they wire everything together.
    Root,
}

use Layer::*;

impl Layer {
    /// The layer a module of the crate root names (`core`, `config`, …); `None` for the root's
    /// own items.
    fn named(name: &str) -> Option<Layer> {
        Some(match name {
            "config" => Config,
            "core" => Core,
            "broker" => Broker,
            "http" => Http,
            "transport" => Transport,
            "api" => Api,
            "edge" => Edge,
            _ => return None,
        })
    }

    /// The layer a path of `src/` belongs to.
    fn of_file(rel: &Path) -> Layer {
        let first = rel.components().next().and_then(|c| c.as_os_str().to_str()).unwrap_or("");
        match first {
            "lib.rs" | "main.rs" => Root,
            other => Layer::named(other.strip_suffix(".rs").unwrap_or(other)).unwrap_or_else(|| {
                panic!("src/{other} is in no layer: put it in a folder (or add it to tests/layers.rs)")
            }),
        }
    }

    /// The layer the first segment of a `crate::` path names.
    fn of_segment(segment: &str) -> Layer {
        Layer::named(segment).unwrap_or(Root)
    }

    /// What a file of this layer may import, and the rule as the crate doc words it.
    fn may_import(self) -> (&'static [Layer], &'static str) {
        match self {
            Config => (&[Config], "config imports nothing of the crate"),
            Core => (&[Config, Core], "core knows only itself and the config: no broker, no HTTP, no transport, no socket"),
            Broker => (&[Config, Core, Broker], "a broker knows only the core's types"),
            Http => (&[Config, Core, Http], "http (errors, rights) knows only the core"),
            Transport => (
                &[Config, Core, Http, Transport],
                "a transport renders the core's queues over http's errors and rights; it knows no broker, no API, no edge",
            ),
            Api => (&[Config, Core, Http, Api], "the backend API knows the core and http, no transport, no edge"),
            Edge => (&[Config, Core, Http, Transport, Edge], "the socket edge serves transports; it knows no broker and no API"),
            Root => (&[Config, Core, Broker, Http, Transport, Api, Edge, Root], "lib.rs and main.rs wire everything"),
        }
    }
}

/// Crates a file of the core may not use: the core has no HTTP, no sockets, no tokio I/O.
const NOT_IN_CORE: &[&str] = &[
    "axum::",
    "hyper::",
    "hyper_util::",
    "tower::",
    "tower_http::",
    "tokio::net",
    "tokio::io",
    "socket2::",
    "libc::",
    "std::net::TcpStream",
];

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("src/ is readable") {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The code of a line, without its comment (doc links are not imports).
fn code(line: &str) -> &str {
    match line.find("//") {
        Some(i) => &line[..i],
        None => line,
    }
}

/// The `crate::` paths of a line, as their segments (`crate::core::hub::Hub` → core, hub, Hub).
fn crate_paths(line: &str) -> Vec<Vec<&str>> {
    let mut out = Vec::new();
    let mut rest = line;
    while let Some(i) = rest.find("crate::") {
        let preceded = rest[..i].chars().last();
        rest = &rest[i + "crate::".len()..];
        if preceded.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '$') {
            continue; // `$crate::` in a macro, or a longer name
        }
        let end = rest.find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':')).unwrap_or(rest.len());
        out.push(rest[..end].split("::").filter(|s| !s.is_empty()).collect());
    }
    out
}

/// The modules a folder's files define (`transport` → sse, ws, poll, …), for the rule that a
/// transport imports no other transport.
fn modules_of(src: &Path, folder: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for entry in std::fs::read_dir(src.join(folder)).expect("the folder is readable") {
        let path = entry.expect("a directory entry").path();
        let name = path.file_stem().and_then(|s| s.to_str()).unwrap_or("").to_owned();
        if name != "mod" {
            out.insert(name);
        }
    }
    out
}

/// Every forbidden edge in `src/`, as messages.
fn violations(src: &Path) -> Vec<String> {
    let mut files = Vec::new();
    sources(src, &mut files);
    files.sort();
    let transports = modules_of(src, "transport");
    let mut found = Vec::new();
    for path in &files {
        let rel = path.strip_prefix(src).expect("under src/");
        let layer = Layer::of_file(rel);
        let (allowed, rule) = layer.may_import();
        let text = std::fs::read_to_string(path).expect("a readable source file");
        let own_transport = (layer == Transport)
            .then(|| rel.components().nth(1))
            .flatten()
            .and_then(|c| Path::new(c.as_os_str()).file_stem().and_then(|s| s.to_str()).map(str::to_owned));
        for (n, line) in text.lines().enumerate() {
            let line = code(line);
            let at = format!("src/{}:{}", rel.display(), n + 1);
            if line.contains("crate::{") {
                found
                    .push(format!("{at}: `use crate::{{…}}`: write one path per `use` so that the layers can be read"));
            }
            if layer == Core {
                for banned in NOT_IN_CORE {
                    if line.contains(banned) {
                        found.push(format!("{at}: the core uses `{banned}`: {rule}"));
                    }
                }
            }
            for path in crate_paths(line) {
                let Some(first) = path.first() else { continue };
                let target = Layer::of_segment(first);
                if !allowed.contains(&target) {
                    found.push(format!("{at}: imports `crate::{}` ({target:?}): {rule}", path.join("::")));
                }
                if layer == Transport && target == Transport {
                    if let Some(other) = path.get(1).filter(|m| transports.contains(**m)) {
                        if own_transport.as_deref() != Some(*other) {
                            found.push(format!(
                                "{at}: imports `crate::{}`: a transport imports no other transport (what they share is in transport/mod.rs)",
                                path.join("::")
                            ));
                        }
                    }
                }
            }
        }
    }
    found
}

#[test]
fn every_import_follows_the_layers() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let found = violations(&src);
    assert!(found.is_empty(), "{} imports break the layers:\n{}", found.len(), found.join("\n"));
}

/// The rules themselves admit no cycle between layers: if a may import b, b may not import a.
#[test]
fn the_rules_have_no_cycle() {
    let all = [Config, Core, Broker, Http, Transport, Api, Edge, Root];
    let mut order = BTreeMap::new();
    for (rank, layer) in all.iter().enumerate() {
        order.insert(*layer, rank);
    }
    for a in all {
        for b in a.may_import().0 {
            assert!(order[b] <= order[&a], "{a:?} may import {b:?}, which comes after it");
        }
    }
}

/// The test can fail: an import that breaks a rule in a copy of `src/` is found and named.
#[test]
fn a_forbidden_import_is_found() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let copy = std::env::temp_dir().join(format!("ssegate-layers-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&copy);
    copy_dir(&src, &copy);
    let hub = copy.join("core/hub.rs");
    let text = std::fs::read_to_string(&hub).expect("core/hub.rs");
    std::fs::write(&hub, format!("use crate::transport::sse::stream;\n{text}")).expect("writable copy");
    let ws = copy.join("transport/ws/mod.rs");
    let text = std::fs::read_to_string(&ws).expect("transport/ws/mod.rs");
    std::fs::write(&ws, format!("use crate::transport::sse::Pump;\n{text}")).expect("writable copy");
    let found = violations(&copy);
    let _ = std::fs::remove_dir_all(&copy);
    // `cargo test --test layers -- --nocapture` shows what a forbidden import gets.
    println!("{}", found.join("\n"));
    assert_eq!(found.len(), 2, "{found:#?}");
    assert!(
        found[0].starts_with("src/core/hub.rs:1: imports `crate::transport::sse::stream` (Transport): core knows only"),
        "{}",
        found[0]
    );
    assert!(
        found[1].starts_with(
            "src/transport/ws/mod.rs:1: imports `crate::transport::sse::Pump`: a transport imports no other"
        ),
        "{}",
        found[1]
    );
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("a temporary directory");
    for entry in std::fs::read_dir(from).expect("readable") {
        let path = entry.expect("a directory entry").path();
        let dest = to.join(path.file_name().expect("a name"));
        if path.is_dir() {
            copy_dir(&path, &dest);
        } else {
            std::fs::copy(&path, &dest).expect("copied");
        }
    }
}
