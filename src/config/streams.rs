//! Checks across sections: the output streams (dead letters, tasks of every kind) must be
//! distinct from the input streams (every partition stream of them) and from each other
//! where they must not mix; input stream names that partitions cannot split.

use crate::decide::TaskKind;

use super::{Problem, Settings};

/// Problems with the streams of several sections together, by the key that names each.
pub(super) fn problems(s: &Settings) -> Vec<Problem> {
    let mut p = Vec::new();
    let inputs = &s.input_streams();
    let outputs = [
        ("dead_letter.stream", &s.dead_letter.stream),
        ("winback.stream", &s.winback.stream),
        ("winback.control_stream", &s.winback.control_stream),
    ];
    for (key, name) in outputs {
        if name.is_empty() {
            p.push(Problem::new(key, "must not be empty"));
        } else if inputs.contains(name) {
            p.push(Problem::new(
                key,
                format!("({name:?}) must not also be an input in source.streams"),
            ));
        }
    }
    if s.dead_letter.stream == s.winback.stream || s.dead_letter.stream == s.winback.control_stream
    {
        p.push(Problem::new(
            "dead_letter.stream",
            "must differ from winback.stream and winback.control_stream",
        ));
    }
    // The care kinds' control stream: apart from every stream someone acts on or reads.
    let control = &s.tasks.control_stream;
    let care_streams = TaskKind::CARE.map(|kind| s.tasks.stream(kind));
    if inputs.contains(control) {
        p.push(Problem::new(
            "tasks.control_stream",
            format!("({control:?}) must not also be an input in source.streams"),
        ));
    }
    if care_streams.contains(&control.as_str())
        || [
            &s.winback.stream,
            &s.winback.control_stream,
            &s.dead_letter.stream,
        ]
        .contains(&control)
    {
        p.push(Problem::new(
            "tasks.control_stream",
            format!(
                "({control:?}) must differ from the task streams (tasks.stream and each kind's own), winback.stream, winback.control_stream and dead_letter.stream"
            ),
        ));
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
            p.push(Problem::new(
                key,
                format!("({name:?}) must not also be an input in source.streams"),
            ));
        }
        if name == s.dead_letter.stream || name == s.winback.control_stream {
            p.push(Problem::new(
                key,
                format!(
                    "({name:?}) must differ from dead_letter.stream and winback.control_stream"
                ),
            ));
        }
    }
    p.extend(super::partitions::problems(s));
    let outcomes = &s.outcomes.stream;
    let task_streams = TaskKind::CARE.map(|kind| s.tasks.stream(kind));
    if inputs.contains(outcomes) {
        p.push(Problem::new(
            "outcomes.stream",
            format!("({outcomes:?}) must not also be an input in source.streams"),
        ));
    } else if [
        &s.dead_letter.stream,
        &s.winback.stream,
        &s.winback.control_stream,
    ]
    .into_iter()
    .chain([&s.tasks.control_stream])
    .map(String::as_str)
    .chain(task_streams)
    .any(|other| other == outcomes)
    {
        p.push(Problem::new(
            "outcomes.stream",
            format!("({outcomes:?}) must differ from the dead-letter and task streams"),
        ));
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems_with(change: impl FnOnce(&mut Settings)) -> Vec<String> {
        let mut s = Settings::default();
        change(&mut s);
        problems(&s).iter().map(ToString::to_string).collect()
    }

    #[test]
    fn outputs_are_not_inputs_and_do_not_mix() {
        assert_eq!(
            problems_with(|s| s.source.streams.push("churn:winback".into())),
            ["winback.stream (\"churn:winback\") must not also be an input in source.streams"]
        );
        assert_eq!(
            problems_with(|s| s.dead_letter.stream = "churn:winback:control".into()),
            ["dead_letter.stream must differ from winback.stream and winback.control_stream"]
        );
        assert_eq!(
            problems_with(|s| s.tasks.welcome.stream = "churn:events".into()),
            ["tasks.welcome.stream (\"churn:events\") must not also be an input in source.streams"]
        );
        assert_eq!(
            problems_with(|s| s.tasks.stream = "churn:events:dlq".into()),
            ["tasks.stream (\"churn:events:dlq\") must differ from dead_letter.stream and winback.control_stream"]
        );
        assert_eq!(
            problems_with(|s| s.tasks.control_stream = "crm:tasks".into()),
            ["tasks.control_stream (\"crm:tasks\") must differ from the task streams (tasks.stream and each kind's own), winback.stream, winback.control_stream and dead_letter.stream"]
        );
        assert!(problems(&Settings::default()).is_empty());
    }

    #[test]
    fn outputs_are_not_partition_streams_either() {
        assert_eq!(
            problems_with(|s| {
                s.partitions.count = crate::partition::PartitionCount::new(4).unwrap();
                s.dead_letter.stream = "churn:events:{3}".into();
            }),
            ["dead_letter.stream (\"churn:events:{3}\") must not also be an input in source.streams"]
        );
    }
}
