//! Property tests: whatever file the daemon is given (the annotated example cut, spliced,
//! with optional keys switched on and values mangled, or noise), it gets a configuration or one error naming the file, and never a panic.
use super::parse;
use proptest::prelude::*;
use std::path::Path;

const EXAMPLE: &str = include_str!("../../../dist/lbadm.toml");

/// Values that sit on a type's edges.
const VALUES: &[&str] = &[
    "0",
    "-1",
    "1",
    "4294967296",
    "9223372036854775807",
    "1e309",
    "nan",
    "\"\"",
    "\"0s\"",
    "\"1ms\"",
    "\"18446744073709551615s\"",
    "\"-1s\"",
    "\"1h\"",
    "\"x\"",
    "true",
    "[]",
    "{}",
    "\"255.255.255.255\"",
    "\"0.0.0.0\"",
    "\"224.0.0.1\"",
    "\"198.18.0.100\"",
    "\"::1\"",
    "\"tcp\"",
    "\"mysql\"",
    "\"required\"",
    "[\"/bin/true\"]",
    "[\"\"]",
];

fn mutated() -> impl Strategy<Value = String> {
    let lines: Vec<String> = EXAMPLE.lines().map(str::to_string).collect();
    let n = lines.len();
    (
        proptest::collection::vec(
            (0..n, 0u8..5, proptest::sample::select(VALUES), any::<u8>()),
            1..6,
        ),
        Just(lines),
    )
        .prop_map(|(edits, mut lines)| {
            for (at, kind, value, byte) in edits {
                let at = at % lines.len().max(1);
                match kind {
                    // Another value for the key on this line.
                    0 => {
                        if let Some((k, _)) = lines[at].split_once(" = ") {
                            lines[at] = format!("{k} = {value}");
                        }
                    }
                    1 => {
                        lines.remove(at);
                    }
                    2 => {
                        let l = lines[at].clone();
                        lines.insert(at, l);
                    }
                    // An optional key of the example, switched on.
                    3 => {
                        if let Some(l) = lines[at].strip_prefix("# ") {
                            lines[at] = l.to_string();
                        }
                    }
                    _ => {
                        let mut b = lines[at].clone().into_bytes();
                        if !b.is_empty() {
                            let i = byte as usize % b.len();
                            b[i] = byte;
                        }
                        lines[at] = String::from_utf8_lossy(&b).into_owned();
                    }
                }
                if lines.is_empty() {
                    break;
                }
            }
            lines.join("\n")
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2048))]

    #[test]
    fn any_mangled_example_is_a_configuration_or_one_error(text in mutated()) {
        if let Err(e) = parse(Path::new("lbadm.toml"), &text) {
            let e = e.to_string();
            prop_assert!(e.starts_with("lbadm.toml"), "{e}");
        }
    }

    #[test]
    fn noise_is_one_error(text in any::<String>()) {
        prop_assert!(parse(Path::new("lbadm.toml"), &text).is_err());
    }
}

#[test]
fn the_example_is_valid() {
    // The mutations start from a file that parses: otherwise every case would be an error.
    parse(Path::new("lbadm.toml"), EXAMPLE).unwrap();
}
