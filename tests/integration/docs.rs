//! The documentation's links: every relative Markdown link in the README, the pages under
//! docs/ and benches/ and the READMEs of deploy/ and models/ must name a file or directory
//! that exists, and every `#anchor` a heading of the page it points into, under GitHub's
//! rules (lowercase; letters, digits, `_`, `-` and spaces kept, spaces become `-`, other
//! punctuation dropped; a repeated heading gets `-1`, `-2`, …). Links inside code blocks
//! and code spans are not links; links with a scheme (`https:`, `mailto:`) are not checked.

use std::collections::{BTreeSet, HashMap};
use std::path::{Component, Path, PathBuf};

use crate::helpers::repo;

/// The Markdown files whose links are checked, relative to the repository.
fn pages() -> Vec<PathBuf> {
    let mut pages = vec![
        PathBuf::from("README.md"),
        PathBuf::from("deploy/README.md"),
        PathBuf::from("models/README.md"),
    ];
    for dir in ["docs", "benches"] {
        let mut found: Vec<PathBuf> = std::fs::read_dir(repo().join(dir))
            .unwrap_or_else(|e| panic!("{dir}/ is readable: {e}"))
            .map(|entry| entry.expect("a directory entry").path())
            .filter(|path| path.extension().is_some_and(|e| e == "md"))
            .map(|path| path.strip_prefix(repo()).unwrap().to_path_buf())
            .collect();
        found.sort();
        pages.extend(found);
    }
    pages
}

/// The page's lines outside fenced code blocks, with their line numbers (from 1).
fn prose(text: &str) -> Vec<(usize, &str)> {
    let mut fence: Option<&str> = None;
    let mut lines = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        match fence {
            Some(marker) if trimmed.starts_with(marker) => fence = None,
            Some(_) => {}
            None if trimmed.starts_with("```") => fence = Some("```"),
            None if trimmed.starts_with("~~~") => fence = Some("~~~"),
            None => lines.push((i + 1, line)),
        }
    }
    lines
}

/// The line without its code spans (`` `…` ``), whose brackets are not links.
fn without_code_spans(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut in_code = false;
    for c in line.chars() {
        if c == '`' {
            in_code = !in_code;
        } else if !in_code {
            out.push(c);
        }
    }
    out
}

/// The targets of the inline links `[text](target)` and images `![alt](target)` in a line.
fn link_targets(line: &str) -> Vec<String> {
    let line = without_code_spans(line);
    let mut targets = Vec::new();
    let mut rest = line.as_str();
    while let Some(at) = rest.find("](") {
        let after = &rest[at + 2..];
        let Some(end) = after.find(')') else { break };
        let target = after[..end].trim();
        // `[text](target "title")`: the target is the first word.
        let target = target.split_whitespace().next().unwrap_or("");
        let target = target.trim_start_matches('<').trim_end_matches('>');
        if !target.is_empty() {
            targets.push(target.to_string());
        }
        rest = &after[end..];
    }
    targets
}

/// GitHub's anchor for a heading's text.
fn slug(heading: &str) -> String {
    // Rendered text: links keep their text, code spans and emphasis lose their markers.
    let mut text = String::new();
    let mut rest = heading;
    while let Some(open) = rest.find('[') {
        match rest[open..].find("](").zip(rest[open..].find(')')) {
            Some((mid, close)) if mid < close => {
                text.push_str(&rest[..open]);
                text.push_str(&rest[open + 1..open + mid]);
                rest = &rest[open + close + 1..];
            }
            _ => break,
        }
    }
    text.push_str(rest);
    text.to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// The anchors of a page's headings, repeated ones numbered as GitHub numbers them.
fn anchors(text: &str) -> BTreeSet<String> {
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut anchors = BTreeSet::new();
    for (_, line) in prose(text) {
        let hashes = line.chars().take_while(|&c| c == '#').count();
        if !(1..=6).contains(&hashes) || !line[hashes..].starts_with(' ') {
            continue;
        }
        let base = slug(line[hashes..].trim().trim_end_matches('#').trim());
        let count = seen.entry(base.clone()).or_insert(0);
        anchors.insert(if *count == 0 {
            base.clone()
        } else {
            format!("{base}-{count}")
        });
        *count += 1;
    }
    anchors
}

/// `path` with `.` and `..` resolved, without touching the file system.
fn normalise(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

/// Every broken link of one page, as `page:line: target: why`.
fn broken_links(page: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(repo().join(page))
        .unwrap_or_else(|e| panic!("{} is readable: {e}", page.display()));
    let dir = page.parent().unwrap_or(Path::new(""));
    let mut broken = Vec::new();
    for (number, line) in prose(&text) {
        for target in link_targets(line) {
            if target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            let (path, anchor) = match target.split_once('#') {
                Some((path, anchor)) => (path, Some(anchor)),
                None => (target.as_str(), None),
            };
            let file = if path.is_empty() {
                page.to_path_buf()
            } else {
                normalise(&dir.join(path))
            };
            let mut problem = |why: String| {
                broken.push(format!("{}:{number}: {target}: {why}", page.display()));
            };
            let full = repo().join(&file);
            if !full.exists() {
                problem(format!("{} does not exist", file.display()));
                continue;
            }
            let Some(anchor) = anchor else { continue };
            if full.extension().is_none_or(|e| e != "md") {
                problem(format!(
                    "an anchor into {}, which is no Markdown page",
                    file.display()
                ));
                continue;
            }
            let target_text = std::fs::read_to_string(&full).expect("a readable page");
            if !anchors(&target_text).contains(anchor) {
                problem(format!("no heading of {} has this anchor", file.display()));
            }
        }
    }
    broken
}

#[test]
fn every_relative_link_and_anchor_in_the_docs_resolves() {
    let pages = pages();
    assert!(
        pages.len() >= 8,
        "expected the README and the pages under docs/ and benches/, found {pages:?}"
    );
    let broken: Vec<String> = pages.iter().flat_map(|p| broken_links(p)).collect();
    assert!(
        broken.is_empty(),
        "broken links in the documentation:\n{}",
        broken.join("\n")
    );
}

#[test]
fn anchors_follow_githubs_rules() {
    assert_eq!(
        slug("State, snapshots and recovery"),
        "state-snapshots-and-recovery"
    );
    assert_eq!(
        slug("`hot_path.rs`: the hot path, step by step"),
        "hot_pathrs-the-hot-path-step-by-step"
    );
    assert_eq!(
        slug("2026-12-01: the sink's effect writes batched"),
        "2026-12-01-the-sinks-effect-writes-batched"
    );
    assert_eq!(
        slug("End-to-end programs (`churnd-bench`)"),
        "end-to-end-programs-churnd-bench"
    );
    assert_eq!(slug("See [the runbooks](runbooks.md)"), "see-the-runbooks");
    let page = "# A\n\n## Silence sweep\n\n```sh\n# not a heading\n```\n\n## Silence sweep\n";
    let found: Vec<String> = anchors(page).into_iter().collect();
    assert_eq!(found, ["a", "silence-sweep", "silence-sweep-1"]);
}

#[test]
fn links_in_code_are_not_links() {
    assert_eq!(
        link_targets("see [a](a.md#x) and `[b](b.md)`, then ![c](c.png \"title\")"),
        ["a.md#x", "c.png"]
    );
    assert!(link_targets("`[tasks.convert]`(3) and [x]").is_empty());
}
