//! `punchscope probe`: the volunteer's one command. Parses the flags, asks for
//! consent, renders progress, prints the summary and maps the outcome to an
//! exit code; the run itself is [`punchscope::probe::run`].

use std::io::{BufRead, IsTerminal, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::bail;
use clap::Args;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use punchscope::analysis::handshake::{HandshakeBy, Role, Transport};
use punchscope::analysis::privacy::PRIVACY_NOTICE;
use punchscope::analysis::result::PairingEnded;
use punchscope::analysis::trial::TrialOutcome;
use punchscope::classify::EchoFamilies;
use punchscope::net::address::AddressPolicy;
use punchscope::node::{NodeOptions, RpcAuth, RpcConfig};
use punchscope::probe::campaign::{self, CampaignPreview, Endpoints};
use punchscope::probe::{
    self, PortMapOptions, Progress, ReferenceOptions, ReferenceProgress, RunEnding, RunOptions,
    RunOutcome, Stop, UploadStatus,
};
use punchscope::proto::rendezvous::{CampaignInfo, Mode};
use punchscope::upload;

/// Exit codes beyond 0 (done) and 1 (the tool failed).
const EXIT_NO_PEER: u8 = 3;
const EXIT_INTERRUPTED: u8 = 4;
/// Bound on asking the coordinator for its campaign.
const PREVIEW_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Debug, Args)]
pub struct ProbeArgs {
    /// The campaign to join: its coordinator, HOST[:PORT] (default port 8340).
    /// The coordinator names the campaign, its operator, echo servers and
    /// collector, shown before you agree; --echo and --collector override them.
    /// A name gives each of its addresses (IPv4 and IPv6 trials); without
    /// one, repeat it with each address of the same coordinator
    /// (`--campaign 198.51.100.10 --campaign [2001:db8::10]`): the campaign
    /// is asked of the first.
    #[arg(long, value_name = "HOST[:PORT]", conflicts_with = "server")]
    campaign: Vec<String>,
    /// The coordinator, HOST:PORT, without asking it for a campaign (give
    /// --echo and --collector). Repeat it with the coordinator's IPv6
    /// address (`[2001:db8::1]:8340`) beside its IPv4 one for IPv6 trials;
    /// a name gives each of its addresses.
    #[arg(long, required_unless_present = "campaign")]
    server: Vec<String>,
    /// Echo servers for NAT classification, HOST:PORT (give two IPs for a full
    /// verdict). Needed without --campaign; a reference peer classifies too when given them.
    #[arg(long = "echo", required_unless_present_any = ["serve_peer", "campaign"])]
    echo: Vec<String>,
    /// Collector to upload the result to, e.g. https://collector.example (else it stays in the spool).
    #[arg(long)]
    collector: Option<String>,
    /// CA certificates (PEM) to trust besides the built-in roots, for a collector with its own CA.
    #[arg(long, value_name = "FILE")]
    ca_file: Option<PathBuf>,
    /// Where results wait until the collector has them.
    #[arg(long)]
    spool: Option<PathBuf>,
    /// A label for your network, e.g. "home-fibre" (kept in the result).
    #[arg(long)]
    label: Option<String>,
    /// Pair only with a volunteer who gives the same code.
    #[arg(long)]
    pair_code: Option<String>,
    /// Run as a researcher's reference peer: pair with any waiting volunteer, again and again, until Ctrl-C.
    #[arg(long)]
    serve_peer: bool,
    /// Bridge mode: hand every punched connection to your own Bitcoin node,
    /// whose P2P port is at this address on this machine (e.g.
    /// 127.0.0.1:8333), instead of punchscope's own handshake; the result
    /// records what your node said about the peer. Needs --node-rpc.
    #[arg(long, value_name = "127.0.0.1:PORT", requires = "node_rpc")]
    node: Option<SocketAddr>,
    /// Your node's JSON-RPC, http://127.0.0.1:PORT (used for addnode onetry,
    /// getpeerinfo, disconnectnode). USER:PASSWORD@ may go in the URL;
    /// --node-cookie is better. The credentials never leave this machine.
    #[arg(long, value_name = "URL", requires = "node")]
    node_rpc: Option<String>,
    /// Your node's RPC cookie file, e.g. ~/.bitcoin/.cookie.
    #[arg(long, value_name = "FILE", requires = "node")]
    node_cookie: Option<PathBuf>,
    /// Accept a --node-rpc URL that is not loopback: the credentials then
    /// cross the network in clear text.
    #[arg(long, requires = "node")]
    node_rpc_allow_remote: bool,
    /// Experiments only: the role your node plays whatever the coordinator
    /// assigned (two initiators show what BIP324 does without roles).
    #[arg(long, hide = true, value_name = "ROLE", value_parser = parse_role, requires = "node")]
    node_force_role: Option<Role>,
    /// How long to wait for a peer.
    #[arg(long, default_value_t = 120)]
    max_wait_secs: u64,
    /// Agree to the privacy notice without being asked (unattended runs).
    #[arg(long)]
    yes: bool,
    /// Print the result document (JSON) on stdout instead of the summary.
    #[arg(long)]
    json: bool,
    /// No progress output.
    #[arg(long)]
    quiet: bool,
    /// Do not ask your router to open ports (PCP, NAT-PMP, UPnP IGD) during the run.
    #[arg(long)]
    no_portmap: bool,
    /// Your Bitcoin node's port: the router is asked to map it, then the mapping is deleted.
    /// Default: the port of --node, else 8333.
    #[arg(long, value_name = "PORT")]
    node_port: Option<u16>,
}

pub fn run(args: ProbeArgs) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let spool = args.spool.clone().unwrap_or_else(upload::default_spool_dir);
    let (coordinator, campaign) = match args.campaign.as_slice() {
        [] => (args.server.clone(), None),
        specs => {
            let coordinator: Vec<String> = specs
                .iter()
                .map(|spec| campaign::coordinator_of(spec))
                .collect();
            let preview = runtime.block_on(campaign::preview(
                &coordinator[0],
                AddressPolicy::Public,
                PREVIEW_TIMEOUT,
            ))?;
            match preview {
                CampaignPreview::Offered(info) => (coordinator, Some(info)),
                CampaignPreview::NotOffered { why } if args.echo.is_empty() => {
                    return Err(probe::ProbeError::NoEchoServers { why }.into())
                }
                CampaignPreview::NotOffered { .. } => (coordinator, None),
            }
        }
    };
    let endpoints = campaign::endpoints(campaign.as_ref(), &args.echo, args.collector.as_deref());
    if args.serve_peer {
        let options = ReferenceOptions {
            coordinator,
            echo: endpoints.echo,
            collector: endpoints.collector,
            ca_file: args.ca_file.clone(),
            spool,
            max_wait: Duration::from_secs(args.max_wait_secs),
            addresses: AddressPolicy::Public,
            node: node_options(&args),
        };
        return runtime.block_on(serve_peer(options, &args));
    }
    ask_consent(
        &Consent {
            campaign: campaign.as_ref(),
            coordinator: &coordinator.join(", "),
            endpoints: &endpoints,
            node: args.node,
            node_port: (!args.no_portmap).then_some(node_port(&args)),
        },
        args.yes,
        args.quiet,
    )?;
    let options = RunOptions {
        coordinator,
        echo: endpoints.echo,
        collector: endpoints.collector,
        ca_file: args.ca_file.clone(),
        spool,
        label: args.label.clone(),
        pair_code: args.pair_code.clone(),
        max_wait: Duration::from_secs(args.max_wait_secs),
        addresses: AddressPolicy::Public,
        node: node_options(&args),
        port_mapping: (!args.no_portmap).then_some(PortMapOptions {
            node_port: node_port(&args),
        }),
    };
    let quiet = args.quiet || args.json;
    let outcome = runtime.block_on(async {
        let display = Display::new(quiet);
        display.line(format!(
            "This run takes a few minutes: NAT classification (about 10 s), up to {} s waiting for a peer, then the trials (an estimate follows once paired).",
            args.max_wait_secs
        ));
        let mut total = 0u32;
        let render = |p: Progress| match p {
            Progress::Classifying => {
                display.status("classifying your NAT (mapping, filtering, port allocation)")
            }
            // The verdict stays on screen: it is the first result of the run.
            Progress::Classified { verdict } => {
                display.line(format!("Your NAT: {}", verdict.summary()))
            }
            Progress::ClassifyingIpv6 => display.status("classifying your IPv6 path (firewall, translation)"),
            Progress::ClassifiedIpv6 { outcome: Ok(verdict) } => {
                // The summary of an IPv6 verdict starts with "IPv6:" itself.
                display.line(verdict.summary())
            }
            Progress::ClassifiedIpv6 { outcome: Err(why) } => {
                display.line(format!("{why}; the run goes on over IPv4"))
            }
            Progress::PortMapping => display.status(
                "asking your router to map ports (PCP, NAT-PMP, UPnP IGD); every mapping is deleted again",
            ),
            Progress::PortMapped { report } => {
                display.line(format!("Port mapping: {}", report.summary()))
            }
            Progress::Connecting => display.status("connecting to the coordinator"),
            Progress::Waiting { waited } => display.status(&format!(
                "waiting for a peer: {:.0} s",
                waited.as_secs_f64()
            )),
            Progress::Paired {
                role,
                trials,
                peer_mode,
                estimate,
            } => {
                total = trials;
                display.line(format!(
                    "Paired with {} (we are the {role}): {trials} trials, at most about {} min.",
                    peer_words(Some(peer_mode)),
                    estimate.as_secs().div_ceil(60)
                ))
            }
            Progress::TrialDone { trial, outcome } => display.status(&format!(
                "trial {} of {total}: {}",
                trial + 1,
                outcome_words(outcome)
            )),
            Progress::Uploading => display.status("saving and uploading the result"),
        };
        let outcome = probe::run(options, render, Stop::on_signals()).await;
        display.finish();
        outcome
    })?;
    if args.json {
        println!("{}", outcome.result.to_json());
    } else {
        summarize(&outcome);
    }
    Ok(exit_code(&outcome))
}

/// Bridge mode's options, when --node was given (clap requires --node-rpc with it).
/// The node port the router is asked to map: `--node-port`, else the port
/// of the bridged node (`--node`), else Bitcoin's default.
fn node_port(args: &ProbeArgs) -> u16 {
    args.node_port
        .or(args.node.map(|node| node.port()))
        .unwrap_or(8333)
}

fn node_options(args: &ProbeArgs) -> Option<NodeOptions> {
    let p2p = args.node?;
    let url = args
        .node_rpc
        .as_deref()
        .expect("clap requires --node-rpc with --node");
    let mut rpc = RpcConfig::new(url, args.node_cookie.clone().map(RpcAuth::CookieFile));
    rpc.allow_remote = args.node_rpc_allow_remote;
    Some(NodeOptions {
        p2p,
        rpc,
        force_role: args.node_force_role,
    })
}

fn parse_role(text: &str) -> Result<Role, String> {
    match text {
        "initiator" => Ok(Role::Initiator),
        "responder" => Ok(Role::Responder),
        _ => Err("initiator or responder".into()),
    }
}

fn exit_code(outcome: &RunOutcome) -> ExitCode {
    let interrupted = outcome
        .result
        .pairings
        .iter()
        .any(|p| p.ended == PairingEnded::Interrupted);
    match outcome.ending {
        RunEnding::NoPeer { .. } => ExitCode::from(EXIT_NO_PEER),
        RunEnding::StoppedWaiting => ExitCode::from(EXIT_INTERRUPTED),
        RunEnding::Paired if interrupted => ExitCode::from(EXIT_INTERRUPTED),
        RunEnding::Paired => ExitCode::SUCCESS,
    }
}

/// What the volunteer agrees to: who runs the campaign, where results go, the notice.
struct Consent<'a> {
    campaign: Option<&'a CampaignInfo>,
    coordinator: &'a str,
    endpoints: &'a Endpoints,
    /// Bridge mode's node, when --node was given.
    node: Option<SocketAddr>,
    /// The node port the router will be asked to map, unless --no-portmap.
    node_port: Option<u16>,
}

impl Consent<'_> {
    /// The consent screen. Every text from the coordinator passed
    /// [`CampaignInfo::check`] (no control characters) before it gets here.
    fn screen(&self) -> String {
        let mut text = String::new();
        if let Some(c) = self.campaign {
            text.push_str(&format!(
                "Campaign: {}\nRun by: {} ({})\n",
                c.name, c.operator, c.contact
            ));
        }
        // Each family on its own line, split as the run classifies them.
        let echo = EchoFamilies::split(&self.endpoints.echo);
        text.push_str(&format!(
            "Coordinator: {}\nNAT classification against: {}\n",
            self.coordinator,
            echo.primary.join(", ")
        ));
        if let Some(ipv6) = &echo.ipv6 {
            text.push_str(&format!(
                "IPv6 firewall classification against: {}\n",
                ipv6.join(", ")
            ));
        }
        if let Some(node) = self.node {
            text.push_str(&format!(
                "Bridge mode: each punched connection goes to your Bitcoin node at {node}, which peers with the other side's node for a second or two per trial (docs/privacy.md)\n"
            ));
        }
        match &self.endpoints.collector {
            Some(url) => text.push_str(&format!("Results go to: {url}\n")),
            None => text.push_str(
                "Results go to: nowhere yet (no collector): they stay in the spool on this machine\n",
            ),
        }
        match self.node_port {
            Some(port) => text.push_str(&format!(
                "Port mapping: your router is asked (PCP, NAT-PMP, UPnP IGD) to open TCP port {port} and one port of this probe for about a second, and the echo server checks that the probe's port is reachable at your own address; every mapping it grants is deleted before the run goes on, also on Ctrl-C (--no-portmap skips this)\n"
            )),
            None => text.push_str("Port mapping: not asked (--no-portmap)\n"),
        }
        text.push('\n');
        match self.campaign {
            Some(c) => text.push_str(c.privacy_notice.trim_end()),
            None => text.push_str(PRIVACY_NOTICE.trim_end()),
        }
        text.push('\n');
        text
    }
}

fn ask_consent(consent: &Consent, yes: bool, quiet: bool) -> anyhow::Result<()> {
    if !quiet || !yes {
        eprintln!("{}", consent.screen());
    }
    if yes {
        return Ok(());
    }
    if !std::io::stdin().is_terminal() {
        bail!("consent needed: run interactively, or pass --yes to agree to the notice above");
    }
    eprint!("Agree and start? [y/N] ");
    std::io::stderr().flush()?;
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    if matches!(answer.trim().to_lowercase().as_str(), "y" | "yes") {
        Ok(())
    } else {
        bail!("not started: consent declined")
    }
}

/// Progress on stderr: a spinner on a terminal; plain lines otherwise, so a
/// run under `nohup` or in CI shows what happens.
enum Display {
    Quiet,
    Spinner(ProgressBar),
    Lines,
}

impl Display {
    fn new(quiet: bool) -> Display {
        if quiet {
            Display::Quiet
        } else if std::io::stderr().is_terminal() {
            let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
            bar.set_style(ProgressStyle::with_template("{spinner} {msg}").expect("template"));
            bar.enable_steady_tick(Duration::from_millis(120));
            Display::Spinner(bar)
        } else {
            Display::Lines
        }
    }

    /// A passing status: the spinner's message, or a line of its own.
    fn status(&self, text: &str) {
        match self {
            Display::Quiet => {}
            Display::Spinner(bar) => bar.set_message(text.to_string()),
            Display::Lines => eprintln!("{text}"),
        }
    }

    /// A line that stays.
    fn line(&self, text: String) {
        match self {
            Display::Quiet => {}
            Display::Spinner(bar) => bar.println(text),
            Display::Lines => eprintln!("{text}"),
        }
    }

    fn finish(&self) {
        if let Display::Spinner(bar) = self {
            bar.finish_and_clear();
        }
    }
}

fn peer_words(mode: Option<Mode>) -> &'static str {
    match mode {
        Some(Mode::Reference) => "a researchers' reference peer",
        _ => "another volunteer",
    }
}

/// A trial outcome in plain words.
fn outcome_words(outcome: TrialOutcome) -> &'static str {
    match outcome {
        TrialOutcome::Connected => "connected",
        TrialOutcome::Refused => "refused",
        TrialOutcome::Timeout => "timed out",
        TrialOutcome::Unreachable => "unreachable",
        TrialOutcome::WrongPeer => "reached someone else",
        TrialOutcome::PeerVanished => "the peer vanished",
        TrialOutcome::LocalError => "failed on this machine",
        TrialOutcome::Unmapped => "not tried: no router mapped a port",
    }
}

fn upload_words(upload: &UploadStatus) -> String {
    match upload {
        UploadStatus::NoCollector => {
            "not uploaded (no --collector); `punchscope upload --collector URL` sends it later"
                .to_string()
        }
        UploadStatus::Stored => "uploaded: the collector has it".to_string(),
        UploadStatus::Rejected { reason } => {
            format!(
                "the collector refused it ({reason}); it was moved to the spool's rejected/ folder"
            )
        }
        UploadStatus::Pending { reason } => format!(
            "not uploaded yet ({reason}); it stays in the spool: run `punchscope upload` later"
        ),
        UploadStatus::BeingSentByAnother => "another punchscope sharing this spool is uploading it right now; if that upload fails it stays in the spool for `punchscope upload`".to_string(),
        UploadStatus::SentByAnother => "uploaded by another punchscope sharing this spool: the collector has it".to_string(),
    }
}

fn summarize(outcome: &RunOutcome) {
    println!(
        "Your NAT: {}",
        outcome.result.classification.verdict.summary()
    );
    if let Some(report) = &outcome.result.port_mapping {
        println!("Port mapping: {}", report.summary());
    }
    if let RunEnding::NoPeer { waited } = outcome.ending {
        println!(
            "No peer was available after {:.0} s; your NAT classification is saved all the same.",
            waited.as_secs_f64()
        );
    }
    if outcome.ending == RunEnding::StoppedWaiting {
        println!("Stopped by you before a peer was found; your NAT classification is saved.");
    }
    for pairing in &outcome.result.pairings {
        let connected = pairing
            .trials
            .iter()
            .filter(|t| t.outcome == TrialOutcome::Connected)
            .count();
        let tried = pairing
            .trials
            .iter()
            .filter(|t| t.outcome.was_tried())
            .count();
        let peer = peer_words(outcome.peer_mode);
        println!(
            "{connected} of {tried} trials punched through, paired with {peer} (we were the {}).",
            pairing.role
        );
        let unmapped = pairing.trials.len() - tried;
        if unmapped > 0 {
            println!("{unmapped} mapped trials were not tried: neither router mapped a port.");
        }
        for transport in [Transport::V1, Transport::V2] {
            let runs: Vec<_> = pairing
                .trials
                .iter()
                .filter_map(|t| t.handshake.as_ref())
                .filter(|h| h.transport == Some(transport))
                .collect();
            if !runs.is_empty() {
                let ok = runs.iter().filter(|h| h.success).count();
                println!(
                    "Bitcoin {transport} handshakes over punched sockets: {ok} of {} succeeded",
                    runs.len()
                );
            }
        }
        let bridged: Vec<_> = pairing
            .trials
            .iter()
            .filter(|t| t.handshake_by == HandshakeBy::Nodes)
            .filter_map(|t| t.node_bridge.as_ref())
            .collect();
        if !bridged.is_empty() {
            let ok = bridged.iter().filter(|b| b.success).count();
            let by_transport = |transport| {
                bridged
                    .iter()
                    .filter(|b| b.success)
                    .filter(|b| b.peer.as_ref().and_then(|p| p.transport) == Some(transport))
                    .count()
            };
            println!(
                "Your node's handshakes over punched sockets: {ok} of {} completed ({} v1, {} v2)",
                bridged.len(),
                by_transport(Transport::V1),
                by_transport(Transport::V2)
            );
        }
        match pairing.ended {
            PairingEnded::Done => {}
            PairingEnded::PeerGone => {
                println!("The peer left before the end; the trials so far are kept.")
            }
            PairingEnded::CoordinatorLost => match &pairing.coordinator_violation {
                Some(violation) => println!(
                    "The coordinator asked for something this probe refuses ({}); the pairing ended there and the trials so far are kept.",
                    violation.detail
                ),
                None => println!(
                    "The coordinator was lost ({}); the trials so far are kept.",
                    outcome
                        .coordinator_error
                        .as_deref()
                        .unwrap_or("no reason given")
                ),
            },
            PairingEnded::Interrupted => println!("Stopped by you; the trials so far are kept."),
        }
    }
    println!(
        "Result: {} ({})",
        outcome.spooled.display(),
        upload_words(&outcome.upload)
    );
}

async fn serve_peer(options: ReferenceOptions, args: &ProbeArgs) -> anyhow::Result<ExitCode> {
    let (quiet, json) = (args.quiet, args.json);
    let report = |p: ReferenceProgress| match p {
        ReferenceProgress::Classified { verdict } if !quiet => {
            eprintln!("reference peer: NAT {}", verdict.summary())
        }
        ReferenceProgress::PairingDone {
            result,
            connected,
            upload,
        } => {
            if !quiet {
                eprintln!(
                    "reference peer: result {} {}",
                    result.run_id,
                    upload_words(&upload)
                );
            }
            if json {
                println!("{}", result.to_json());
            } else if !quiet {
                let trials = result
                    .pairings
                    .iter()
                    .map(|p| p.trials.len())
                    .sum::<usize>();
                eprintln!("reference peer: pairing done, {connected} of {trials} trials connected");
            }
        }
        ReferenceProgress::Retrying { error, after } => {
            eprintln!("reference peer: {error}; retrying in {} s", after.as_secs())
        }
        ReferenceProgress::Classified { .. } => {}
    };
    probe::serve_peer(options, report, Stop::on_signals()).await?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A dual-stack campaign's eight echo endpoints: one line per family,
    /// as the run classifies them, and the coordinator at every address given.
    #[test]
    fn the_consent_screen_shows_each_familys_echo_servers_on_its_own_line() {
        let echo: Vec<String> = [
            "198.51.100.10:8339",
            "198.51.100.11:8339",
            "[2001:db8:5100::10]:8339",
            "[2001:db8:5100::11]:8339",
        ]
        .iter()
        .map(ToString::to_string)
        .collect();
        let campaign = CampaignInfo {
            name: "dual pilot".into(),
            operator: "Example Lab".into(),
            contact: "ops@example.org".into(),
            echo: echo.iter().map(|e| e.parse().unwrap()).collect(),
            collector: Some("https://collector.example.org".into()),
            privacy_notice: "We keep ports.".into(),
        };
        let endpoints = campaign::endpoints(Some(&campaign), &[], None);
        let screen = Consent {
            campaign: Some(&campaign),
            coordinator: "198.51.100.10:8340, [2001:db8:5100::10]:8340",
            endpoints: &endpoints,
            node: None,
            node_port: None,
        }
        .screen();
        for line in [
            "Coordinator: 198.51.100.10:8340, [2001:db8:5100::10]:8340\n",
            "NAT classification against: 198.51.100.10:8339, 198.51.100.11:8339\n",
            "IPv6 firewall classification against: [2001:db8:5100::10]:8339, [2001:db8:5100::11]:8339\n",
        ] {
            assert!(screen.contains(line), "{line}in {screen}");
        }
        // One family only: one line, as before.
        let v4 = Endpoints {
            echo: echo[..2].to_vec(),
            collector: None,
        };
        let screen = Consent {
            campaign: None,
            coordinator: "198.51.100.10:8340",
            endpoints: &v4,
            node: None,
            node_port: None,
        }
        .screen();
        assert!(
            screen.contains("NAT classification against: 198.51.100.10:8339, 198.51.100.11:8339\n")
                && !screen.contains("IPv6 firewall classification"),
            "{screen}"
        );
    }
}
