//! The code's shape, checked on `src/` itself (docs/architecture.md): no import cycle between
//! two files, and no function outside tests longer than [`MAX_FUNCTION_LINES`].

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use crate::support::tools::root;

/// The longest a non-test function may be; longer work is split into named steps.
const MAX_FUNCTION_LINES: usize = 120;

/// Every `.rs` file under `src/`, by module path (`controller::reconcile::program`; the crate
/// root is `""`).
fn modules() -> BTreeMap<String, PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    let src = root().join("src");
    let mut files = Vec::new();
    walk(&src, &mut files);
    files
        .into_iter()
        .map(|path| {
            let rel = path.strip_prefix(&src).unwrap().with_extension("");
            let mut parts: Vec<String> = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            if matches!(
                parts.last().map(String::as_str),
                Some("mod" | "lib" | "main")
            ) {
                parts.pop();
            }
            (parts.join("::"), path)
        })
        .collect()
}

/// `text` with comments, string and char literals blanked (newlines kept), so that braces and
/// paths are only the code's.
fn code_only(text: &str) -> String {
    let b: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let blank = |c: char| if c == '\n' { '\n' } else { ' ' };
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let next = b.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < b.len() && b[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let start = i;
            i += 2;
            while i + 1 < b.len() && !(b[i] == '*' && b[i + 1] == '/') {
                i += 1;
            }
            i += 2;
            out.extend(b[start..i.min(b.len())].iter().map(|&c| blank(c)));
        } else if c == 'r'
            && (next == Some('"') || next == Some('#'))
            && !ident(b.get(i.wrapping_sub(1)))
        {
            // Raw string: r"..." or r#"..."#.
            let mut j = i + 1;
            let mut hashes = 0;
            while b.get(j) == Some(&'#') {
                hashes += 1;
                j += 1;
            }
            if b.get(j) != Some(&'"') {
                out.push(c);
                i += 1;
                continue;
            }
            j += 1;
            loop {
                if j >= b.len() {
                    break;
                }
                if b[j] == '"' && (0..hashes).all(|k| b.get(j + 1 + k) == Some(&'#')) {
                    j += 1 + hashes;
                    break;
                }
                j += 1;
            }
            out.extend(b[i..j.min(b.len())].iter().map(|&c| blank(c)));
            i = j;
        } else if c == '"' {
            let start = i;
            i += 1;
            while i < b.len() && b[i] != '"' {
                i += if b[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
            out.extend(b[start..i.min(b.len())].iter().map(|&c| blank(c)));
        } else if c == '\'' {
            // A char literal ('x', '\n', '\u{..}') or a lifetime ('a).
            let end = if next == Some('\\') {
                (i + 2..b.len()).find(|&k| b[k] == '\'')
            } else if b.get(i + 2) == Some(&'\'') {
                Some(i + 2)
            } else {
                None
            };
            match end {
                Some(end) => {
                    out.extend(std::iter::repeat_n(' ', end + 1 - i));
                    i = end + 1;
                }
                None => {
                    out.push(c);
                    i += 1;
                }
            }
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

fn ident(c: Option<&char>) -> bool {
    c.is_some_and(|c| c.is_alphanumeric() || *c == '_')
}

/// The index of the `}` closing the `{` at `open`.
fn matching_brace(code: &[u8], open: usize) -> usize {
    let mut depth = 0usize;
    for (i, &c) in code.iter().enumerate().skip(open) {
        match c {
            b'{' => depth += 1,
            b'}' => {
                depth -= 1;
                if depth == 0 {
                    return i;
                }
            }
            _ => {}
        }
    }
    code.len()
}

/// `code` without its `#[cfg(test)]` items (the attribute's item blanked to its closing brace).
fn without_tests(code: &str) -> String {
    let mut out = code.as_bytes().to_vec();
    let mut from = 0;
    while let Some(at) = code[from..].find("#[cfg(test)]").map(|i| i + from) {
        let item_end = match code[at..].find(['{', ';']).map(|i| i + at) {
            Some(i) if code.as_bytes()[i] == b'{' => matching_brace(code.as_bytes(), i),
            Some(i) => i,
            None => code.len() - 1,
        };
        for b in &mut out[at..=item_end.min(code.len() - 1)] {
            if *b != b'\n' {
                *b = b' ';
            }
        }
        from = item_end + 1;
    }
    String::from_utf8(out).unwrap()
}

/// The module a `crate::a::b::c` path lands in: its longest prefix that is a file.
fn resolve(modules: &BTreeMap<String, PathBuf>, path: &str) -> Option<String> {
    let mut parts: Vec<&str> = path.split("::").filter(|p| !p.is_empty()).collect();
    while !parts.is_empty() {
        let candidate = parts.join("::");
        if modules.contains_key(&candidate) {
            return Some(candidate);
        }
        parts.pop();
    }
    None
}

/// The files each file's code names (`crate::...` and `super::...` paths), tests excluded.
fn uses(modules: &BTreeMap<String, PathBuf>) -> BTreeMap<String, BTreeSet<String>> {
    let path_re = |code: &str, prefix: &str| -> Vec<String> {
        let mut found = Vec::new();
        let mut from = 0;
        while let Some(at) = code[from..].find(prefix).map(|i| i + from) {
            let before = code[..at].chars().next_back();
            let rest: String = code[at + prefix.len()..]
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
                .collect();
            if !ident(before.as_ref()) && before.is_none_or(|c| c != ':') {
                found.push(rest.trim_end_matches(':').to_string());
            }
            from = at + prefix.len();
        }
        found
    };
    modules
        .iter()
        .map(|(module, path)| {
            let code = without_tests(&code_only(&std::fs::read_to_string(path).unwrap()));
            // `super::` is the module's parent, whether the module is `x.rs` or `x/mod.rs`.
            let parent = module.rsplit_once("::").map_or("", |(p, _)| p).to_string();
            let mut targets = BTreeSet::new();
            for p in path_re(&code, "crate::") {
                targets.extend(resolve(modules, &p));
            }
            for p in path_re(&code, "super::") {
                let full = if parent.is_empty() {
                    p
                } else {
                    format!("{parent}::{p}")
                };
                targets.extend(resolve(modules, &full));
            }
            targets.remove(module);
            (module.clone(), targets)
        })
        .collect()
}

fn related(a: &str, b: &str) -> bool {
    a.is_empty()
        || b.is_empty()
        || a.starts_with(&format!("{b}::"))
        || b.starts_with(&format!("{a}::"))
}

#[test]
fn no_two_files_import_each_other() {
    let modules = modules();
    assert!(
        modules.len() > 50,
        "found only {} files in src/",
        modules.len()
    );
    let uses = uses(&modules);
    // The walk finds real edges (a checker that finds none would pass vacuously).
    assert!(uses["controller::reconcile::program"].contains("controller::reconcile::inputs"));
    let mut cycles = Vec::new();
    for (a, targets) in &uses {
        for b in targets {
            if a < b && !related(a, b) && uses[b].contains(a) {
                cycles.push(format!("{a} <-> {b}"));
            }
        }
    }
    assert!(
        cycles.is_empty(),
        "files that import each other (move what both need into a third file or the parent \
         module): {cycles:#?}"
    );
}

#[test]
fn no_function_outside_tests_is_longer_than_the_limit() {
    let mut long = Vec::new();
    let mut seen = 0;
    for path in modules().values() {
        let code = without_tests(&code_only(&std::fs::read_to_string(path).unwrap()));
        let bytes = code.as_bytes();
        let mut from = 0;
        while let Some(at) = code[from..].find("fn ").map(|i| i + from) {
            from = at + 3;
            if ident(code[..at].chars().next_back().as_ref()) {
                continue;
            }
            let name: String = code[at + 3..]
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            let Some(body) = code[at..].find(['{', ';']).map(|i| i + at) else {
                continue;
            };
            if bytes[body] == b';' || name.is_empty() {
                continue;
            }
            seen += 1;
            let end = matching_brace(bytes, body);
            let lines = code[at..=end.min(code.len() - 1)].lines().count();
            if lines > MAX_FUNCTION_LINES {
                let line = code[..at].lines().count() + 1;
                long.push(format!(
                    "{}:{line} fn {name}: {lines} lines",
                    path.display()
                ));
            }
        }
    }
    assert!(seen > 500, "found only {seen} functions in src/");
    assert!(
        long.is_empty(),
        "functions longer than {MAX_FUNCTION_LINES} lines (split them into named steps): {long:#?}"
    );
}

#[test]
fn the_checkers_see_through_literals_and_comments() {
    let code = code_only(
        "fn a() { let s = \"}{\"; let c = '{'; let r = r#\"}\"#; } // }\nfn b<'x>(v: &'x str) {}",
    );
    assert_eq!(code.matches('{').count(), 2, "{code}");
    assert_eq!(code.matches('}').count(), 2, "{code}");
    assert!(code.contains("fn b<'x>"));
    let tested = without_tests("fn keep() {}\n#[cfg(test)]\nmod tests { fn gone() {} }\n");
    assert!(tested.contains("keep") && !tested.contains("gone"));
}
