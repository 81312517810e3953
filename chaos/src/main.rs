//! `chaos`: create, list, watch, shut down and destroy our PV guests on Xen.
//!
//! Exit status: 0 success; 1 failure (the reason on stderr); 2 a usage or configuration
//! error (one line on stderr naming the field; nothing was created). `create --wait`
//! and `create --console` exit with how the guest ended: 0 poweroff, 3 reboot, 4
//! suspend/watchdog/soft_reset, 5 crash, 6 destroyed from outside; 130/143/129 when
//! interrupted by SIGINT/SIGTERM/SIGHUP (the guest is destroyed).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};

use chaos::config::{Config, ConfigError, DevMethod};
use chaos::console::{self, Stopped};
use chaos::daemon::records::Records;
use chaos::daemon::wire::{self, AskError, Conversation, Made, Request, Response, RunDir};
use chaos::daemon::{self, Options as DaemonOptions};
use chaos::domain::{self, Ending};
use chaos::shape::PoolSpec;
use chaos::uuid::Uuid;
use chaos::{Error, Host, Options, signal};
use xenhost::xc::ShutdownReason;

const AFTER_HELP: &str = "\
Configuration (JSON; `chaos create --help` has the keys):
  {\"name\": \"daytime\", \"kernel\": \"/apps/daytime\", \"cmdline\": \"ip=10.0.2.16/24\",
   \"memory\": 8, \"vcpus\": 1,
   \"vifs\": [{\"mac\": \"00:16:3e:0a:00:10\", \"ip\": \"10.0.2.16\", \"bridge\": \"xenbr0\"}]}

Exit status:
  0    success (create --wait/--console: the guest powered off)
  1    failure; the reason is on stderr
  2    usage or configuration error: one line naming the field; nothing was created
  3    create --wait/--console: the guest rebooted
  4    create --wait/--console: suspend, watchdog or soft_reset
  5    create --wait/--console: the guest crashed
  6    create --wait/--console: the guest was destroyed from outside
  130, 143, 129  interrupted by SIGINT, SIGTERM, SIGHUP (a guest chaos waits for is destroyed)

What each device method needs (\"xen\": {\"dev_method\": …} in the configuration):
  xenstore  xenstored for every command on such a guest, xenconsoled for its console;
            xendevd for its vifs (bridge hotplug) and file-backed disks
  noxs      xendevd only (the back end of all its devices and of its console, and the
            keeper of its name): create, console, shutdown and destroy ask it; no
            xenstored or xenconsoled needed
  chaos list shows what is there: Xenstore names if xenstored runs, NoXS names if
  xendevd runs.

Environment: CHAOS_XC_LOG=1 prints libxc's and libxenguest's own messages.";

const CREATE_HELP: &str = "\
Configuration keys:
  name      (required) the domain's name: A-Z a-z 0-9 - _ . + @ :, not all digits
  kernel    (required) a Xen PV kernel: an ELF image with Xen's notes (or compressed)
  ramdisk   an initial ramdisk file
  cmdline   the guest's command line (default empty)
  memory    (required) MiB, at least 4
  vcpus     (required) 1 to 128
  vifs      network interfaces: [{\"mac\": \"00:16:3e:…\" (default: random),
            \"ip\": \"10.0.2.16\" or \"10.0.2.16/24\" (prefix 24 if not given),
            \"gateway\": \"10.0.2.2\" (NoXS only), \"bridge\": \"xenbr0\" (default)}]
            — xendevd puts each on its bridge. A NoXS guest gets ip/prefix and gateway
            in its vif's control page (without \"ip\" it asks DHCP); under Xenstore
            \"ip\" is only for the back end's records (the guest takes ip= and gw= from
            its command line)
  vbds      disks: [{\"target\": PATH, \"type\": \"file\"|\"phy\", \"vdev\": \"xvda\",
            \"access\": \"r\"|\"w\" (default w)}] — under Xenstore a file gets a loop
            device from xendevd; a NoXS guest's xendevd serves the file or device itself
  paused    true: leave the guest paused (default false)
  xen       {\"dev_method\": \"xenstore\"} (default: devices through Xenstore) or
            {\"dev_method\": \"noxs\"} (NoXS: a device block in the guest's start_info,
            xendevd as the back end of every device and of the console; no Xenstore)
Unknown keys are errors.

A guest that ends by itself stays (shut down: `s` or `c` in `chaos list`) until
`chaos destroy`, unless --wait or --console watches it: then chaos destroys it and
exits with how it ended.";

#[derive(Debug, Parser)]
#[command(name = "chaos", version, about = "The toolstack for our PV guests on Xen (replaces xl).", after_help = AFTER_HELP)]
struct Cli {
    /// Print how long each step takes, on stderr.
    #[arg(short, long, global = true)]
    verbose: bool,
    /// xendevd's socket.
    #[arg(long, global = true, value_name = "PATH", default_value = xendevd::SOCKET_PATH)]
    xendevd: PathBuf,
    /// The chaos daemon's directory (its socket, lock and records of shells).
    #[arg(long, global = true, value_name = "DIR", default_value = wire::RUN_DIR)]
    run_dir: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create guests from a JSON configuration; prints each new domain's id.
    #[command(after_help = CREATE_HELP)]
    Create(CreateArgs),
    /// Destroy a guest at once, with its devices.
    Destroy(DestroyArgs),
    /// Ask a guest to power off (or reboot); with -w, wait until it has.
    Shutdown(ShutdownArgs),
    /// List the domains: id, name, memory, vCPUs, state (as xl's), uptime.
    List,
    /// Show a guest's console until the guest ends: xenconsoled's pty (Ctrl-]
    /// detaches), or for a NoXS guest xendevd's log of it, output only (Ctrl-C leaves).
    Console(TargetArgs),
    /// The chaos daemon: pools of shells (domains built ahead of their guests) that
    /// `chaos create` turns into guests (split instantiation).
    #[command(subcommand, after_help = DAEMON_HELP)]
    Daemon(DaemonCommand),
}

const DAEMON_HELP: &str = "\
While a daemon runs, `chaos create` hands it the checked configuration: it turns a
shell of the guest's shape (device method, memory, vCPUs, each vif's bridge, number of
disks) into the guest — kernel, command line, name, MACs, addresses, disks — or builds
it in full when no shell fits. The guest is the same either way. --no-daemon builds in
this process. Shells are not guests: `chaos list` leaves them out.

A pool (--pool, repeatable): KEY=VALUE,… with method=xenstore|noxs, memory=MIB
(required), vcpus=N, vifs=N, bridge=NAME (or bridges=A+B…), vbds=N, size=N (shells kept
ready, default 2), e.g. --pool method=noxs,memory=8,vifs=1,size=4";

#[derive(Debug, Subcommand)]
enum DaemonCommand {
    /// Run the daemon in the foreground, until `chaos daemon stop` or SIGTERM, SIGINT
    /// or SIGHUP (its shells are destroyed then). Shells a killed daemon left are
    /// destroyed at start.
    Run(DaemonRunArgs),
    /// Show the daemon's pools, their shells, and how many guests came from shells.
    Status,
    /// Destroy the daemon's shells and stop it.
    Stop,
}

#[derive(Debug, Args)]
struct DaemonRunArgs {
    /// A pool of shells to keep ready (see below); repeatable.
    #[arg(long = "pool", value_name = "SPEC")]
    pools: Vec<PoolSpec>,
    /// How long a device's back end may take to be ready, in seconds.
    #[arg(long, value_name = "S", default_value_t = 20)]
    device_timeout: u64,
}

#[derive(Debug, Args)]
struct DestroyArgs {
    /// The domain: its id or its name.
    #[arg(value_name = "ID|NAME", required_unless_present = "orphans")]
    domain: Option<String>,
    /// Instead: destroy the shells a chaos daemon that was killed left behind (refused
    /// while a daemon runs).
    #[arg(long, conflicts_with = "domain")]
    orphans: bool,
}

#[derive(Debug, Args)]
struct CreateArgs {
    /// The configuration file.
    config: PathBuf,
    /// Create N guests; each name gets -0, -1, … appended.
    #[arg(short = 'n', long = "count", value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=10000))]
    count: u32,
    /// Leave the guests paused, whatever the configuration says.
    #[arg(short, long)]
    paused: bool,
    /// Stream the guest's console to stdout from its first byte, until it ends; then
    /// destroy it and exit with how it ended (see the exit status in `chaos --help`).
    #[arg(short, long, conflicts_with = "paused")]
    console: bool,
    /// Wait until the guest ends, destroy it, exit with how it ended.
    #[arg(short, long, conflicts_with = "paused")]
    wait: bool,
    /// How long a device's back end may take to be ready, in seconds.
    #[arg(long, value_name = "S", default_value_t = 20)]
    device_timeout: u64,
    /// Build the guests in this process even when a chaos daemon runs.
    #[arg(long)]
    no_daemon: bool,
}

#[derive(Debug, Args)]
struct TargetArgs {
    /// The domain: its id or its name.
    #[arg(value_name = "ID|NAME")]
    domain: String,
}

#[derive(Debug, Args)]
struct ShutdownArgs {
    /// The domain: its id or its name.
    #[arg(value_name = "ID|NAME")]
    domain: String,
    /// Wait until the guest has shut down; then destroy it (its devices go too) and
    /// report why it ended.
    #[arg(short, long)]
    wait: bool,
    /// Ask for a reboot instead (chaos does not restart it: it ends with "reboot").
    #[arg(long)]
    reboot: bool,
    /// With -w: give up after S seconds (exit 1; the guest stays). A NoXS guest must
    /// also acknowledge the request within S seconds.
    #[arg(long, value_name = "S", default_value_t = 60)]
    timeout: u64,
}

/// How the CLI ends, beyond success.
enum Failure {
    Usage(String),
    Failed(String),
    Status(u8),
}

impl From<Error> for Failure {
    fn from(err: Error) -> Self {
        if let Some(signal) = err.interrupted_by() {
            eprintln!("chaos: {err}");
            return Failure::Status(signal::exit_status(signal));
        }
        if err.is_config() {
            Failure::Usage(err.to_string())
        } else {
            Failure::Failed(err.to_string())
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(code) => ExitCode::from(code),
        Err(Failure::Usage(message)) => {
            eprintln!("chaos: {message}");
            ExitCode::from(2)
        }
        Err(Failure::Failed(message)) => {
            eprintln!("chaos: {message}");
            ExitCode::from(1)
        }
        Err(Failure::Status(code)) => ExitCode::from(code),
    }
}

fn open(cli: &Cli, device_timeout: Duration) -> Result<Host, Failure> {
    let started = Instant::now();
    let host = Host::open(Options {
        xendevd_socket: cli.xendevd.clone(),
        device_timeout,
        trace: cli.verbose,
        ..Options::default()
    })?;
    trace(cli, "open libxenctrl", started);
    Ok(host)
}

/// With -v, how long a step took (one outside [`Host::timed`]).
fn trace(cli: &Cli, what: &str, started: Instant) {
    if cli.verbose {
        eprintln!(
            "chaos: {:>8.3} ms  {what}",
            started.elapsed().as_secs_f64() * 1000.0
        );
    }
}

/// With -v, the time since the process started (from /proc/self/stat and the uptime),
/// which includes loading the Xen libraries before `main`.
fn trace_total(cli: &Cli, what: &str) {
    if !cli.verbose {
        return;
    }
    let since_start = || -> Option<f64> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        // Field 22 (starttime), counted after the command name's closing parenthesis.
        let after = &stat[stat.rfind(')')? + 2..];
        let ticks: f64 = after.split_whitespace().nth(19)?.parse().ok()?;
        // SAFETY: sysconf only reads a configuration value.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        let uptime: f64 = std::fs::read_to_string("/proc/uptime")
            .ok()?
            .split_whitespace()
            .next()?
            .parse()
            .ok()?;
        Some((uptime - ticks / hz) * 1000.0)
    };
    if let Some(ms) = since_start() {
        eprintln!("chaos: {ms:>8.0} ms  {what} (since the process started, ±10 ms)");
    }
}

fn run(cli: &Cli) -> Result<u8, Failure> {
    signal::install();
    match &cli.command {
        Command::Create(args) => create(cli, args),
        Command::Destroy(args) => destroy(cli, args),
        Command::Daemon(command) => run_daemon(cli, command),
        Command::Shutdown(args) => shutdown(cli, args),
        Command::List => {
            let host = open(cli, Options::default().device_timeout)?;
            let mut out = std::io::stdout().lock();
            let _ = writeln!(
                out,
                "{:>5}  {:<24} {:>8}  {:>5}  {:<6}  {:>10}",
                "ID", "NAME", "MEM(MiB)", "VCPUS", "STATE", "UPTIME"
            );
            // The daemon's shells are not guests.
            let shells = Records::new(RunDir(cli.run_dir.clone()).shells())
                .domids()
                .map_err(Error::from)?;
            for d in domain::list(&host)? {
                if shells.contains(&d.domid) || d.name.starts_with(chaos::config::SHELL_NAME_PREFIX)
                {
                    continue;
                }
                let _ = writeln!(
                    out,
                    "{:>5}  {:<24} {:>8}  {:>5}  {:<6}  {:>10}",
                    d.domid,
                    d.name,
                    d.memory_mib,
                    d.vcpus,
                    d.state,
                    d.uptime.map_or_else(|| "-".to_owned(), format_uptime)
                );
            }
            Ok(0)
        }
        Command::Console(args) => {
            let host = open(cli, Options::default().device_timeout)?;
            let domid = domain::resolve(&host, &args.domain)?;
            let mut out = std::io::stdout().lock();
            if domain::dev_method_of(&host, domid)? == DevMethod::Noxs {
                let (mut stream, pending) = console::open_noxs(&host, domid)?;
                let stopped =
                    console::relay_stream(&host, domid, None, &mut stream, &pending, &mut out)?;
                return Ok(match stopped {
                    Stopped::Ended(_) | Stopped::Closed | Stopped::Detached => {
                        console::drain(
                            &mut stream,
                            &mut out,
                            Duration::from_millis(200),
                            Duration::from_secs(2),
                        );
                        0
                    }
                    Stopped::Interrupted(signal) => signal::exit_status(signal),
                });
            }
            let mut tty = console::open(&host, domid, host.options.console_timeout)?;
            match console::relay(&host, domid, None, &mut tty, &mut out)? {
                Stopped::Ended(_) | Stopped::Closed => {
                    console::drain(
                        &mut tty,
                        &mut out,
                        Duration::from_millis(200),
                        Duration::from_secs(2),
                    );
                    Ok(0)
                }
                Stopped::Detached => Ok(0),
                Stopped::Interrupted(signal) => Ok(signal::exit_status(signal)),
            }
        }
    }
}

fn format_uptime(uptime: Duration) -> String {
    let secs = uptime.as_secs();
    format!("{}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60)
}

/// The exit status of `create --wait/--console` for how the guest ended.
fn ending_status(ending: Ending) -> u8 {
    match ending {
        Ending::Shutdown(ShutdownReason::Poweroff) => 0,
        Ending::Shutdown(ShutdownReason::Reboot) => 3,
        Ending::Shutdown(ShutdownReason::Crash) => 5,
        Ending::Shutdown(_) => 4,
        Ending::Destroyed => 6,
    }
}

fn describe(name: &str, domid: u32, ending: Ending) -> String {
    match ending {
        Ending::Shutdown(reason) => format!(
            "{name} (domain {domid}) shut down: {} (reason code {})",
            reason.name(),
            reason.code()
        ),
        Ending::Destroyed => format!("{name} (domain {domid}) was destroyed"),
    }
}

fn create(cli: &Cli, args: &CreateArgs) -> Result<u8, Failure> {
    let watch = args.console || args.wait;
    if watch && args.count > 1 {
        return Err(Failure::Usage(format!(
            "--{} watches one guest; -n {} makes {}",
            if args.console { "console" } else { "wait" },
            args.count,
            args.count
        )));
    }
    let started = Instant::now();
    let config =
        domain::load_config(&args.config).map_err(|err| prefix_config(&args.config, err))?;
    trace(cli, "load and check the configuration", started);
    if !args.no_daemon
        && let Some(status) = create_by_daemon(cli, args, &config)?
    {
        return Ok(status);
    }
    let host = open(cli, Duration::from_secs(args.device_timeout))?;
    let mut created = Vec::new();
    for index in 0..args.count {
        let mut one = config
            .numbered(index, args.count)
            .map_err(|err| prefix_config(&args.config, err.into()))?;
        one.paused |= args.paused;
        let made = domain::create(&host, &one, args.console)
            .map_err(|err| prefix_config(&args.config, err))?;
        if !watch {
            println!("{}", made.domid);
        }
        trace_total(cli, &format!("created {}", made.name));
        created.push(made);
    }
    if !watch {
        return Ok(0);
    }
    watch_created(&host, &created[0], args.console, config.paused)
}

/// `create` through the chaos daemon, if one listens (`None`: none does). This path
/// touches no Xen library: the daemon does the Xen work (and the waiting, for --wait);
/// only --console opens Xen's handles here, to attach.
fn create_by_daemon(cli: &Cli, args: &CreateArgs, config: &Config) -> Result<Option<u8>, Failure> {
    let started = Instant::now();
    let guests = (0..args.count)
        .map(|index| config.numbered(index, args.count)?.to_json())
        .collect::<Result<Vec<_>, ConfigError>>()
        .map_err(|err| prefix_config(&args.config, err.into()))?;
    let socket = RunDir(cli.run_dir.clone()).socket();
    let request = Request::Create {
        guests,
        // --console attaches before the guest runs.
        paused: args.paused || args.console,
        wait: args.wait,
    };
    let mut talk = match Conversation::start(&socket, &request) {
        Ok(talk) => talk,
        Err(AskError::NotRunning { .. }) => {
            trace(cli, "no chaos daemon: building here", started);
            return Ok(None);
        }
        Err(err) => return Err(Failure::Failed(err.to_string())),
    };
    let (made, failure) = match talk.answer(None).map_err(daemon_failed)? {
        Some(Response::Created { guests, failure }) => (guests, failure),
        other => return Err(unexpected(other)),
    };
    for guest in &made {
        if !(args.console || args.wait) {
            println!("{}", guest.domid);
        }
        if cli.verbose {
            for step in &guest.steps {
                eprintln!("chaos: {:>8.3} ms  daemon: {}", step.ms, step.name);
            }
            eprintln!(
                "chaos: {} (domain {}) {}",
                guest.name,
                guest.domid,
                if guest.from_shell {
                    "came from a shell"
                } else {
                    "was built in full (no shell of its shape was ready)"
                }
            );
        }
        trace_total(cli, &format!("created {}", guest.name));
    }
    trace(cli, "the chaos daemon's create", started);
    match failure {
        None => {}
        Some(wire::Failure::Config { field, message }) => {
            return Err(
                prefix_config(&args.config, ConfigError::new(field, message).into()).into(),
            );
        }
        Some(wire::Failure::Failed(message)) => return Err(Failure::Failed(message)),
    }
    let Some(guest) = made.first().filter(|_| args.console || args.wait) else {
        return Ok(Some(0));
    };
    if args.console {
        let host = open(cli, Duration::from_secs(args.device_timeout))?;
        let created = created_of(guest)?;
        return watch_created(&host, &created, true, config.paused).map(Some);
    }
    eprintln!("chaos: created {} (domain {})", guest.name, guest.domid);
    loop {
        if let Some(signal) = signal::caught() {
            let destroyed = wire::ask(&socket, &Request::Destroy { domid: guest.domid });
            return match destroyed {
                Ok(Response::Destroyed) => {
                    eprintln!(
                        "chaos: {signal}: destroyed {} (domain {})",
                        guest.name, guest.domid
                    );
                    Ok(Some(signal::exit_status(signal)))
                }
                Ok(other) => Err(unexpected(Some(other))),
                Err(err) => Err(daemon_failed(err)),
            };
        }
        match talk
            .answer(Some(Duration::from_millis(200)))
            .map_err(daemon_failed)?
        {
            None => {}
            Some(Response::Ended { shutdown_code }) => {
                let ending = shutdown_code.map_or(Ending::Destroyed, |code| {
                    Ending::Shutdown(ShutdownReason::from_code(code))
                });
                eprintln!("chaos: {}", describe(&guest.name, guest.domid, ending));
                return Ok(Some(ending_status(ending)));
            }
            other => return Err(unexpected(other)),
        }
    }
}

/// What the daemon made, as chaos's own create would have returned it.
fn created_of(made: &Made) -> Result<domain::Created, Failure> {
    Ok(domain::Created {
        domid: made.domid,
        name: made.name.clone(),
        uuid: Uuid::parse(&made.uuid).ok_or_else(|| {
            Failure::Failed(format!("the chaos daemon gave {:?} as a UUID", made.uuid))
        })?,
        paused: made.paused,
        macs: made.macs.clone(),
        dev_method: made.dev_method,
    })
}

fn daemon_failed(err: AskError) -> Failure {
    Failure::Failed(err.to_string())
}

/// An answer the request does not call for (a refusal says why).
fn unexpected(answer: Option<Response>) -> Failure {
    Failure::Failed(match answer {
        Some(Response::Refused(why)) => format!("the chaos daemon refused: {why}"),
        Some(other) => {
            format!("the chaos daemon answered {other:?}, which does not fit the request")
        }
        None => "the chaos daemon did not answer".to_owned(),
    })
}

/// `create --console/--wait` after the create: watch `made` until it ends, destroy
/// it, exit with how it ended.
fn watch_created(
    host: &Host,
    made: &domain::Created,
    console: bool,
    stay_paused: bool,
) -> Result<u8, Failure> {
    let domid = made.domid;
    eprintln!("chaos: created {} (domain {domid})", made.name);
    let outcome = if console {
        watch_console(host, made, stay_paused)
    } else {
        domain::wait_for_end(host, domid, Some(&made.uuid), None, made.dev_method)
            .map(|ending| ending.map_or(Watched::Interrupted("a signal"), Watched::Ended))
    };
    let destroy = || domain::destroy_known(host, domid, Some(&made.uuid), made.dev_method);
    let outcome = match outcome {
        Ok(outcome) => outcome,
        Err(Error::Interrupted(signal)) => Watched::Interrupted(signal),
        Err(err) => {
            let _ = destroy();
            return Err(err.into());
        }
    };
    if let Watched::Detached = outcome {
        eprintln!(
            "chaos: detached from {} (domain {domid}); it keeps running",
            made.name
        );
        return Ok(0);
    }
    destroy()?;
    match outcome {
        Watched::Ended(ending) => {
            eprintln!("chaos: {}", describe(&made.name, domid, ending));
            Ok(ending_status(ending))
        }
        Watched::Interrupted(signal) => {
            eprintln!("chaos: {signal}: destroyed {} (domain {domid})", made.name);
            Ok(signal::exit_status(signal))
        }
        Watched::Detached => Ok(0),
    }
}

fn destroy(cli: &Cli, args: &DestroyArgs) -> Result<u8, Failure> {
    let host = open(cli, Options::default().device_timeout)?;
    let Some(target) = &args.domain else {
        let run_dir = RunDir(cli.run_dir.clone());
        let _lock = daemon::lock(&run_dir).map_err(|err| match err {
            daemon::StartError::Running { .. } => Failure::Failed(format!(
                "{err}: its shells are its own (`chaos daemon stop` destroys them)"
            )),
            other => Failure::Failed(other.to_string()),
        })?;
        let (destroyed, failures) = daemon::sweep(&host, &Records::new(run_dir.shells()))?;
        eprintln!("chaos: destroyed {destroyed} shell(s) a chaos daemon left");
        if failures.is_empty() {
            return Ok(0);
        }
        return Err(Failure::Failed(failures.join("; ")));
    };
    let domid = domain::resolve(&host, target)?;
    domain::destroy_domain(&host, domid, None)?;
    Ok(0)
}

fn run_daemon(cli: &Cli, command: &DaemonCommand) -> Result<u8, Failure> {
    let run_dir = RunDir(cli.run_dir.clone());
    let socket = run_dir.socket();
    let ask = |request: &Request| {
        wire::ask(&socket, request).map_err(|err| match err {
            AskError::NotRunning { .. } => {
                Failure::Failed(format!("{err} (start one with `chaos daemon run`)"))
            }
            other => daemon_failed(other),
        })
    };
    match command {
        DaemonCommand::Run(args) => {
            daemon::run(DaemonOptions {
                run_dir,
                pools: args.pools.clone(),
                xendevd_socket: cli.xendevd.clone(),
                device_timeout: Duration::from_secs(args.device_timeout),
            })
            .map_err(|err| match err {
                daemon::StartError::Chaos(err) => Failure::from(err),
                other => Failure::Failed(other.to_string()),
            })?;
            Ok(0)
        }
        DaemonCommand::Status => {
            let Response::Status(status) = ask(&Request::Status)? else {
                return Err(Failure::Failed(
                    "the chaos daemon answered no status".into(),
                ));
            };
            let mut out = std::io::stdout().lock();
            let _ = writeln!(
                out,
                "chaos daemon {}: {} guest(s) from shells, {} built in full",
                status.pid, status.from_shells, status.in_full
            );
            for pool in &status.pools {
                let ids =
                    |ids: &[u32]| ids.iter().map(u32::to_string).collect::<Vec<_>>().join(" ");
                let _ = writeln!(
                    out,
                    "pool {}: {} ready [{}], {} warming [{}]{}",
                    pool.pool,
                    pool.ready.len(),
                    ids(&pool.ready),
                    pool.warming.len(),
                    ids(&pool.warming),
                    pool.problem
                        .as_ref()
                        .map_or_else(String::new, |why| format!("; {why}"))
                );
            }
            Ok(0)
        }
        DaemonCommand::Stop => match ask(&Request::Stop)? {
            Response::Stopped { shells_destroyed } => {
                // Gone once its socket is: scripts may start the next one at once.
                let deadline = Instant::now() + Duration::from_secs(10);
                while socket.exists() && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(20));
                }
                eprintln!("chaos: the daemon destroyed {shells_destroyed} shell(s) and stopped");
                Ok(0)
            }
            other => Err(unexpected(Some(other))),
        },
    }
}

/// What watching a guest came to.
enum Watched {
    Ended(Ending),
    Interrupted(&'static str),
    /// The user detached the console: the guest keeps running.
    Detached,
}

/// Attach to the console of a guest created paused, unpause it (unless its
/// configuration keeps it paused), relay until it ends.
fn watch_console(host: &Host, made: &domain::Created, stay_paused: bool) -> Result<Watched, Error> {
    let domid = made.domid;
    let mut out = std::io::stdout().lock();
    let unpause = || {
        if stay_paused {
            return Ok(());
        }
        host.timed("xc_domain_unpause", || Ok(host.xc.domain_unpause(domid)?))
    };
    let stopped = if made.dev_method == DevMethod::Noxs {
        let (mut stream, pending) = console::open_noxs(host, domid)?;
        unpause()?;
        let stopped = console::relay_stream(
            host,
            domid,
            Some(&made.uuid),
            &mut stream,
            &pending,
            &mut out,
        )?;
        // The last lines: xendevd may still be copying the ring when the end is seen.
        console::drain(
            &mut stream,
            &mut out,
            Duration::from_millis(150),
            Duration::from_secs(1),
        );
        stopped
    } else {
        let mut tty = console::open(host, domid, host.options.console_timeout)?;
        unpause()?;
        let stopped = console::relay(host, domid, Some(&made.uuid), &mut tty, &mut out)?;
        // The last lines: xenconsoled may still be copying the ring when the end is seen.
        console::drain(
            &mut tty,
            &mut out,
            Duration::from_millis(150),
            Duration::from_secs(1),
        );
        stopped
    };
    match stopped {
        Stopped::Ended(ending) => Ok(Watched::Ended(ending)),
        Stopped::Closed => Ok(Watched::Ended(
            domain::check_ending(host, domid, Some(&made.uuid))?.unwrap_or(Ending::Destroyed),
        )),
        Stopped::Interrupted(signal) => Ok(Watched::Interrupted(signal)),
        Stopped::Detached => Ok(Watched::Detached),
    }
}

/// Configuration errors name the file too: `chaos: guest.json: vifs[0].mac: …`.
fn prefix_config(path: &std::path::Path, err: Error) -> Error {
    match err {
        Error::Config(mut config) => {
            config.field = if config.field.is_empty() {
                path.display().to_string()
            } else {
                format!("{}: {}", path.display(), config.field)
            };
            Error::Config(config)
        }
        other => other,
    }
}

fn shutdown(cli: &Cli, args: &ShutdownArgs) -> Result<u8, Failure> {
    let host = open(cli, Options::default().device_timeout)?;
    let domid = domain::resolve(&host, &args.domain)?;
    let dev_method = domain::dev_method_of(&host, domid)?;
    let name = domain::name_of(&host, domid)
        .ok()
        .flatten()
        .unwrap_or_else(|| args.domain.clone());
    let uuid = host
        .xc
        .domain_info(domid)
        .map_err(Error::from)?
        .map(|info| Uuid(info.handle));
    let timeout = Duration::from_secs(args.timeout);
    let asked = Instant::now();
    domain::request_shutdown(&host, domid, args.reboot, dev_method, timeout)?;
    if !args.wait {
        return Ok(0);
    }
    let left = timeout.saturating_sub(asked.elapsed());
    let Some(ending) = domain::wait_for_end(&host, domid, uuid.as_ref(), Some(left), dev_method)?
    else {
        let action = if args.reboot { "reboot" } else { "poweroff" };
        return Err(Failure::Failed(match dev_method {
            DevMethod::Xenstore => format!(
                "{name} (domain {domid}) did not shut down within {} s of control/shutdown = \
                 {action} (does the guest watch control/shutdown?); it is still there",
                args.timeout
            ),
            DevMethod::Noxs => format!(
                "{name} (domain {domid}) acknowledged the {action} request but did not shut \
                 down within {} s; it is still there",
                args.timeout
            ),
        }));
    };
    domain::destroy_known(&host, domid, uuid.as_ref(), dev_method)?;
    eprintln!("chaos: {}", describe(&name, domid, ending));
    let wanted = if args.reboot {
        ShutdownReason::Reboot
    } else {
        ShutdownReason::Poweroff
    };
    match ending {
        Ending::Shutdown(reason) if reason != wanted => Err(Failure::Failed(format!(
            "{name} ended with {}, not the {} asked for",
            reason.name(),
            wanted.name()
        ))),
        _ => Ok(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn exit_statuses_follow_the_help() {
        for (ending, code) in [
            (Ending::Shutdown(ShutdownReason::Poweroff), 0),
            (Ending::Shutdown(ShutdownReason::Reboot), 3),
            (Ending::Shutdown(ShutdownReason::Watchdog), 4),
            (Ending::Shutdown(ShutdownReason::Crash), 5),
            (Ending::Destroyed, 6),
        ] {
            assert_eq!(ending_status(ending), code);
            assert!(AFTER_HELP.contains(&format!("\n  {code}    ")), "{code}");
        }
    }

    #[test]
    fn uptimes() {
        assert_eq!(format_uptime(Duration::from_secs(3725)), "1:02:05");
    }
}
