//! `lab run`: a whole measurement campaign on one machine. The real servers run
//! in the internet namespace, reference peers and a real `probe` per volunteer
//! host run in their namespaces, results go through the collector, and the
//! report is built from the collector's export.

use std::fs;
use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::collector::CollectorClient;
use crate::report::{self, ReportOptions, ReportRunError};

use super::instance::{HostInfo, Lab, LabError, LabOptions, RouterInfo};
use super::netns;
use super::scenario::{HostRole, Scenario};

/// Where the campaign's servers listen inside the internet namespace.
pub(crate) const ECHO: [&str; 4] = [
    "198.51.100.10:3478",
    "198.51.100.10:3479",
    "198.51.100.11:3478",
    "198.51.100.11:3479",
];
/// The same echo servers on the servers' IPv6 addresses (docs/lab.md, "IPv6
/// behind kernel routers"), started when the scenario has dual-stack hosts.
pub(crate) const ECHO_V6: [&str; 4] = [
    "[2001:db8:5100::10]:3478",
    "[2001:db8:5100::10]:3479",
    "[2001:db8:5100::11]:3478",
    "[2001:db8:5100::11]:3479",
];
pub(crate) const COORDINATOR: &str = "198.51.100.10:7000";
/// The coordinator's IPv6 endpoint: with dual-stack hosts it listens on
/// `[::]:7000`, both families, and dual-stack volunteers register IPv6
/// trials here.
pub(crate) const COORDINATOR_V6: &str = "[2001:db8:5100::10]:7000";
const COLLECTOR: &str = "198.51.100.10:8080";
/// The collector's IPv6 endpoint (with dual-stack hosts it listens on
/// `[::]:8080`): IPv6-only volunteers upload here.
const COLLECTOR_V6: &str = "[2001:db8:5100::10]:8080";

/// How to run a campaign.
#[derive(Debug, Clone)]
pub struct CampaignOptions {
    /// The `punchscope` binary to start in the namespaces (normally this one).
    pub exe: PathBuf,
    pub lab_name: String,
    pub plan: PathBuf,
    /// Everything the campaign writes: results, report, logs.
    pub out: PathBuf,
    /// Longest the volunteers may take, all together.
    pub deadline: Duration,
}

/// What a campaign produced.
#[derive(Debug, Clone, Serialize)]
pub struct CampaignOutcome {
    pub volunteers: usize,
    /// Volunteers whose probe exited 0 (paired and done).
    pub completed: usize,
    /// Volunteers with no peer (exit 3) or another ending, by host.
    pub others: Vec<(String, Option<i32>)>,
    /// The collector's export: one stored result per line.
    pub results_jsonl: PathBuf,
    pub results: usize,
    /// The router event log of the lab (ground truth).
    pub events_jsonl: PathBuf,
    /// Every router of the lab: its backend (`emulator` or `kernel`, a real
    /// Linux NAT), behaviour and upstream (a carrier-grade NAT). A
    /// volunteer's result carries its router's name as network label.
    pub routers: Vec<RouterInfo>,
    /// Every host and the router it sits behind.
    pub hosts: Vec<HostInfo>,
    /// The report built from the export: its index.html.
    pub report_html: PathBuf,
    /// The report's headline table, as `punchscope report` prints it.
    pub headline: String,
    pub seconds: f64,
}

/// Why a campaign did not finish.
#[derive(Debug, thiserror::Error)]
pub enum CampaignError {
    #[error(transparent)]
    Lab(#[from] LabError),
    #[error("the campaign ran, but its report failed ({cause}); the results are in {}", results.display())]
    Report {
        results: PathBuf,
        cause: ReportRunError,
    },
    #[error("writing {}: {cause}", path.display())]
    Write {
        path: PathBuf,
        cause: std::io::Error,
    },
}

/// Children we started, ended by their PID when this is dropped.
pub(crate) struct Children(pub(crate) Vec<(String, Child)>);

impl Drop for Children {
    fn drop(&mut self) {
        for (_, child) in &mut self.0 {
            // SAFETY: signalling a child we spawned and have not reaped.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        for (_, child) in &mut self.0 {
            while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Runs the campaign of `scenario` and builds its report; the lab is removed
/// before this returns. Writes `campaign.json` (the outcome) and `report/`
/// into the output folder.
pub fn run(
    scenario: Scenario,
    options: &CampaignOptions,
) -> Result<CampaignOutcome, CampaignError> {
    let mut outcome = run_servers_and_probes(scenario, options)?;
    let built = report::build(&ReportOptions {
        inputs: vec![outcome.results_jsonl.display().to_string()],
        out: options.out.join("report"),
        token_file: None,
        timeout: Duration::from_secs(30),
        ca_file: None,
    })
    .map_err(|cause| CampaignError::Report {
        results: outcome.results_jsonl.clone(),
        cause,
    })?;
    outcome.report_html = built.files.index_html;
    outcome.headline = built.report.headline_table();
    let path = options.out.join("campaign.json");
    let json = serde_json::to_string_pretty(&outcome).expect("the outcome serializes");
    fs::write(&path, json).map_err(|cause| CampaignError::Write { path, cause })?;
    Ok(outcome)
}

fn run_servers_and_probes(
    scenario: Scenario,
    options: &CampaignOptions,
) -> Result<CampaignOutcome, LabError> {
    let started = Instant::now();
    let io = |e: std::io::Error| LabError::Traffic(e);
    fs::create_dir_all(options.out.join("logs")).map_err(io)?;
    let events_jsonl = options.out.join("events.jsonl");
    let lab = Lab::start(
        scenario,
        LabOptions {
            name: options.lab_name.clone(),
            event_log: Some(events_jsonl.clone()),
        },
    )?;
    let token = format!("{:032x}", rand::random::<u128>());
    let token_file = options.out.join("export-token");
    fs::write(&token_file, &token).map_err(io)?;
    let db = options.out.join("results.db");
    let _ = fs::remove_file(&db);

    let mut servers = Children(Vec::new());
    let internet = lab.internet_netns();
    // The internet namespace has the servers' IPv6 addresses only when some
    // router routes IPv6; otherwise binding them would fail.
    let ipv6 = lab.scenario().has_ipv6();
    let echo_v6: &[&str] = if ipv6 { &ECHO_V6 } else { &[] };
    let mut echo = vec!["serve".to_string(), "echo".to_string()];
    for e in ECHO.iter().chain(echo_v6) {
        echo.extend(["--listen".to_string(), e.to_string()]);
    }
    servers.0.push(spawn(options, &internet, "echo", &echo)?);
    let rendezvous = [
        "serve",
        "rendezvous",
        "--listen",
        if ipv6 { "[::]:7000" } else { COORDINATOR },
        "--any-reference",
        "--plan",
    ];
    let mut rendezvous: Vec<String> = rendezvous.iter().map(|s| s.to_string()).collect();
    rendezvous.push(options.plan.display().to_string());
    servers
        .0
        .push(spawn(options, &internet, "rendezvous", &rendezvous)?);
    let collector = [
        "serve".to_string(),
        "collector".to_string(),
        "--listen".to_string(),
        if ipv6 { "[::]:8080" } else { COLLECTOR }.to_string(),
        "--db".to_string(),
        db.display().to_string(),
        "--export-token-file".to_string(),
        token_file.display().to_string(),
        // Lab data holds only lab addresses: the key may sit beside the
        // database in the run's folder (and not in the user's home).
        "--key-file".to_string(),
        options.out.join("collector.key").display().to_string(),
        "--allow-key-beside-db".to_string(),
    ];
    servers
        .0
        .push(spawn(options, &internet, "collector", &collector)?);
    let coordinator_v6 = ipv6.then_some(COORDINATOR_V6);
    let collector_v6 = ipv6.then_some(COLLECTOR_V6);
    for endpoint in [ECHO[0], COORDINATOR, COLLECTOR]
        .into_iter()
        .chain(echo_v6.first().copied())
        .chain(coordinator_v6)
        .chain(collector_v6)
    {
        wait_listening(&lab, endpoint.parse().expect("constant"))?;
    }

    let mut references = Children(Vec::new());
    let mut volunteers = Children(Vec::new());
    let hosts = lab.scenario().hosts.clone();
    for host in hosts.iter().filter(|h| h.role == HostRole::Reference) {
        // Reference peers classify too, so their volunteers' reports know
        // both sides' NAT types.
        let args = [
            "probe",
            "--serve-peer",
            "--server",
            COORDINATOR,
            "--echo",
            ECHO[0],
            "--echo",
            ECHO[2],
            "--quiet",
        ];
        let mut args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        // A dual-stack reference peer (its network routes IPv6) runs trials
        // in both families, as the operator's servers would.
        if host.address_v6.is_some() {
            args.extend(["--server".into(), COORDINATOR_V6.into()]);
        }
        // ... and upload their side of every pairing, as volunteers do.
        let spool = options.out.join("spool").join(&host.name);
        args.extend([
            "--collector".into(),
            format!("http://{COLLECTOR}"),
            "--spool".into(),
            spool.display().to_string(),
        ]);
        references.0.push(spawn(
            options,
            &lab.host_netns(&host.name)?,
            &host.name,
            &args,
        )?);
    }
    for host in hosts.iter().filter(|h| h.role == HostRole::Volunteer) {
        let router = &lab.scenario().routers[host.router].name;
        let spool = options.out.join("spool").join(&host.name);
        let args = [
            "probe",
            "--server",
            COORDINATOR,
            "--echo",
            ECHO[0],
            "--echo",
            ECHO[2],
        ];
        let mut args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        // IPv6 echo literals beside the IPv4 ones: the probe classifies IPv6
        // as well, and an IPv4-only host records why it could not
        // (`classification_v6_missing`). With the coordinator's IPv6
        // address, a host that classified IPv6 offers IPv6 trials too
        // (the plan's `families`).
        if ipv6 {
            for e in [ECHO_V6[0], ECHO_V6[2]] {
                args.extend(["--echo".into(), e.to_string()]);
            }
            args.extend(["--server".into(), COORDINATOR_V6.into()]);
        }
        // Every volunteer gets the same flags but the collector's address:
        // an IPv6-only host uploads over IPv6 (in the field, one name with
        // A and AAAA records does it).
        let collector = if host.ipv4 { COLLECTOR } else { COLLECTOR_V6 };
        args.extend([
            "--collector".into(),
            format!("http://{collector}"),
            "--spool".into(),
            spool.display().to_string(),
            "--label".into(),
            router.clone(),
            "--yes".into(),
            "--json".into(),
            "--quiet".into(),
            "--max-wait-secs".into(),
            "60".into(),
        ]);
        volunteers.0.push(spawn(
            options,
            &lab.host_netns(&host.name)?,
            &host.name,
            &args,
        )?);
        // Arrivals a moment apart, as volunteers arrive.
        std::thread::sleep(Duration::from_millis(150));
    }

    let deadline = Instant::now() + options.deadline;
    let mut completed = 0;
    let mut others = Vec::new();
    for (host, child) in &mut volunteers.0 {
        let status = loop {
            match child.try_wait().map_err(io)? {
                Some(status) => break Some(status),
                None if Instant::now() > deadline => break None,
                None => std::thread::sleep(Duration::from_millis(100)),
            }
        };
        match status.and_then(|s| s.code()) {
            Some(0) => completed += 1,
            code => others.push((host.clone(), code)),
        }
    }
    drop(volunteers);
    drop(references);

    let results_jsonl = options.out.join("results.jsonl");
    let export = lab
        .run_in(INTERNET_NS, || export(COLLECTOR, &token))?
        .map_err(io)?;
    let results = export.lines().filter(|l| !l.trim().is_empty()).count();
    fs::write(&results_jsonl, export).map_err(io)?;
    drop(servers);
    let volunteers = hosts
        .iter()
        .filter(|h| h.role == HostRole::Volunteer)
        .count();
    let info = lab.info();
    lab.shutdown()?;
    Ok(CampaignOutcome {
        volunteers,
        completed,
        others,
        results_jsonl,
        results,
        events_jsonl,
        routers: info.routers,
        hosts: info.hosts,
        report_html: PathBuf::new(),
        headline: String::new(),
        seconds: started.elapsed().as_secs_f64(),
    })
}

const INTERNET_NS: &str = super::instance::INTERNET;

/// Starts `exe args` inside a namespace, its output going to the campaign's log folder.
fn spawn(
    options: &CampaignOptions,
    ns: &str,
    tag: &str,
    args: &[String],
) -> Result<(String, Child), LabError> {
    spawn_logged(&options.exe, &options.out.join("logs"), ns, tag, args)
}

/// Starts `exe args` inside namespace `ns`, its stdout and stderr going to
/// `TAG.out` and `TAG.err` in `logs`.
pub(crate) fn spawn_logged(
    exe: &Path,
    logs: &Path,
    ns: &str,
    tag: &str,
    args: &[String],
) -> Result<(String, Child), LabError> {
    let io = |e: std::io::Error| LabError::Traffic(e);
    let stdout = fs::File::create(logs.join(format!("{tag}.out"))).map_err(io)?;
    let stderr = fs::File::create(logs.join(format!("{tag}.err"))).map_err(io)?;
    let child = netns::command_in(ns, &exe.display().to_string())?
        .args(args)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .spawn()
        .map_err(io)?;
    Ok((tag.to_string(), child))
}

/// Waits (15 s at most) until something listens on `endpoint` in the internet namespace.
pub(crate) fn wait_listening(lab: &Lab, endpoint: SocketAddr) -> Result<(), LabError> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let up = lab.run_in(INTERNET_NS, || {
            std::net::TcpStream::connect_timeout(&endpoint, Duration::from_millis(200)).is_ok()
        })?;
        if up {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(LabError::Traffic(std::io::Error::other(format!(
                "campaign server on {endpoint} did not start (see the logs folder)"
            ))));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The collector's JSONL export (run inside the internet namespace).
fn export(collector: &str, token: &str) -> std::io::Result<String> {
    let client = CollectorClient::new(&format!("http://{collector}"), Duration::from_secs(30))
        .map_err(std::io::Error::other)?;
    let mut export = client.export(token).map_err(std::io::Error::other)?;
    let mut text = String::new();
    export.read_to_string(&mut text)?;
    Ok(text)
}

/// Where `lab run` writes by default.
pub fn default_out() -> PathBuf {
    Path::new("campaign-out").to_path_buf()
}
