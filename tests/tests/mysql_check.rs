//! The mysql health check against MariaDB (Debian's): the monitor user's login and `SELECT 1`,
//! in clear and inside TLS, and `tls = "required"` failing against a server without TLS.
//! (MariaDB has no caching_sha2_password; the check's unit tests cover it with scripted
//! servers.)

use lb_tests::{
    mysqlbed::{self, MONITOR_PASSWORD, MONITOR_USER, MariaDb, TempDir, Template},
    netns::Netns,
};
use lb_userspace::daemon::{
    config,
    healthcheck::{CheckTarget, run_check},
};
use std::{
    net::{Ipv4Addr, SocketAddrV4},
    process::Command,
};

fn check(tls: &str) -> config::CheckConfig {
    let text = format!(
        "iface = \"lo\"\n[[service]]\nvip = \"10.0.0.1\"\nport = {}\n\
         [service.check]\ntype = \"mysql\"\nvia = \"direct\"\ntimeout = \"3s\"\ninterval = \"5s\"\n\
         user = \"{MONITOR_USER}\"\npassword = \"{MONITOR_PASSWORD}\"\ntls = \"{tls}\"\n\
         [[service.real]]\naddress = \"127.0.0.1\"\n",
        mysqlbed::PORT
    );
    let c = config::parse(std::path::Path::new("t.toml"), &text).expect("the check's file");
    c.services[0].reals[0].check.clone()
}

fn run(ns: &Netns, check: &config::CheckConfig) -> Result<std::time::Duration, String> {
    let target = CheckTarget::Direct(SocketAddrV4::new(Ipv4Addr::LOCALHOST, mysqlbed::PORT));
    ns.run(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(run_check(&target, check))
    })
}

#[test]
fn the_check_logs_in_to_mariadb_in_clear_and_inside_tls() {
    let template = Template::create(10).unwrap();
    let certs = TempDir::new("mysql-tls").unwrap();
    let (cert, key) = (certs.0.join("cert.pem"), certs.0.join("key.pem"));
    let o = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args(["-subj", "/CN=lbadm-test"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    let plain_ns = Netns::new("mycheck-plain").unwrap();
    plain_ns.set_up("lo").unwrap();
    let _plain = MariaDb::start(&plain_ns, "plain", &template).unwrap();
    let tls_ns = Netns::new("mycheck-tls").unwrap();
    tls_ns.set_up("lo").unwrap();
    let tls = MariaDb::start_with(
        &tls_ns,
        "tls",
        &template,
        &[
            format!("--ssl-cert={}", cert.display()),
            format!("--ssl-key={}", key.display()),
        ],
    )
    .unwrap();

    // In clear where the server has no TLS; TLS where it has, preferred or required.
    run(&plain_ns, &check("preferred")).expect("login in clear");
    run(&plain_ns, &check("off")).expect("login with tls = off");
    run(&tls_ns, &check("preferred")).expect("login inside TLS (preferred)");
    run(&tls_ns, &check("required")).expect("login inside TLS (required)");
    let e = run(&plain_ns, &check("required")).unwrap_err();
    assert!(e.contains("does not offer TLS"), "{e}");

    // A user the server lets in only over TLS proves the login went inside it.
    let o = Command::new("/usr/bin/mariadb")
        .arg(format!("--socket={}", tls.socket().display()))
        .args(["-uroot", "-e"])
        .arg("CREATE USER 'tlsonly'@'%' IDENTIFIED BY 'tls-secret' REQUIRE SSL")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let as_tlsonly = |mode: &str| {
        let mut c = check(mode);
        c.user = Some("tlsonly".into());
        c.password = Some(config::Secret::new("tls-secret".into()));
        run(&tls_ns, &c)
    };
    as_tlsonly("required").expect("a REQUIRE SSL user, inside TLS");
    let e = as_tlsonly("off").unwrap_err();
    assert!(e.starts_with("mysql: login: ERR 1045"), "{e}");

    // A wrong password: the server's refusal, and never the password.
    let mut wrong = check("required");
    wrong.password = Some(config::Secret::new("not-the-password".into()));
    let e = run(&tls_ns, &wrong).unwrap_err();
    assert!(e.starts_with("mysql: login: ERR 1045 Access denied"), "{e}");
    assert!(!e.contains("not-the-password"), "{e}");
}
