//! The `holdfast` command.

use std::{net::Ipv4Addr, path::PathBuf, process::ExitCode};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use holdfast::{
    agent,
    config::{Config, DEFAULT_CONFIG},
    dataplane, leases,
    model::MacAddr,
};

#[derive(Parser)]
#[command(
    name = "holdfast",
    version,
    about = "Statically stable DHCP and VPC data plane for a hypervisor"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent: load the XDP programs, keep their maps in step with IPAM.
    Run {
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Print the DHCP bindings the data plane holds (read from the pinned maps).
    Leases {
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Print the VPC forwarding state the data plane holds (read from the pinned maps).
    Vpc {
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Attach the no-op XDP program the kernel requires on the VM side of a veth pair (run it in
    /// the VM's namespace). Not needed for taps.
    VethPeer {
        /// The VM-side interface.
        interface: String,
    },
    /// Move the IPAM document into and out of the etcd the config names.
    Ipam {
        #[command(subcommand)]
        command: IpamCommand,
    },
    /// Validate the config and an IPAM document without touching the data plane.
    Check {
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// The IPAM document to check (default: the one the config names).
        #[arg(long)]
        ipam: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum IpamCommand {
    /// Validate a document, then make etcd hold exactly it (what differs is written, what is
    /// absent deleted; each NIC's keys in one transaction).
    Import {
        /// The IPAM document (JSON).
        file: PathBuf,
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Print the document etcd holds (JSON, on stdout).
    Export {
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        // netlink-packet-route warns about every attribute newer than itself: noise.
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,netlink_packet_route=error"));
    use std::io::IsTerminal as _;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run { config } => run(config),
        Command::Leases { config } => print_leases(config),
        Command::Vpc { config } => print_vpc(config),
        Command::Check { config, ipam } => check(config, ipam),
        Command::VethPeer { interface } => veth_peer(&interface),
        Command::Ipam { command } => ipam(command),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("holdfast: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(config: PathBuf) -> anyhow::Result<ExitCode> {
    init_logging();
    let config = Config::load(&config)?;
    // glibc gives a thread that allocates under contention its own arena, up to eight per
    // core, and an arena keeps what is freed in it: a burst of validation on the blocking pool
    // would hold its peak for good. Two arenas keep the footprint near the live data.
    // SAFETY: mallopt only changes allocator tuning; called before any other thread exists.
    unsafe { libc::mallopt(libc::M_ARENA_MAX, 2) };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("holdfast")
        .build()
        .context("starting the runtime")?;
    runtime.block_on(agent::run(config))?;
    Ok(ExitCode::SUCCESS)
}

fn ipam(command: IpamCommand) -> anyhow::Result<ExitCode> {
    let (IpamCommand::Import { config, .. } | IpamCommand::Export { config }) = &command;
    let config = Config::load(config)?;
    if config.ipam.source != holdfast::config::IpamSource::Etcd {
        anyhow::bail!("the config's [ipam] source is not etcd");
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(async {
        let mut store = holdfast::ipam::etcd::Store::connect(&config.ipam).await?;
        match command {
            IpamCommand::Import { file, .. } => {
                let bytes = std::fs::read(&file)
                    .with_context(|| format!("ipam document {}", file.display()))?;
                let limits = holdfast::model::Limits::default();
                // Validated as no node in particular: every entry on its own merits.
                let v = agent::check_document(&bytes, "", &limits)
                    .with_context(|| format!("ipam document {}", file.display()))?;
                if !v.rejections.is_empty() {
                    for r in &v.rejections {
                        eprintln!("rejected {r}");
                    }
                    eprintln!(
                        "{}: {} entries rejected; nothing imported",
                        file.display(),
                        v.rejections.len()
                    );
                    return Ok(ExitCode::from(2));
                }
                let r = store.import(&v.model).await?;
                println!(
                    "imported {}: {} networks, {} nodes, {} NICs; {} keys written, {} deleted, \
                     in {} transactions (revision {})",
                    file.display(),
                    v.model.networks.len(),
                    v.model.nodes.len(),
                    v.model.nics.len(),
                    r.put,
                    r.deleted,
                    r.transactions,
                    r.revision
                );
                Ok(ExitCode::SUCCESS)
            }
            IpamCommand::Export { .. } => {
                let (doc, skipped) = store.export().await?;
                println!("{}", serde_json::to_string_pretty(&doc)?);
                if skipped > 0 {
                    eprintln!("{skipped} entries are not JSON and were left out");
                    return Ok(ExitCode::from(2));
                }
                Ok(ExitCode::SUCCESS)
            }
        }
    })
}

fn veth_peer(interface: &str) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime
        .block_on(dataplane::attach_veth_peer(interface))
        .with_context(|| format!("attaching the veth peer program to {interface}"))?;
    Ok(ExitCode::SUCCESS)
}

fn print_leases(config: PathBuf) -> anyhow::Result<ExitCode> {
    let config = Config::load(&config)?;
    let mut bindings = dataplane::read_bindings(&config.bpffs_dir).with_context(|| {
        format!(
            "reading the pinned bindings under {}",
            config.bpffs_dir.display()
        )
    })?;
    bindings.sort_by_key(|(k, _)| (k.ifindex, k.mac));
    println!(
        "{:<16} {:>7}  {:<17}  {:<18}  {:<15}  {:>8}  {:>6}  HOSTNAME",
        "INTERFACE", "IFINDEX", "MAC", "ADDRESS", "GATEWAY", "VNI", "LEASE"
    );
    for (key, b) in &bindings {
        let s = leases::summarize(b);
        let ip = Ipv4Addr::from(b.ip.to_ne_bytes());
        let prefix = s
            .prefix_len
            .map(|p| format!("{ip}/{p}"))
            .unwrap_or(ip.to_string());
        println!(
            "{:<16} {:>7}  {:<17}  {:<18}  {:<15}  {:>8}  {:>6}  {}",
            ifname(key.ifindex).unwrap_or_else(|| "?".into()),
            key.ifindex,
            MacAddr(key.mac).to_string(),
            prefix,
            Ipv4Addr::from(b.server_id.to_ne_bytes()).to_string(),
            b.vni,
            s.lease_time.map(|t| format!("{t}s")).unwrap_or_default(),
            s.hostname.unwrap_or_default(),
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn print_vpc(config: PathBuf) -> anyhow::Result<ExitCode> {
    let config = Config::load(&config)?;
    let s = dataplane::read_vpc(&config.bpffs_dir).with_context(|| {
        format!(
            "reading the pinned VPC maps under {}",
            config.bpffs_dir.display()
        )
    })?;
    let ip = |v: u32| Ipv4Addr::from(v.to_ne_bytes());
    match s.config {
        Some(c) if c.vtep != 0 => println!(
            "VTEP {} on {} (ifindex {})",
            ip(c.vtep),
            ifname(c.underlay_ifindex).unwrap_or_else(|| "?".into()),
            c.underlay_ifindex
        ),
        _ => println!("no underlay: VMs reach only VMs on this host"),
    }
    println!("\nNETWORKS (VNI, gateway, MTU)");
    for (vni, n) in &s.vnis {
        println!("  {vni:>8}  {:<15}  {}", ip(n.gateway), n.mtu);
    }
    println!("\nFORWARDING (VNI, MAC, address, where)");
    for (k, e) in &s.fdb {
        let at = if e.ifindex != 0 {
            format!(
                "local {} ({})",
                ifname(e.ifindex).unwrap_or_else(|| "?".into()),
                e.ifindex
            )
        } else {
            format!("remote VTEP {}", ip(e.vtep))
        };
        println!("  {:>8}  {}  {:<15}  {at}", k.vni, MacAddr(k.mac), ip(e.ip));
    }
    println!("\nARP ANSWERS (VNI, address, MAC)");
    for (k, e) in &s.arp {
        println!("  {:>8}  {:<15}  {}", k.vni, ip(k.ip), MacAddr(e.mac));
    }
    println!("\nKNOWN VTEPS");
    for v in &s.vteps {
        println!("  {}", ip(*v));
    }
    Ok(ExitCode::SUCCESS)
}

fn ifname(ifindex: u32) -> Option<String> {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: the buffer is IF_NAMESIZE bytes, as if_indextoname requires.
    let p = unsafe { libc::if_indextoname(ifindex, buf.as_mut_ptr()) };
    if p.is_null() {
        return None;
    }
    // SAFETY: on success the buffer holds a NUL-terminated name.
    let name = unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) };
    Some(name.to_string_lossy().into_owned())
}

fn check(config: PathBuf, ipam: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let config = Config::load(&config)?;
    let Some(path) = ipam.or(config.ipam.path.clone()) else {
        println!("config ok");
        return Ok(ExitCode::SUCCESS);
    };
    let bytes =
        std::fs::read(&path).with_context(|| format!("ipam document {}", path.display()))?;
    let limits = holdfast::model::Limits {
        underlay_mtu: config.underlay.as_ref().and_then(|u| u.mtu),
    };
    let v = agent::check_document(&bytes, &config.node, &limits)
        .with_context(|| format!("ipam document {}", path.display()))?;
    for r in &v.rejections {
        println!("rejected {r}");
    }
    println!(
        "{}: {} networks, {} nodes, {} NICs accepted; {} entries rejected",
        path.display(),
        v.model.networks.len(),
        v.model.nodes.len(),
        v.model.nics.len(),
        v.rejections.len()
    );
    Ok(if v.rejections.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    })
}
