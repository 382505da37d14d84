//! Reading a /metrics exposition with an independent, strict OpenMetrics parser: Prometheus'
//! own Python client's (`cargo xtask setup` installs it). A malformed exposition fails the
//! parse, and the test with it.

use anyhow::{Context as _, Result, bail};
use std::{
    collections::HashMap,
    io::Write as _,
    process::{Command, Stdio},
};

/// One sample: its name (with `_total` for a counter), labels and value.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Sample {
    pub name: String,
    pub labels: HashMap<String, String>,
    pub value: f64,
}

/// One metric family: its name, OpenMetrics type and samples.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Family {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub samples: Vec<Sample>,
}

const PARSE: &str = r#"
import json, sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
out = [{"name": f.name, "type": f.type,
        "samples": [{"name": s.name, "labels": s.labels, "value": s.value} for s in f.samples]}
       for f in text_string_to_metric_families(sys.stdin.read())]
print(json.dumps(out))
"#;

/// Parses `body`; an error carries the parser's complaint.
pub fn parse(body: &str) -> Result<Vec<Family>> {
    let mut child = Command::new("python3")
        .args(["-c", PARSE])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running python3 (the OpenMetrics parser)")?;
    child
        .stdin
        .take()
        .context("stdin")?
        .write_all(body.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "the OpenMetrics parser refused the exposition: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// The value of the sample `name` whose labels include `labels`.
pub fn value(families: &[Family], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    families
        .iter()
        .flat_map(|f| &f.samples)
        .find(|s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_parser_refuses_what_is_not_openmetrics() {
        let f = parse("# TYPE a counter\na_total{x=\"1\"} 2\n# EOF\n").unwrap();
        assert_eq!(f[0].kind, "counter");
        assert_eq!(value(&f, "a_total", &[("x", "1")]), Some(2.0));
        for bad in [
            "# TYPE a counter\na_total 2\n",  // no # EOF
            "a{x=\"1\" 2\n# EOF\n",           // broken labels
            "# TYPE a counter\na 2\n# EOF\n", // a counter sample without _total
        ] {
            assert!(parse(bad).is_err(), "accepted: {bad:?}");
        }
    }
}
