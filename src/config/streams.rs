//! Checks across sections: the output streams (dead letters, tasks of every kind) must be
//! distinct from the input streams and from each other where they must not mix.

use crate::decide::TaskKind;

use super::Settings;

/// Problems with the streams of several sections together, by the key that names each.
pub(super) fn problems(s: &Settings) -> Vec<String> {
    let mut p = Vec::new();
    let inputs = &s.source.streams;
    let outputs = [
        ("dead_letter.stream", &s.dead_letter.stream),
        ("winback.stream", &s.winback.stream),
        ("winback.control_stream", &s.winback.control_stream),
    ];
    for (key, name) in outputs {
        if name.is_empty() {
            p.push(format!("{key} must not be empty"));
        } else if inputs.contains(name) {
            p.push(format!(
                "{key} ({name:?}) must not also be an input in source.streams"
            ));
        }
    }
    if s.dead_letter.stream == s.winback.stream || s.dead_letter.stream == s.winback.control_stream
    {
        p.push("dead_letter.stream must differ from the win-back streams".into());
    }
    // The streams the other kinds resolve to, each named once by the key that sets it
    // (the tasks section reports an empty tasks.stream).
    let mut care: Vec<_> = TaskKind::CARE
        .map(|kind| s.tasks.stream_setting(kind))
        .to_vec();
    care.sort_unstable();
    care.dedup();
    for (key, name) in care {
        if inputs.iter().any(|input| input == name) {
            p.push(format!(
                "{key} ({name:?}) must not also be an input in source.streams"
            ));
        }
        if name == s.dead_letter.stream || name == s.winback.control_stream {
            p.push(format!(
                "{key} ({name:?}) must differ from dead_letter.stream and winback.control_stream"
            ));
        }
    }
    if s.dead_letter.max_len == 0 || s.winback.max_len == 0 || s.tasks.max_len == 0 {
        p.push("dead_letter.max_len, winback.max_len and tasks.max_len must be at least 1".into());
    }
    p
}
