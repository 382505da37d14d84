pub mod assertions;
pub mod directors;
pub mod fixture;
pub mod fleet;
pub mod flood;
pub mod fuzz;
pub mod held;
pub mod lbbed;
pub mod model;
pub mod mysqlbed;
pub mod netns;
pub mod openmetrics;
pub mod packet;
pub mod testbed;

/// The `lbadm` binary of this build: next to a binary of this crate (`lb-bench`, `lb-demo`), or
/// next to the test executables' `deps`.
pub fn lbadm_bin() -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let here = exe.parent().expect("target dir");
    let dir = if here.join("lbadm").exists() {
        here
    } else {
        here.parent().expect("target dir")
    };
    let bin = dir.join("lbadm");
    assert!(
        bin.exists(),
        "{} is missing: build it with `cargo build -p lb-userspace`",
        bin.display()
    );
    bin
}
