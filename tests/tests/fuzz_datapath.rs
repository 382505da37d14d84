//! The differential packet fuzzer's short run (`cargo xtask fuzz` runs long ones): the compiled
//! director and the reference model must agree on every frame.

/// A fixed seed, so a failure here is reproduced by running it again, and one from the clock,
/// so every run also looks somewhere new (a failure prints its seed).
#[test]
fn the_director_agrees_with_its_model_on_20000_frames() {
    let clock = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    for seed in [0x6c62_6164_6d00_0001, clock] {
        let report = lb_tests::fuzz::run(10_000, seed, false)
            .unwrap_or_else(|e| panic!("seed {seed}: {e:#}"));
        eprintln!("seed {seed}: {report}");
        assert_eq!(report.packets, 10_000);
        // The run reached the data path's main decisions, not only its early exits.
        for r in [
            lb_common::Reason::TxForwarded,
            lb_common::Reason::NewConn,
            lb_common::Reason::PassMalformed,
            lb_common::Reason::Confirmed,
        ] {
            assert!(
                report.reasons.iter().any(|&(x, n)| x == r && n > 0),
                "seed {seed}: no {} in {report}",
                r.name()
            );
        }
    }
}
