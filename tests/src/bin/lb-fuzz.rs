//! `cargo xtask fuzz --packets N [--seed S]`: a long run of the differential packet fuzzer
//! (`lb_tests::fuzz`). Needs root (namespaces, BPF).
use anyhow::{Context as _, Result, bail};

fn main() -> Result<()> {
    let mut packets = 1_000_000u64;
    let mut seed = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = |name: &str| -> Result<u64> {
            args.next()
                .with_context(|| format!("{name} needs a number"))?
                .parse()
                .with_context(|| format!("{name} needs a number"))
        };
        match a.as_str() {
            "--packets" => packets = value("--packets")?,
            "--seed" => seed = Some(value("--seed")?),
            _ => bail!("unknown argument {a:?}: lb-fuzz [--packets N] [--seed S]"),
        }
    }
    let seed = seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
    });
    eprintln!("lb-fuzz: {packets} packets, seed {seed}");
    let report = lb_tests::fuzz::run(packets, seed, true)
        .with_context(|| format!("seed {seed} (run again with --seed {seed})"))?;
    print!("seed {seed}: {report}");
    Ok(())
}
