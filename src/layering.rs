//! The crate's layering, checked from its sources, so that the structure
//! cannot decay silently: the core names no optional feature, modules
//! import each other in no circle but the builder's and the pool's (each
//! names the other, as rayon's builder and pool do), and only the platform
//! seam (`sys`) names what Linux alone has.
//!
//! A module's imports are the `crate::` paths in its files (every file of
//! a directory module counts for it), comments and `#[cfg(test)]` modules
//! left out.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Files of the core: what every pool runs, whatever it was built with.
const CORE: &[&str] = &[
    "chunk.rs",
    "config.rs",
    "delivery.rs",
    "feed.rs",
    "hooks.rs",
    "process.rs",
    "results.rs",
    "shared.rs",
    "stream.rs",
    "launch/",
    "protocol/",
    "scheduler/",
    "sys/",
];

/// Optional features: they plug into the core's seams ([`crate::hooks`]).
const FEATURES: &[&str] = &["journal", "replay", "sandbox"];

/// What only Linux has, as code names it. Outside `sys`, only the
/// sandbox may name them: its rules are Linux only, and the modules that
/// apply them build with the native backend alone.
const LINUX_ONLY: &[&str] = &[
    "pidfd",
    "epoll",
    "eventfd",
    "memfd_create",
    "prctl",
    "getauxval",
    "SYS_close_range",
    "PipeFlags",
    "pipe_with",
    "setpipe_size",
    "renameat_with",
    "SIGRTMAX",
    "\"/proc/",
];

/// Where [`LINUX_ONLY`] may be named.
const PLATFORM_FILES: &[&str] = &["sys/", "sandbox/"];

/// The one circle allowed.
const ALLOWED_CIRCLE: &[&str] = &["builder", "pool"];

/// The text of a source file that counts: without its inline test
/// modules (`#[cfg(test)] mod name { ... }`) and comments (doc comments
/// name modules in prose).
fn code(text: &str) -> String {
    let mut lines = Vec::new();
    let mut in_block_comment = false;
    for line in text.lines() {
        let mut line = line;
        if in_block_comment {
            match line.find("*/") {
                Some(end) => {
                    line = &line[end + 2..];
                    in_block_comment = false;
                }
                None => continue,
            }
        }
        if let Some(start) = line.find("/*") {
            in_block_comment = !line[start..].contains("*/");
            line = &line[..start];
        }
        lines.push(line.split("//").next().unwrap_or(""));
    }
    let text = lines.join("\n");
    // Inline test modules, by their braces.
    let mut out = String::new();
    let mut rest = text.as_str();
    while let Some(at) = rest.find("#[cfg(test)]") {
        out.push_str(&rest[..at]);
        let after = &rest[at + "#[cfg(test)]".len()..];
        let item = after.trim_start();
        let inline = item.starts_with("mod ")
            && item
                .find(['{', ';'])
                .is_some_and(|end| item.as_bytes()[end] == b'{');
        if !inline {
            out.push_str("#[cfg(test)]");
            rest = after;
            continue;
        }
        let open = item.find('{').expect("checked");
        let mut depth = 0;
        let mut end = item.len();
        for (k, c) in item[open..].char_indices() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        end = open + k + 1;
                        break;
                    }
                }
                _ => {}
            }
        }
        rest = &item[end..];
    }
    out.push_str(rest);
    out
}

/// The crate's top modules `text` refers to: `crate::a::...` and every
/// first name of a `crate::{a, b::c, ...}` group.
fn imports(text: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 0;
            let mut start = true;
            for (k, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => {
                        rest = &group[k..];
                        break;
                    }
                    '}' => depth -= 1,
                    ',' if depth == 0 => start = true,
                    c if start && (c.is_ascii_alphanumeric() || c == '_') => {
                        let name: String = group[k..]
                            .chars()
                            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                            .collect();
                        found.insert(name);
                        start = false;
                    }
                    _ => {}
                }
            }
        } else {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            found.insert(name);
        }
    }
    found.retain(|name| name.starts_with(|c: char| c.is_ascii_lowercase()));
    found
}

/// Every `.rs` file under `dir`, as paths relative to `root`.
fn files(root: &Path, dir: &Path, out: &mut Vec<String>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("read src").path();
        if path.is_dir() {
            files(root, &path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let relative = path.strip_prefix(root).expect("under src");
            out.push(relative.to_string_lossy().into_owned());
        }
    }
}

/// The top module a file belongs to.
fn module(file: &str) -> String {
    let first = file.split('/').next().expect("a path");
    first.trim_end_matches(".rs").to_owned()
}

/// The import graph of the crate's top modules, and the core files that
/// import a feature.
fn read_src() -> (BTreeMap<String, BTreeSet<String>>, Vec<String>) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut all = Vec::new();
    files(&root, &root, &mut all);
    // This file names the features on purpose.
    all.retain(|file| file != "layering.rs");
    let modules: BTreeSet<String> = all.iter().map(|file| module(file)).collect();
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut upward = Vec::new();
    for file in &all {
        let text = std::fs::read_to_string(root.join(file)).expect("read a source file");
        let this = module(file);
        let mut refs = imports(&code(&text));
        refs.retain(|name| *name != this && modules.contains(name));
        let core = CORE
            .iter()
            .any(|c| file == c || (c.ends_with('/') && file.starts_with(c)));
        if core {
            for feature in FEATURES.iter().filter(|f| refs.contains(**f)) {
                upward.push(format!("{file} imports {feature}"));
            }
        }
        graph.entry(this).or_default().extend(refs);
    }
    (graph, upward)
}

/// Files outside [`PLATFORM_FILES`] that name what only Linux has, with
/// the name.
fn linux_only_outside_the_seam() -> Vec<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut all = Vec::new();
    files(&root, &root, &mut all);
    all.retain(|file| file != "layering.rs" && !PLATFORM_FILES.iter().any(|p| file.starts_with(p)));
    let mut found = Vec::new();
    for file in all {
        let text = code(&std::fs::read_to_string(root.join(&file)).expect("read a source file"));
        for name in LINUX_ONLY.iter().filter(|name| text.contains(**name)) {
            found.push(format!("{file} names {name}"));
        }
    }
    found
}

/// The strongly connected components of more than one module (Tarjan's).
fn circles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct Walk<'a> {
        graph: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        found: Vec<Vec<String>>,
    }
    impl<'a> Walk<'a> {
        fn visit(&mut self, v: &'a str) {
            let n = self.index.len();
            self.index.insert(v, n);
            self.low.insert(v, n);
            self.stack.push(v);
            for w in self.graph.get(v).into_iter().flatten() {
                let w = w.as_str();
                if !self.index.contains_key(w) {
                    self.visit(w);
                    let low = self.low[v].min(self.low[w]);
                    self.low.insert(v, low);
                } else if self.stack.contains(&w) {
                    let low = self.low[v].min(self.index[w]);
                    self.low.insert(v, low);
                }
            }
            if self.low[v] == self.index[v] {
                let mut component = Vec::new();
                while let Some(w) = self.stack.pop() {
                    component.push(w.to_owned());
                    if w == v {
                        break;
                    }
                }
                if component.len() > 1 {
                    component.sort();
                    self.found.push(component);
                }
            }
        }
    }
    let mut walk = Walk {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        found: Vec::new(),
    };
    for v in graph.keys() {
        if !walk.index.contains_key(v.as_str()) {
            walk.visit(v);
        }
    }
    walk.found
}

#[test]
fn the_core_imports_no_feature() {
    let (_, upward) = read_src();
    assert!(
        upward.is_empty(),
        "core files import optional features (plug them in through crate::hooks): {upward:#?}"
    );
}

#[test]
fn modules_import_each_other_in_no_circle_but_the_builders() {
    let (graph, _) = read_src();
    let found: Vec<Vec<String>> = circles(&graph)
        .into_iter()
        .filter(|circle| circle != ALLOWED_CIRCLE)
        .collect();
    assert!(found.is_empty(), "import circles: {found:?}");
    // The checker sees what it must: the crate has modules and imports.
    assert!(graph["scheduler"].contains("shared"));
    assert!(graph["journal"].contains("hooks"));
}

#[test]
fn only_the_platform_seam_names_what_linux_alone_has() {
    let found = linux_only_outside_the_seam();
    assert!(found.is_empty(), "outside src/sys: {found:?}");
}

#[test]
fn the_platform_seam_imports_nothing_of_the_crate() {
    let (graph, _) = read_src();
    let imports = &graph["sys"];
    assert!(imports.is_empty(), "sys imports {imports:?}");
}

#[test]
fn the_checker_finds_imports_and_circles() {
    let text = "use crate::a::X;\nuse crate::{b::{c, d}, e};\n// crate::f\nlet _ = crate::g::h();";
    let found = imports(&code(text));
    let want: BTreeSet<String> = ["a", "b", "e", "g"].map(String::from).into();
    assert_eq!(found, want);
    let graph: BTreeMap<String, BTreeSet<String>> = [
        ("a", vec!["b"]),
        ("b", vec!["c"]),
        ("c", vec!["a", "d"]),
        ("d", vec![]),
        ("e", vec!["d"]),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.into_iter().map(String::from).collect()))
    .collect();
    assert_eq!(circles(&graph), [vec!["a", "b", "c"]]);
    let cut =
        "use crate::x::Y;\n#[cfg(test)]\nmod tests {\n    use crate::z::W;\n}\nuse crate::v::U;\n";
    let want: BTreeSet<String> = ["v", "x"].map(String::from).into();
    assert_eq!(imports(&code(cut)), want);
    // A test module declared, not inline, hides nothing after it.
    let declared = "#[cfg(test)]\nmod layering;\nuse crate::w::V; /* crate::q */\n";
    assert_eq!(imports(&code(declared)), ["w".to_owned()].into());
}
