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

use chaos::config::DevMethod;
use chaos::console::{self, Stopped};
use chaos::domain::{self, Ending};
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
    /// Print how long each step takes, on stderr, after the time from process start to
    /// `main`.
    #[arg(short, long, global = true)]
    verbose: bool,
    /// xendevd's socket.
    #[arg(long, global = true, value_name = "PATH", default_value = xendevd::SOCKET_PATH)]
    xendevd: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create guests from a JSON configuration; prints each new domain's id.
    #[command(after_help = CREATE_HELP)]
    Create(CreateArgs),
    /// Destroy a guest at once, with its devices.
    Destroy(TargetArgs),
    /// Ask a guest to power off (or reboot); with -w, wait until it has.
    Shutdown(ShutdownArgs),
    /// List the domains: id, name, memory, vCPUs, state (as xl's), uptime.
    List,
    /// Show a guest's console until the guest ends: xenconsoled's pty (Ctrl-]
    /// detaches), or for a NoXS guest xendevd's log of it, output only (Ctrl-C leaves).
    Console(TargetArgs),
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
    // With -v: what went before main (exec, loading the Xen libraries), for the boot
    // bench's process-start share.
    trace_total(&cli, "main");
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
        Command::Destroy(args) => {
            let host = open(cli, Options::default().device_timeout)?;
            let domid = domain::resolve(&host, &args.domain)?;
            domain::destroy_domain(&host, domid, None)?;
            Ok(0)
        }
        Command::Shutdown(args) => shutdown(cli, args),
        Command::List => {
            let host = open(cli, Options::default().device_timeout)?;
            let mut out = std::io::stdout().lock();
            let _ = writeln!(
                out,
                "{:>5}  {:<24} {:>8}  {:>5}  {:<6}  {:>10}",
                "ID", "NAME", "MEM(MiB)", "VCPUS", "STATE", "UPTIME"
            );
            for d in domain::list(&host)? {
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
    let made = &created[0];
    let domid = made.domid;
    eprintln!("chaos: created {} (domain {domid})", made.name);
    let outcome = if args.console {
        watch_console(&host, made, config.paused)
    } else {
        domain::wait_for_end(&host, domid, Some(&made.uuid), None, made.dev_method)
            .map(|ending| ending.map_or(Watched::Interrupted("a signal"), Watched::Ended))
    };
    let destroy = || domain::destroy_known(&host, domid, Some(&made.uuid), made.dev_method);
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
        .map(|info| chaos::uuid::Uuid(info.handle));
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
