//! The agent's module structure, checked from its source: no import cycles between
//! subsystems, and a Kubernetes model (`src/model/`) that depends on nothing else in the
//! crate and does no I/O.
//!
//! The graph: every top-level module of `src/` is a node (`cgroups`, `eviction`, ...),
//! except the folders in [`SPLIT`], whose direct submodules are nodes of their own
//! (`pods::plan`, `events::poll`). An edge is any path that
//! starts with `crate::`, `super::` or `self::` (in `use` trees too) and leads into another
//! node. Comments, string literals and `#[cfg(test)]` items are not code the agent runs and
//! are skipped, as are test-only files (`tests.rs`, `tests/`).
//!
//! A name imported once and then used as `plan::X` counts through its `use` line, which
//! is where every cross-module reference starts; the one blind spot is `use crate::pods;`
//! followed by `pods::plan::X`, which counts as an edge to `pods` alone.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// Folders whose direct submodules are separate nodes: folders that still hold several
/// jobs. `pods/`: sources, planner, CRI configs, volumes, workers. `events/`: the event model
/// (`mod.rs`, which `bpf` and the cgroup attributor produce) and the sources that choose
/// between `bpf` and polling (`source.rs`, `poll`); counted as one node they would make a
/// cycle (`bpf` -> `events` -> `bpf`) that no module of theirs has.
const SPLIT: &[&str] = &["events", "pods"];

/// Cycles the tree may still have, each with why (none today). A cycle not listed fails the
/// test; so does a listed one that is gone (remove it here).
const KNOWN_CYCLES: &[(&[&str], &str)] = &[];

/// Paths in `src/model/` that would mean I/O.
const MODEL_FORBIDDEN: &[&str] = &[
    "std::fs",
    "std::net",
    "std::process",
    "std::io",
    "tokio",
    "nix::",
    "libc::",
    "hyper",
    "tonic",
    "aya",
    "inotify",
];

struct Source {
    /// The module path, `["pods", "volumes", "subpath"]`.
    module: Vec<String>,
    file: PathBuf,
    /// The code with comments, literals and `#[cfg(test)]` items blanked out.
    code: String,
}

fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).unwrap_or_else(|e| panic!("read {}: {e}", dir.display())) {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The crate's library modules, test-only files left out.
fn sources() -> Vec<Source> {
    let root = src_dir();
    let mut files = Vec::new();
    rust_files(&root, &mut files);
    files.sort();
    let mut out = Vec::new();
    for file in files {
        let rel = file.strip_prefix(&root).expect("under src");
        let mut module: Vec<String> = rel
            .with_extension("")
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect();
        if module.last().is_some_and(|m| m == "mod") {
            module.pop();
        }
        if module == ["lib"] || module == ["main"] {
            continue;
        }
        if module.iter().any(|m| m == "tests" || m == "testing") {
            continue;
        }
        let text =
            fs::read_to_string(&file).unwrap_or_else(|e| panic!("read {}: {e}", file.display()));
        out.push(Source {
            module,
            file: rel.to_path_buf(),
            code: strip_cfg_test(&blank_comments_and_literals(&text)),
        });
    }
    out
}

/// Replaces comments and string/char literals with spaces (newlines kept).
fn blank_comments_and_literals(text: &str) -> String {
    let c: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    let blank = |out: &mut String, s: &[char]| {
        for &ch in s {
            out.push(if ch == '\n' { '\n' } else { ' ' });
        }
    };
    while i < c.len() {
        let rest = &c[i..];
        if rest.starts_with(&['/', '/']) {
            let end = rest.iter().position(|&ch| ch == '\n').unwrap_or(rest.len());
            blank(&mut out, &rest[..end]);
            i += end;
        } else if rest.starts_with(&['/', '*']) {
            let mut depth = 0;
            let mut j = 0;
            while j < rest.len() {
                if rest[j..].starts_with(&['/', '*']) {
                    depth += 1;
                    j += 2;
                } else if rest[j..].starts_with(&['*', '/']) {
                    depth -= 1;
                    j += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    j += 1;
                }
            }
            blank(&mut out, &rest[..j.min(rest.len())]);
            i += j;
        } else if let Some(len) = raw_string_len(rest) {
            blank(&mut out, &rest[..len]);
            i += len;
        } else if rest[0] == '"' || (rest[0] == 'b' && rest.get(1) == Some(&'"')) {
            let start = usize::from(rest[0] == 'b') + 1;
            let mut j = start;
            while j < rest.len() && rest[j] != '"' {
                j += if rest[j] == '\\' { 2 } else { 1 };
            }
            let len = (j + 1).min(rest.len());
            blank(&mut out, &rest[..len]);
            i += len;
        } else if rest[0] == '\'' {
            // A char literal ('x', '\n', '\u{1F600}'), or a lifetime ('a) left as it is.
            let len = if rest.get(1) == Some(&'\\') {
                rest.iter()
                    .skip(2)
                    .position(|&ch| ch == '\'')
                    .map(|p| p + 3)
            } else if rest.get(2) == Some(&'\'') {
                Some(3)
            } else {
                None
            };
            match len {
                Some(len) => {
                    blank(&mut out, &rest[..len]);
                    i += len;
                }
                None => {
                    out.push('\'');
                    i += 1;
                }
            }
        } else {
            // An identifier ending in r or b (`for`, `sub`) must not start a literal.
            if rest[0].is_alphanumeric() || rest[0] == '_' {
                let end = rest
                    .iter()
                    .position(|&ch| !(ch.is_alphanumeric() || ch == '_'))
                    .unwrap_or(rest.len());
                out.extend(&rest[..end]);
                i += end;
            } else {
                out.push(rest[0]);
                i += 1;
            }
        }
    }
    out
}

/// The length of a raw string literal (`r"…"`, `r#"…"#`, `br"…"`) at the start of `s`.
fn raw_string_len(s: &[char]) -> Option<usize> {
    let mut j = usize::from(s.first() == Some(&'b'));
    if s.get(j) != Some(&'r') {
        return None;
    }
    j += 1;
    let hashes = s[j..].iter().take_while(|&&ch| ch == '#').count();
    j += hashes;
    if s.get(j) != Some(&'"') {
        return None;
    }
    j += 1;
    let close: Vec<char> = std::iter::once('"')
        .chain(std::iter::repeat_n('#', hashes))
        .collect();
    while j < s.len() {
        if s[j..].starts_with(&close) {
            return Some(j + close.len());
        }
        j += 1;
    }
    Some(s.len())
}

/// Removes every item marked `#[cfg(test)]`: up to its `;`, or through its braces.
fn strip_cfg_test(code: &str) -> String {
    let mut out = String::new();
    let mut rest = code;
    while let Some(at) = rest.find("#[cfg(test)]") {
        out.push_str(&rest[..at]);
        let item = &rest[at..];
        let mut depth = 0usize;
        let mut end = item.len();
        for (i, ch) in item.char_indices().skip("#[cfg(test)]".len()) {
            match ch {
                '{' => depth += 1,
                '}' => {
                    depth = depth.saturating_sub(1);
                    if depth == 0 {
                        end = i + 1;
                        break;
                    }
                }
                ';' if depth == 0 => {
                    end = i + 1;
                    break;
                }
                _ => {}
            }
        }
        rest = &item[end..];
    }
    out.push_str(rest);
    out
}

/// Every path a source names through `crate::`, `super::` or `self::`, resolved to an
/// absolute module path (its last segments may be items).
fn paths(source: &Source) -> Vec<Vec<String>> {
    let chars: Vec<char> = source.code.chars().collect();
    let mut found = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let at_word = i == 0
            || !(chars[i - 1].is_alphanumeric() || chars[i - 1] == '_' || chars[i - 1] == ':');
        if at_word
            && ["crate", "super", "self"]
                .iter()
                .any(|k| starts_with_word(&chars[i..], k))
        {
            let (trees, next) = path_tree(&chars, i);
            for tree in trees {
                if let Some(abs) = resolve(&source.module, &tree) {
                    found.push(abs);
                }
            }
            i = next.max(i + 1);
        } else {
            i += 1;
        }
    }
    found
}

fn starts_with_word(s: &[char], word: &str) -> bool {
    let w: Vec<char> = word.chars().collect();
    s.starts_with(&w) && s.get(w.len()) == Some(&':') && s.get(w.len() + 1) == Some(&':')
}

/// Parses `a::b::{c, d::{e, self}}` at `start`; returns each full path and the end.
fn path_tree(chars: &[char], start: usize) -> (Vec<Vec<String>>, usize) {
    let mut prefix = Vec::new();
    let mut i = start;
    loop {
        while chars.get(i).is_some_and(|c| c.is_whitespace()) {
            i += 1;
        }
        if chars.get(i) == Some(&'{') {
            let mut all = Vec::new();
            i += 1;
            loop {
                while chars.get(i).is_some_and(|c| c.is_whitespace() || *c == ',') {
                    i += 1;
                }
                match chars.get(i) {
                    None => return (all, i),
                    Some('}') => return (all, i + 1),
                    _ => {}
                }
                let (subs, next) = path_tree(chars, i);
                if next == i {
                    // Not a path (`*`, `as`): skip one character.
                    i += 1;
                    continue;
                }
                for sub in subs {
                    let mut p = prefix.clone();
                    p.extend(sub);
                    all.push(p);
                }
                i = next;
            }
        }
        let end = chars[i..]
            .iter()
            .position(|c| !(c.is_alphanumeric() || *c == '_'))
            .map_or(chars.len(), |p| i + p);
        if end == i {
            return (vec![prefix], i);
        }
        prefix.push(chars[i..end].iter().collect());
        i = end;
        if chars.get(i) == Some(&':') && chars.get(i + 1) == Some(&':') {
            i += 2;
        } else {
            return (vec![prefix], i);
        }
    }
}

/// Makes a path absolute from the module it appears in.
fn resolve(module: &[String], path: &[String]) -> Option<Vec<String>> {
    let mut base: Vec<String> = Vec::new();
    let mut segments = path.iter().peekable();
    match segments.peek().map(|s| s.as_str()) {
        Some("crate") => {
            segments.next();
        }
        Some("self") => {
            segments.next();
            base = module.to_vec();
        }
        Some("super") => {
            base = module.to_vec();
            while segments.peek().map(|s| s.as_str()) == Some("super") {
                segments.next();
                base.pop()?;
            }
        }
        _ => return None,
    }
    base.extend(segments.filter(|s| *s != "self").cloned());
    Some(base)
}

/// The graph node a module path (or an item's path) belongs to.
fn node(path: &[String], modules: &BTreeSet<Vec<String>>) -> Option<String> {
    let top = path.first()?;
    if SPLIT.contains(&top.as_str())
        && let Some(sub) = path.get(1)
        && modules.contains(&path[..2].to_vec())
    {
        return Some(format!("{top}::{sub}"));
    }
    Some(top.clone())
}

/// node -> (node -> the first file and path that makes the edge).
type Graph = BTreeMap<String, BTreeMap<String, String>>;

fn graph(sources: &[Source]) -> Graph {
    let modules: BTreeSet<Vec<String>> = sources.iter().map(|s| s.module.clone()).collect();
    let mut edges = Graph::new();
    for source in sources {
        let Some(from) = node(&source.module, &modules) else {
            continue;
        };
        let out = edges.entry(from.clone()).or_default();
        for path in paths(source) {
            let Some(to) = node(&path, &modules) else {
                continue;
            };
            if to != from && modules.iter().any(|m| m.first() == path.first()) {
                out.entry(to)
                    .or_insert_with(|| format!("{}: {}", source.file.display(), path.join("::")));
            }
        }
    }
    edges
}

/// The strongly connected groups of more than one node (Tarjan), each sorted.
fn cycles(edges: &Graph) -> Vec<Vec<String>> {
    struct Tarjan<'a> {
        edges: &'a Graph,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        out: Vec<Vec<String>>,
    }
    impl<'a> Tarjan<'a> {
        fn visit(&mut self, v: &'a str) {
            let n = self.index.len();
            self.index.insert(v, n);
            self.low.insert(v, n);
            self.stack.push(v);
            self.on_stack.insert(v);
            let edges = self.edges;
            for w in edges.get(v).into_iter().flat_map(BTreeMap::keys) {
                if !self.index.contains_key(w.as_str()) {
                    self.visit(w);
                    let lw = self.low[w.as_str()];
                    let lv = self.low.get_mut(v).expect("visited");
                    *lv = (*lv).min(lw);
                } else if self.on_stack.contains(w.as_str()) {
                    let iw = self.index[w.as_str()];
                    let lv = self.low.get_mut(v).expect("visited");
                    *lv = (*lv).min(iw);
                }
            }
            if self.low[v] == self.index[v] {
                let mut group = Vec::new();
                while let Some(w) = self.stack.pop() {
                    self.on_stack.remove(w);
                    group.push(w.to_owned());
                    if w == v {
                        break;
                    }
                }
                if group.len() > 1 {
                    group.sort();
                    self.out.push(group);
                }
            }
        }
    }
    let mut t = Tarjan {
        edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        out: Vec::new(),
    };
    for v in edges.keys() {
        if !t.index.contains_key(v.as_str()) {
            t.visit(v);
        }
    }
    t.out.sort();
    t.out
}

fn describe(edges: &Graph, group: &[String]) -> String {
    let mut text = format!("{group:?}\n");
    for from in group {
        for (to, why) in edges.get(from).into_iter().flatten() {
            if group.contains(to) {
                text.push_str(&format!("    {from} -> {to}   ({why})\n"));
            }
        }
    }
    text
}

#[test]
fn no_new_import_cycles() {
    let edges = graph(&sources());
    let found = cycles(&edges);
    let known: Vec<Vec<String>> = KNOWN_CYCLES
        .iter()
        .map(|(group, _)| group.iter().map(|s| (*s).to_owned()).collect())
        .collect();
    let new: Vec<String> = found
        .iter()
        .filter(|g| !known.contains(g))
        .map(|g| describe(&edges, g))
        .collect();
    assert!(
        new.is_empty(),
        "import cycles between modules:\n{}",
        new.concat()
    );
    let gone: Vec<&Vec<String>> = known.iter().filter(|g| !found.contains(g)).collect();
    assert!(
        gone.is_empty(),
        "no longer cycles, remove them from KNOWN_CYCLES: {gone:?}"
    );
}

#[test]
fn the_model_depends_on_nothing_else_and_does_no_io() {
    let sources = sources();
    let edges = graph(&sources);
    let model_deps: Vec<(&String, &String)> = edges
        .get("model")
        .expect("src/model/ exists")
        .iter()
        .collect();
    assert!(
        model_deps.is_empty(),
        "model/ imports other modules: {model_deps:?}"
    );
    for source in sources.iter().filter(|s| s.module[0] == "model") {
        for word in MODEL_FORBIDDEN {
            assert!(
                !source.code.contains(word),
                "{} uses {word}: model/ does no I/O",
                source.file.display()
            );
        }
    }
}

/// The checker itself, on made-up sources: it must see `use` trees, `super::`, and
/// nothing in comments, strings or test items.
#[test]
fn the_checker_sees_imports_and_nothing_else() {
    let source = |module: &[&str], text: &str| Source {
        module: module.iter().map(|s| (*s).to_owned()).collect(),
        file: PathBuf::from(module.join("/")),
        code: strip_cfg_test(&blank_comments_and_literals(text)),
    };
    let sources = [
        source(
            &["a"],
            "use crate::{b::X, pods::{self, plan::Y}};\n// crate::c::Z\nconst S: &str = \"crate::c::Z\";\nfn f<'a>(x: &'a str) -> char { 'c' }\n#[cfg(test)]\nmod tests { use crate::d::W; }\n",
        ),
        source(&["b"], "pub struct X;\nfn g() { super::a::f(); }\n"),
        source(
            &["c"],
            "/* crate::a::f */ const R: &str = r#\"crate::a\"#;\n",
        ),
        source(&["d"], ""),
        source(&["pods"], "pub mod plan;\n"),
        source(
            &["pods", "plan"],
            "use super::super::c::R;\npub struct Y;\n",
        ),
    ];
    let edges = graph(&sources);
    let targets = |from: &str| -> Vec<&str> {
        edges
            .get(from)
            .into_iter()
            .flat_map(BTreeMap::keys)
            .map(String::as_str)
            .collect()
    };
    assert_eq!(targets("a"), ["b", "pods", "pods::plan"]);
    assert_eq!(targets("b"), ["a"]);
    assert_eq!(targets("c"), Vec::<&str>::new());
    assert_eq!(targets("pods::plan"), ["c"]);
    assert_eq!(cycles(&edges), [vec!["a".to_owned(), "b".to_owned()]]);
}
