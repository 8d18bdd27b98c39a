//! `punchscope classify`: classify the NAT in front of this host against echo servers.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use punchscope::analysis::classify::{Classification, DialOutcome, Finding, Probe};
use punchscope::classify::{classify_families, ClassifyConfig, EchoFamilies};

#[derive(Debug, Args)]
pub struct ClassifyArgs {
    /// Echo server as HOST[:PORT] (default port 8339); repeat for a second server IP.
    /// IPv6 addresses, written [ADDR]:PORT, classify the IPv6 path (translation,
    /// firewall); given beside IPv4 ones, each family is classified apart.
    #[arg(long = "server", value_name = "HOST[:PORT]", required = true)]
    pub servers: Vec<String>,
    /// Print the full observations and verdict as JSON.
    #[arg(long)]
    pub json: bool,
    /// Local port for the mapping probes (e.g. 8333, your node's port); default: any free port.
    #[arg(long, value_name = "PORT")]
    pub local_port: Option<u16>,
    /// Milliseconds to wait for each connection and each server answer.
    #[arg(long, default_value_t = 3000)]
    pub timeout_ms: u64,
    /// Fresh-port probes for the port allocation pattern.
    #[arg(long, default_value_t = 5)]
    pub allocation_probes: usize,
    /// Skip the hairpinning test.
    #[arg(long)]
    pub no_hairpin: bool,
    /// Skip the path probe (TTL-limited SYNs that count the NATs in front of you).
    #[arg(long)]
    pub no_path: bool,
}

pub fn run(args: ClassifyArgs) -> anyhow::Result<ExitCode> {
    let config = ClassifyConfig {
        local_port: args.local_port,
        connect_timeout: Duration::from_millis(args.timeout_ms),
        allocation_probes: args.allocation_probes,
        hairpin: !args.no_hairpin,
        path: !args.no_path,
        // The user chose the server here, so its announcements are followed.
        ..ClassifyConfig::default()
    };
    // One thread: the allocation probes' SYN order must be the order we stamp.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let measured = runtime
        .block_on(classify_families(
            &EchoFamilies::split(&args.servers),
            &config,
            |_| {},
        ))
        .context("NAT classification failed")?;
    match (&measured.ipv6, args.json) {
        (None, true) => println!("{}", serde_json::to_string_pretty(&measured.primary)?),
        (None, false) => print!("{}", human(&measured.primary)),
        // Both families: named as a result names them.
        (Some(ipv6), true) => {
            let mut both = serde_json::json!({ "classification": measured.primary });
            match ipv6 {
                Ok(c) => both["classification_v6"] = serde_json::to_value(c)?,
                Err(why) => both["classification_v6_missing"] = why.clone().into(),
            }
            println!("{}", serde_json::to_string_pretty(&both)?);
        }
        (Some(ipv6), false) => {
            print!("{}", human(&measured.primary));
            match ipv6 {
                Ok(c) => print!("\nOver IPv6:\n{}", human(c)),
                Err(why) => println!("\n{why}"),
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn finding<T: std::fmt::Display + Copy>(f: &Finding<T>) -> String {
    match f {
        Finding::Known { value } => value.to_string(),
        Finding::Ambiguous {
            candidates,
            missing,
        } => {
            let names: Vec<_> = candidates.iter().map(ToString::to_string).collect();
            format!("{} (needs {missing})", names.join(" or "))
        }
        Finding::Unknown { reason } => format!("unknown ({reason})"),
    }
}

fn probe_line(p: &Probe) -> String {
    match (p.observed, &p.error) {
        (Some(observed), _) => format!(
            "{} -> {} seen as {} ({:.1} ms)",
            p.local,
            p.server,
            observed,
            p.rtt_ms.unwrap_or_default()
        ),
        (None, error) => format!(
            "{} -> {} failed: {}",
            p.local,
            p.server,
            error.as_deref().unwrap_or("no answer")
        ),
    }
}

fn yes_no(v: Option<bool>) -> &'static str {
    match v {
        Some(true) => "yes",
        Some(false) => "no",
        None => "not measured",
    }
}

fn human(c: &Classification) -> String {
    let v = &c.verdict;
    let o = &c.observations;
    let mut out = format!("{}\n\n", v.summary());
    out += &format!(
        "  NAT present:    {}\n",
        if v.no_nat { "no" } else { "yes" }
    );
    out += &format!("  mapping:        {}\n", finding(&v.mapping));
    for p in &o.mapping {
        out += &format!("                  {}\n", probe_line(p));
    }
    out += &format!("  port preserved: {}\n", yes_no(v.port_preserved));
    out += &format!("  allocation:     {}\n", finding(&v.allocation));
    for p in &o.allocation {
        out += &format!("                  {}\n", probe_line(p));
    }
    out += &format!("  filtering:      {}\n", finding(&v.filtering));
    if let Some(f) = &o.filtering {
        out += &format!("                  {}\n", probe_line(&f.probe));
        for d in &f.dials {
            let from = d.from.map_or("-".to_string(), |a| a.to_string());
            let outcome = match d.server_outcome {
                Some(DialOutcome::Connected) if !d.received => {
                    "connected, but not to us".to_string()
                }
                Some(other) => format!("{other:?}").to_lowercase(),
                None => "not reported while we waited".to_string(),
            };
            let admitted = if d.received {
                "admitted"
            } else {
                "not admitted"
            };
            out += &format!(
                "                  dial-back {:?} from {from}: {outcome}, {admitted}\n",
                d.kind
            );
        }
        if let Some(e) = &f.error {
            out += &format!("                  refused: {e}\n");
        }
    }
    if let Some(ipv6) = &v.ipv6 {
        out += &format!("  IPv6 translated: {}\n", yes_no(ipv6.translated));
        if let Some(kind) = ipv6.translation {
            out += &format!("  IPv6 translation: {}\n", kind.as_str());
        }
        out += &format!(
            "  unsolicited inbound admitted: {}\n",
            yes_no(ipv6.unsolicited_admitted)
        );
    }
    out += &format!("  hairpinning:    {}\n", yes_no(v.hairpin));
    for m in &v.missing {
        out += &format!("  note: {m}\n");
    }
    out
}
