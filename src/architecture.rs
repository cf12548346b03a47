//! Architecture checks over the source tree (tests only): no import cycles among modules, and a
//! pure core that never names the Kubernetes client or the network.
//!
//! A module is a file (`src/controller/broker/apply.rs` is `controller::broker::apply`). A module
//! depends on another when it names it by path (`crate::plan::ledger::CertRecord`,
//! `super::observe::Observed`). A child naming its own ancestors (`super::Context` in a submodule)
//! is how Rust modules nest and is not counted; every other dependency is, and the graph of them
//! must have no cycle.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Module path (`a::b`) → its file.
fn modules(src: &Path) -> BTreeMap<String, PathBuf> {
    fn walk(dir: &Path, prefix: &[String], out: &mut BTreeMap<String, PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap().flatten() {
            let path = entry.path();
            let name = path.file_stem().unwrap().to_string_lossy().to_string();
            if path.is_dir() {
                walk(&path, &[prefix, &[name]].concat(), out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let module = match name.as_str() {
                    "mod" | "lib" | "main" => prefix.to_vec(),
                    _ => [prefix, &[name]].concat(),
                };
                out.insert(module.join("::"), path);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(src, &[], &mut out);
    out
}

/// Code without comments and string literals (so doc text naming a path is no dependency).
fn code_of(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    let mut prev = ' ';
    while let Some(c) = chars.next() {
        let after_ident = prev.is_alphanumeric() || prev == '_';
        prev = c;
        match c {
            // raw strings: r"..." and r#"..."# (YAML and JSON in tests hold quotes)
            'r' if !after_ident && matches!(chars.peek(), Some('#') | Some('"')) => {
                let mut hashes = 0;
                while chars.peek() == Some(&'#') {
                    chars.next();
                    hashes += 1;
                }
                if chars.next() != Some('"') {
                    continue; // r#ident
                }
                let close: String = std::iter::once('"').chain(std::iter::repeat_n('#', hashes)).collect();
                let mut body = String::new();
                for c in chars.by_ref() {
                    body.push(c);
                    if body.ends_with(&close) {
                        break;
                    }
                }
                out.push_str("\"\"");
            }
            // the character literal '"'
            '\'' if chars.peek() == Some(&'"') => {
                chars.next();
                chars.next();
            }
            '/' if chars.peek() == Some(&'/') => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        out.push('\n');
                        break;
                    }
                }
            }
            '"' => {
                let mut escaped = false;
                for c in chars.by_ref() {
                    if !escaped && c == '"' {
                        break;
                    }
                    escaped = !escaped && c == '\\';
                }
                out.push_str("\"\"");
            }
            _ => out.push(c),
        }
    }
    out
}

/// The path expressions in `code` that start with `crate::` or `super::`, as segments.
fn paths(code: &str) -> Vec<Vec<String>> {
    let mut out = vec![];
    let bytes = code.as_bytes();
    let ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    for start in ["crate::", "super::"] {
        let mut from = 0;
        while let Some(i) = code[from..].find(start) {
            let at = from + i;
            from = at + start.len();
            if at > 0 && (ident(bytes[at - 1]) || bytes[at - 1] == b':') {
                continue;
            }
            let mut segments = vec![start.trim_end_matches("::").to_string()];
            let mut j = at + start.len();
            loop {
                let s = j;
                while j < bytes.len() && ident(bytes[j]) {
                    j += 1;
                }
                if s == j {
                    break;
                }
                segments.push(code[s..j].to_string());
                if code[j..].starts_with("::") {
                    j += 2;
                } else {
                    break;
                }
            }
            // `use crate::a::{b, c::d}`: each item of a brace group is a path of its own
            if code[j..].starts_with('{') {
                let end = code[j..].find('}').map_or(code.len(), |e| j + e);
                for item in code[j + 1..end].split(',') {
                    let item: Vec<String> =
                        item.split("::").map(|s| s.trim().trim_start_matches('{').to_string()).collect();
                    out.push([segments.clone(), item].concat());
                }
            }
            out.push(segments);
        }
    }
    out
}

/// The module a path names: the longest prefix that is a module (None for the module itself).
fn target(from: &str, path: &[String], known: &BTreeMap<String, PathBuf>) -> Option<String> {
    let mut base: Vec<String> = if from.is_empty() { vec![] } else { from.split("::").map(String::from).collect() };
    let mut rest = path;
    match rest.first().map(String::as_str) {
        Some("crate") => {
            base.clear();
            rest = &rest[1..];
        }
        Some("super") => {
            // a file module's `super` is its parent (mod.rs files are their directory's module)
            while rest.first().map(String::as_str) == Some("super") {
                base.pop();
                rest = &rest[1..];
            }
        }
        _ => {}
    }
    let own = base.join("::");
    let mut best = known.contains_key(&own).then_some(own);
    for n in 1..=rest.len() {
        let candidate = [base.clone(), rest[..n].to_vec()].concat().join("::");
        if known.contains_key(&candidate) {
            best = Some(candidate);
        }
    }
    best
}

/// Module → the modules it depends on (ancestor edges left out).
fn dependencies(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let known = modules(src);
    let mut graph = BTreeMap::new();
    for (module, file) in &known {
        let code = code_of(&std::fs::read_to_string(file).unwrap());
        let mut deps = BTreeSet::new();
        for path in paths(&code) {
            let Some(t) = target(module, &path, &known) else { continue };
            let ancestor = t.is_empty() || module == &t || module.starts_with(&format!("{t}::"));
            if !ancestor {
                deps.insert(t);
            }
        }
        graph.insert(module.clone(), deps);
    }
    graph
}

/// The cycles of `graph`: its strongly connected components with more than one module.
fn cycles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    // Tarjan's algorithm, iterative
    struct State<'a> {
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        out: Vec<Vec<String>>,
    }
    fn visit<'a>(v: &'a str, g: &'a BTreeMap<String, BTreeSet<String>>, s: &mut State<'a>) {
        let i = s.index.len();
        s.index.insert(v, i);
        s.low.insert(v, i);
        s.stack.push(v);
        s.on_stack.insert(v);
        for w in g.get(v).into_iter().flatten() {
            let w = w.as_str();
            if !s.index.contains_key(w) {
                visit(w, g, s);
                let lw = s.low[w];
                let lv = s.low.get_mut(v).unwrap();
                *lv = (*lv).min(lw);
            } else if s.on_stack.contains(w) {
                let iw = s.index[w];
                let lv = s.low.get_mut(v).unwrap();
                *lv = (*lv).min(iw);
            }
        }
        if s.low[v] == s.index[v] {
            let mut component = vec![];
            while let Some(w) = s.stack.pop() {
                s.on_stack.remove(w);
                component.push(w.to_string());
                if w == v {
                    break;
                }
            }
            if component.len() > 1 {
                component.sort();
                s.out.push(component);
            }
        }
    }
    let mut s =
        State { index: BTreeMap::new(), low: BTreeMap::new(), stack: vec![], on_stack: BTreeSet::new(), out: vec![] };
    for v in graph.keys() {
        if !s.index.contains_key(v.as_str()) {
            visit(v, graph, &mut s);
        }
    }
    s.out
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

#[test]
fn no_module_imports_form_a_cycle() {
    let graph = dependencies(&src());
    assert!(graph.len() > 40, "the source tree was not read: {:?}", graph.keys());
    let found = cycles(&graph);
    let explain: Vec<String> = found
        .iter()
        .map(|c| {
            let edges: Vec<String> = c
                .iter()
                .flat_map(|a| graph[a].iter().filter(|b| c.contains(b)).map(move |b| format!("{a} -> {b}")))
                .collect();
            edges.join(", ")
        })
        .collect();
    assert!(found.is_empty(), "import cycles:\n{}", explain.join("\n"));
}

#[test]
fn the_pure_core_never_names_the_kubernetes_client_or_the_network() {
    let core = ["compliance", "pki", "plan", "render", "upgrade", "validate", "model", "names", "crd"];
    let forbidden = [
        "kube::Client",
        "kube::Api",
        "kube::api::Api",
        "tokio::net",
        "std::net::TcpStream",
        "crate::controller",
        "crate::probe",
    ];
    let mut found = vec![];
    for (module, file) in modules(&src()) {
        if !core.contains(&module.split("::").next().unwrap_or("")) {
            continue;
        }
        let code = code_of(&std::fs::read_to_string(&file).unwrap());
        for f in forbidden {
            if code.contains(f) {
                found.push(format!("{module} names {f}"));
            }
        }
    }
    assert!(found.is_empty(), "{found:#?}");
}

#[test]
fn the_checker_finds_a_cycle_and_ignores_ancestors() {
    let g = |edges: &[(&str, &str)]| {
        let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (a, b) in edges {
            g.entry(a.to_string()).or_default().insert(b.to_string());
            g.entry(b.to_string()).or_default();
        }
        g
    };
    assert_eq!(cycles(&g(&[("a", "b"), ("b", "c"), ("c", "a"), ("c", "d")])), vec![vec!["a", "b", "c"]]);
    assert!(cycles(&g(&[("a", "b"), ("b", "c")])).is_empty());
    let known: BTreeMap<String, PathBuf> =
        ["", "x", "x::y", "x::y::z", "w"].iter().map(|m| (m.to_string(), PathBuf::new())).collect();
    let p = |s: &str| s.split("::").map(String::from).collect::<Vec<_>>();
    assert_eq!(target("x::y::z", &p("super::Thing"), &known).as_deref(), Some("x::y"));
    assert_eq!(target("x::y", &p("crate::w::f"), &known).as_deref(), Some("w"));
    assert_eq!(target("x::y", &p("crate::x::y::z::T"), &known).as_deref(), Some("x::y::z"));
    let code = code_of(
        "use crate::x::{y::z, w}; // crate::w\nlet s = \"crate::w\"; let r = r#\"a \"crate::w\" b\"#; let q = '\"';",
    );
    let found: Vec<Vec<String>> = paths(&code);
    assert!(found.contains(&p("crate::x::y::z")), "{found:?}");
    assert_eq!(found.iter().filter(|f| f.contains(&"w".to_string())).count(), 1, "{found:?}");
}
