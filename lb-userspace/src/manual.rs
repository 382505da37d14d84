//! The manual, for packaging: man pages rendered from the clap definitions (clap_mangen), with
//! ipvsadm's grammar in `lbadm(8)` and the annotated configuration file as `lbadm.toml(5)`, and
//! shell completions (clap_complete). `lbadm generate` writes them; nothing here is
//! hand-maintained beside the code it documents.

use clap::Command;
use clap_complete::Shell;
use roff::{Roff, bold, roman};
use std::io;

/// The annotated example configuration: every key, its default and what it does.
pub const CONFIG_EXAMPLE: &str = include_str!("../dist/lbadm.toml");

/// Every man page as (file name, roff): `lbadm.8`, one `lbadm-VERB.8` per visible verb (and
/// per verb of a verb: `lbadm-realserver-setup.8`), and `lbadm.toml.5`. `ipvsadm_usage` is
/// the text of `lbadm -h`, for the section on ipvsadm's commands.
pub fn man_pages(cmd: Command, ipvsadm_usage: &str) -> io::Result<Vec<(String, Vec<u8>)>> {
    let mut cmd = cmd.disable_help_subcommand(true);
    cmd.build();
    let mut pages = vec![("lbadm.8".to_string(), top_page(&cmd, ipvsadm_usage)?)];
    verb_pages(&cmd, &mut pages)?;
    pages.push(("lbadm.toml.5".to_string(), config_page().into_bytes()));
    Ok(pages)
}

fn verb_pages(cmd: &Command, pages: &mut Vec<(String, Vec<u8>)>) -> io::Result<()> {
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let man = clap_mangen::Man::new(sub.clone())
            .section("8")
            .manual("lbadm");
        let mut out = Vec::new();
        man.render(&mut out)?;
        pages.push((man.get_filename(), out));
        verb_pages(sub, pages)?;
    }
    Ok(())
}

/// `lbadm(8)`: clap's sections, with ipvsadm's commands (which clap does not parse) after the
/// description, and the verbs' pages named.
fn top_page(cmd: &Command, ipvsadm_usage: &str) -> io::Result<Vec<u8>> {
    let man = clap_mangen::Man::new(cmd.clone())
        .section("8")
        .manual("lbadm");
    let mut out = Vec::new();
    man.render_title(&mut out)?;
    man.render_name_section(&mut out)?;
    man.render_synopsis_section(&mut out)?;
    man.render_description_section(&mut out)?;
    let mut ipvsadm = Roff::new();
    ipvsadm
        .control("SH", ["IPVSADM COMMANDS"])
        .text([roman(
            "Any first argument that is not one of the verbs below is read as ipvsadm v1.31's \
             command line, with ipvsadm's messages and exit codes, against the pinned maps:",
        )])
        .control("PP", [])
        .control("nf", [])
        .text([roman(ipvsadm_usage.trim_end())])
        .control("fi", []);
    out.extend(ipvsadm.render().into_bytes());
    man.render_options_section(&mut out)?;
    man.render_subcommands_section(&mut out)?;
    let mut see = Roff::new();
    let verbs: Vec<String> = cmd
        .get_subcommands()
        .filter(|s| !s.is_hide_set())
        .map(|s| format!("lbadm-{}(8)", s.get_name()))
        .collect();
    see.control("SH", ["SEE ALSO"]).text([roman(format!(
        "{}, lbadm.toml(5), ipvsadm(8), keepalived(8)",
        verbs.join(", ")
    ))]);
    out.extend(see.render().into_bytes());
    man.render_version_section(&mut out)?;
    Ok(out)
}

/// `lbadm.toml(5)`: the daemon's configuration file, as the annotated example shipped in
/// /etc/lbadm/lbadm.toml documents it.
pub fn config_page() -> String {
    let mut r = Roff::new();
    r.control("TH", ["LBADM.TOML", "5", "", "", "lbadm"])
        .control("SH", ["NAME"])
        .text([roman(
            "lbadm.toml - configuration of lbadm daemon, the health-checking director daemon",
        )])
        .control("SH", ["DESCRIPTION"])
        .text([
            bold("lbadm daemon --config FILE"),
            roman(
                " reads a TOML file that declares the interface, the virtual services with their \
                 scheduler, persistence, slow start and failure policy, their real servers with \
                 weights and connection thresholds, the health checks, and optionally \
                 connection sync and VIP announcement. The file is authoritative: services and \
                 reals in the maps that it does not name are removed at start and on SIGHUP. A \
                 malformed file is refused with file:line:column, the key and the reason; ",
            ),
            bold("lbadm daemon --check-config"),
            roman(" checks one without touching anything."),
        ])
        .control("SH", ["KEYS"])
        .text([roman(
            "Every key, with its default, as in the example installed as /etc/lbadm/lbadm.toml:",
        )])
        .control("PP", [])
        .control("nf", [])
        .text([roman(CONFIG_EXAMPLE.trim_end())])
        .control("fi", [])
        .control("SH", ["SEE ALSO"])
        .text([roman("lbadm(8), lbadm-daemon(8), keepalived.conf(5)")]);
    r.render()
}

/// The completion script of `shell` for `cmd`.
pub fn completions(cmd: Command, shell: Shell) -> Vec<u8> {
    let mut cmd = cmd;
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut cmd, "lbadm", &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cli() -> Command {
        Command::new("lbadm")
            .version("1.0")
            .about("Layer-4 load balancer")
            .subcommand(Command::new("attach").about("Attach it"))
            .subcommand(
                Command::new("realserver")
                    .about("Real-server side")
                    .subcommand(Command::new("setup").about("Set it up")),
            )
            .subcommand(Command::new("generate").hide(true))
    }

    #[test]
    fn a_page_per_visible_verb_and_ipvsadm_in_the_top_one() {
        let pages = man_pages(cli(), "Usage:\n  lbadm -A|E virtual-service\n.dot\n").unwrap();
        let names: Vec<&str> = pages.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "lbadm.8",
                "lbadm-attach.8",
                "lbadm-realserver.8",
                "lbadm-realserver-setup.8",
                "lbadm.toml.5"
            ]
        );
        let top = String::from_utf8(pages[0].1.clone()).unwrap();
        assert!(top.contains(".SH \"IPVSADM COMMANDS\""), "{top}");
        assert!(top.contains("lbadm \\-A|E virtual\\-service"), "{top}");
        // A line that starts with a dot is text, not a roff request.
        assert!(top.contains("\\&.dot"), "{top}");
        assert!(top.contains("lbadm\\-attach(8)"), "{top}");
        assert!(!top.contains("generate"), "{top}");
    }

    #[test]
    fn the_config_page_carries_every_key_of_the_example() {
        let page = config_page();
        assert!(page.contains("\n.TH LBADM.TOML 5"), "{page}");
        for key in [
            "iface",
            "scheduler",
            "slow_start",
            "max_conns",
            "on_failure",
            "[sync]",
        ] {
            assert!(CONFIG_EXAMPLE.contains(key), "{key}");
            assert!(page.contains(key), "{key} missing from the page");
        }
    }

    #[test]
    fn completions_name_the_verbs() {
        let bash = String::from_utf8(completions(cli(), Shell::Bash)).unwrap();
        assert!(
            bash.contains("attach") && bash.contains("realserver"),
            "{bash}"
        );
        let fish = String::from_utf8(completions(cli(), Shell::Fish)).unwrap();
        assert!(fish.contains("complete -c lbadm"), "{fish}");
    }
}
