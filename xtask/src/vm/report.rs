//! What each test binary in the guest did, and why it failed.

use std::{
    fs::{self},
    path::Path,
};

use super::*;

/// Prints each test binary's result (its harness summary; the failures section when it
/// failed); true when all passed.
pub(super) fn report(tests: &[TestBin], run: &Path) -> bool {
    let mut all = true;
    eprintln!("vm-test: results in the guest:");
    for test in tests {
        let rc = fs::read_to_string(run.join(format!("{}.rc", test.name)))
            .ok()
            .and_then(|rc| rc.trim().parse::<i32>().ok());
        let log_text =
            fs::read_to_string(run.join(format!("{}.log", test.name))).unwrap_or_default();
        let summary = log_text
            .lines()
            .rfind(|line| line.starts_with("test result:"))
            .unwrap_or("(no `test result:` line)");
        let started = run.join(format!("{}.log", test.name)).exists();
        let verdict = match rc {
            Some(0) => "PASS",
            Some(_) => "FAIL",
            None if started => "DID NOT FINISH",
            None => "NOT RUN",
        };
        if rc != Some(0) {
            all = false;
        }
        eprintln!(
            "vm-test:   {:<18} {verdict:<5} (exit {}) {summary}",
            test.name,
            rc.map_or("?".into(), |rc| rc.to_string())
        );
        if rc.is_some_and(|rc| rc != 0) {
            // The harness's list of failed tests (the last `failures:` section), each with its
            // panic message and the first cause of an error chain, from its stdout section.
            let lines: Vec<&str> = log_text.lines().collect();
            if let Some(at) = lines.iter().rposition(|line| *line == "failures:") {
                for name in lines[at + 1..]
                    .iter()
                    .take_while(|line| !line.starts_with("test result:"))
                    .map(|line| line.trim())
                    .filter(|line| !line.is_empty())
                {
                    eprintln!("vm-test:       failed: {name}");
                    for detail in failure_details(&lines, name) {
                        eprintln!("vm-test:         {detail}");
                    }
                }
            }
        }
    }
    if run.join("ipip.failed").exists() {
        all = false;
        eprintln!(
            "vm-test:   realserver did not load the ipip module (tunl0 tests skipped): see the \
             `vm-suite: ERROR` line above"
        );
    }
    all
}

/// From a test binary's output: the panic message of test `name` and the first cause of its
/// error chain (`0: ...`), each cut to a readable length.
pub(super) fn failure_details(lines: &[&str], name: &str) -> Vec<String> {
    let header = format!("---- {name} stdout ----");
    let Some(start) = lines.iter().position(|line| *line == header) else {
        return Vec::new();
    };
    let section: Vec<&str> = lines[start + 1..]
        .iter()
        .take_while(|line| !(line.starts_with("---- ") && line.ends_with(" stdout ----")))
        .take_while(|line| **line != "failures:")
        .copied()
        .collect();
    let cut = |text: &str| {
        let text = text.trim();
        match text.char_indices().nth(300) {
            Some((at, _)) => format!("{}...", &text[..at]),
            None => text.to_string(),
        }
    };
    let mut details = Vec::new();
    if let Some(at) = section.iter().position(|line| line.contains("panicked at"))
        && let Some(message) = section.get(at + 1)
    {
        details.push(cut(message));
    }
    if let Some(cause) = section
        .iter()
        .find(|line| line.trim_start().starts_with("0: "))
    {
        details.push(format!("caused by: {}", cut(&cause.trim_start()[3..])));
    }
    // A full verifier log: its last words before the statistics say why.
    if let Some(at) = section
        .iter()
        .position(|line| line.trim_start().starts_with("verification time"))
        && let Some(reason) = section[..at]
            .iter()
            .rev()
            .find(|line| !line.trim().is_empty())
    {
        details.push(format!("verifier: {}", cut(reason)));
    }
    details
}
