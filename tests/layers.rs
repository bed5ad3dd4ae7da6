//! The crate's modules import one way: no import cycles, and every import
//! goes down the layers the folders show (README "Layout"). A small reader
//! of `use` paths, so the check runs with the tests and needs no tool: it
//! follows `crate::`, `super::` and `self::` paths (grouped ones too) and
//! `pub use` re-exports to the module that defines an item. A module's use of
//! its own submodules is ownership, not an import; test code is skipped.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// The layers, top first: a module may import its own layer's modules and
/// those below, never one above. Within a layer, imports must not cycle.
const LAYERS: &[(&str, &[&str])] = &[
    ("assembly", &["main", "gateway", "demo", "cli"]),
    ("HTTP edge", &["server"]),
    ("the product's verbs", &["api"]),
    ("the drain", &["drain"]),
    ("a queue at run time", &["queue"]),
    ("backend seams and backends", &["backend"]),
    (
        "foundation",
        &["http", "upstream", "ticket", "metrics", "config", "clock"],
    ),
];

/// A module path, `a::b` for `src/a/b.rs`.
type Module = String;

struct Crate {
    /// Every module and its source, test code removed.
    sources: BTreeMap<Module, String>,
    /// `pub use` re-exports: (module, name) → the module the name comes from.
    reexports: BTreeMap<(Module, String), Module>,
}

fn modules(root: &Path) -> BTreeMap<Module, String> {
    let mut out = BTreeMap::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let rel = path.strip_prefix(root).unwrap().with_extension("");
            let segments: Vec<String> = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            if segments.iter().any(|s| s == "tests") || segments == ["lib"] {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            out.insert(segments.join("::"), code_only(&text));
        }
    }
    out
}

/// The source without comments and without its `#[cfg(test)]` module
/// (by convention the file's last item).
fn code_only(text: &str) -> String {
    let mut out = String::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        let t = line.trim_start();
        if t == "#[cfg(test)]"
            && lines
                .peek()
                .is_some_and(|l| l.trim_start().starts_with("mod tests"))
        {
            break;
        }
        if t.starts_with("//") {
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// Every path that starts with one of `roots` (`crate`, `super`, …) in
/// `code`, with `{…}` groups expanded: `crate::a::{b, c::d}` gives
/// `crate::a::b` and `crate::a::c::d`.
fn paths(code: &str, roots: &[&str]) -> Vec<Vec<String>> {
    let bytes = code.as_bytes();
    let mut out = Vec::new();
    for root in roots {
        let needle = format!("{root}::");
        let mut from = 0;
        while let Some(at) = code[from..].find(&needle) {
            let start = from + at;
            from = start + needle.len();
            let before = start.checked_sub(1).map(|i| bytes[i]);
            if before.is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':') {
                continue;
            }
            let mut prefix = vec![root.to_string()];
            expand(code, &mut from, &mut prefix, &mut out);
        }
    }
    out
}

/// Reads `a::b::{…}` at `*at` after `prefix`, pushing whole paths.
fn expand(code: &str, at: &mut usize, prefix: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    let bytes = code.as_bytes();
    let depth = prefix.len();
    loop {
        while *at < bytes.len() && bytes[*at].is_ascii_whitespace() {
            *at += 1;
        }
        if *at < bytes.len() && bytes[*at] == b'{' {
            *at += 1;
            loop {
                let mut inner = prefix.clone();
                expand(code, at, &mut inner, out);
                while *at < bytes.len() && bytes[*at].is_ascii_whitespace() {
                    *at += 1;
                }
                match bytes.get(*at) {
                    Some(b',') => {
                        *at += 1;
                        while *at < bytes.len() && bytes[*at].is_ascii_whitespace() {
                            *at += 1;
                        }
                        if bytes.get(*at) == Some(&b'}') {
                            *at += 1;
                            break;
                        }
                    }
                    Some(b'}') => {
                        *at += 1;
                        break;
                    }
                    _ => break,
                }
            }
            prefix.truncate(depth);
            return;
        }
        let ident_end = code[*at..]
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .map_or(code.len(), |i| *at + i);
        if ident_end == *at {
            break;
        }
        prefix.push(code[*at..ident_end].to_string());
        *at = ident_end;
        if code[*at..].starts_with("::") {
            *at += 2;
        } else {
            break;
        }
    }
    if prefix.len() > 1 {
        out.push(prefix.clone());
    }
}

impl Crate {
    fn read(root: &Path) -> Crate {
        let sources = modules(root);
        let mut krate = Crate {
            sources,
            reexports: BTreeMap::new(),
        };
        let mut reexports = BTreeMap::new();
        for (module, code) in &krate.sources {
            for stmt in code.split("pub use ").skip(1) {
                let stmt = &stmt[..stmt.find(';').unwrap_or(stmt.len())];
                // Relative re-exports name a submodule: `pub use self::x::Y`, `pub use x::Y`.
                let text = if stmt.trim_start().starts_with("crate::")
                    || stmt.trim_start().starts_with("self::")
                    || stmt.trim_start().starts_with("super::")
                {
                    stmt.to_string()
                } else {
                    format!("self::{}", stmt.trim_start())
                };
                for path in paths(&text, &["crate", "self", "super"]) {
                    let Some(name) = path.last() else { continue };
                    if let Some(target) = krate.resolve(module, &path) {
                        if &target != module {
                            reexports.insert((module.clone(), name.clone()), target);
                        }
                    }
                }
            }
        }
        krate.reexports = reexports;
        krate
    }

    /// The module a path used in `module` points into.
    fn resolve(&self, module: &str, path: &[String]) -> Option<Module> {
        let mut segments: Vec<String> = Vec::new();
        let mut rest = path;
        match path.first().map(String::as_str) {
            Some("crate") | Some("flashgate") => rest = &path[1..],
            Some("self") => {
                segments = module.split("::").map(String::from).collect();
                rest = &path[1..];
            }
            Some("super") => {
                segments = module.split("::").map(String::from).collect();
                while rest.first().map(String::as_str) == Some("super") {
                    segments.pop();
                    rest = &rest[1..];
                }
            }
            _ => return None,
        }
        let mut found: Option<Module> = None;
        let mut next = None;
        for (i, seg) in rest.iter().enumerate() {
            segments.push(seg.clone());
            let candidate = segments.join("::");
            if self.sources.contains_key(&candidate) {
                found = Some(candidate);
                next = rest.get(i + 1);
            } else {
                break;
            }
        }
        let mut found = found.or_else(|| {
            // A path to the parent itself (`super::Item` from `a::b` is `a`).
            let parent = segments[..segments.len().saturating_sub(rest.len())].join("::");
            self.sources.contains_key(&parent).then_some(parent)
        })?;
        // Follow re-exports to the defining module.
        for _ in 0..4 {
            let Some(name) = next else { break };
            match self.reexports.get(&(found.clone(), name.clone())) {
                Some(target) => {
                    found = target.clone();
                    next = None;
                }
                None => break,
            }
        }
        Some(found)
    }

    /// Import edges between modules; a module's use of its own submodules
    /// (declaring and re-exporting them) is left out.
    fn edges(&self) -> BTreeMap<Module, BTreeSet<Module>> {
        let mut edges: BTreeMap<Module, BTreeSet<Module>> = BTreeMap::new();
        for (module, code) in &self.sources {
            let roots: &[&str] = if module == "main" {
                &["flashgate"]
            } else {
                &["crate", "super", "self"]
            };
            for path in paths(code, roots) {
                let Some(target) = self.resolve(module, &path) else {
                    continue;
                };
                let owned = target == *module || target.starts_with(&format!("{module}::"));
                if !owned {
                    edges.entry(module.clone()).or_default().insert(target);
                }
            }
        }
        edges
    }
}

/// The import cycles: each strongly connected set of two or more modules.
fn cycles(edges: &BTreeMap<Module, BTreeSet<Module>>) -> Vec<Vec<Module>> {
    // Tarjan's algorithm, iterative enough for a crate's few dozen modules.
    struct State<'a> {
        edges: &'a BTreeMap<Module, BTreeSet<Module>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        out: Vec<Vec<Module>>,
    }
    fn visit<'a>(s: &mut State<'a>, v: &'a str) {
        let i = s.index.len();
        s.index.insert(v, i);
        s.low.insert(v, i);
        s.stack.push(v);
        s.on_stack.insert(v);
        if let Some(next) = s.edges.get(v) {
            for w in next {
                if !s.index.contains_key(w.as_str()) {
                    visit(s, w);
                    let lw = s.low[w.as_str()];
                    let lv = s.low.get_mut(v).unwrap();
                    *lv = (*lv).min(lw);
                } else if s.on_stack.contains(w.as_str()) {
                    let iw = s.index[w.as_str()];
                    let lv = s.low.get_mut(v).unwrap();
                    *lv = (*lv).min(iw);
                }
            }
        }
        if s.low[v] == s.index[v] {
            let mut component = Vec::new();
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
    let mut s = State {
        edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        out: Vec::new(),
    };
    let nodes: BTreeSet<&str> = edges
        .iter()
        .flat_map(|(k, v)| std::iter::once(k.as_str()).chain(v.iter().map(String::as_str)))
        .collect();
    for v in nodes {
        if !s.index.contains_key(v) {
            visit(&mut s, v);
        }
    }
    s.out
}

fn layer_of(module: &str) -> Option<usize> {
    let top = module.split("::").next()?;
    LAYERS.iter().position(|(_, tops)| tops.contains(&top))
}

fn src() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

#[test]
fn modules_import_without_cycles() {
    let krate = Crate::read(&src());
    let found = cycles(&krate.edges());
    let text: Vec<String> = found.iter().map(|c| c.join(" <-> ")).collect();
    assert!(found.is_empty(), "import cycles:\n{}", text.join("\n"));
}

#[test]
fn every_import_goes_down_the_layers() {
    let krate = Crate::read(&src());
    let mut wrong = Vec::new();
    for module in krate.sources.keys() {
        if layer_of(module).is_none() {
            wrong.push(format!(
                "{module}: in no layer (add its folder to LAYERS and the README)"
            ));
        }
    }
    for (from, targets) in krate.edges() {
        for to in targets {
            if let (Some(a), Some(b)) = (layer_of(&from), layer_of(&to)) {
                if a > b {
                    wrong.push(format!(
                        "{from} ({}) imports {to} ({}), a layer above it",
                        LAYERS[a].0, LAYERS[b].0
                    ));
                }
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn the_reader_sees_grouped_relative_and_reexported_imports() {
    let code = "use crate::a::{b, c::{d, E}};\nuse super::f::G;\nfn x() { crate::h::i(); }\n";
    let got = paths(code, &["crate", "super"]);
    let want: Vec<Vec<String>> = [
        &["crate", "a", "b"][..],
        &["crate", "a", "c", "d"],
        &["crate", "a", "c", "E"],
        &["crate", "h", "i"],
        &["super", "f", "G"],
    ]
    .iter()
    .map(|p| p.iter().map(|s| s.to_string()).collect())
    .collect();
    assert_eq!(got, want);
    let mut edges = BTreeMap::new();
    edges.insert("a".to_string(), BTreeSet::from(["b".to_string()]));
    edges.insert("b".to_string(), BTreeSet::from(["c".to_string()]));
    edges.insert("c".to_string(), BTreeSet::from(["a".to_string()]));
    edges.insert("d".to_string(), BTreeSet::from(["a".to_string()]));
    assert_eq!(cycles(&edges), vec![vec!["a", "b", "c"]]);
    assert_eq!(
        code_only("use crate::x;\n// crate::y\n#[cfg(test)]\nmod tests {\n use crate::z;\n}\n"),
        "use crate::x;\n"
    );
}
