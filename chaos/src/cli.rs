//! The command line of `chaos`, the way it ends (exit statuses), and the client side of
//! the chaos daemon: the part that calls no Xen library.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};
use xenhost::xc::ShutdownReason;

use crate::config::ConfigError;
use crate::daemon::wire::{self, AskError, Conversation, Made, Request, Response, RunDir};
use crate::domain::{self, Ending};
use crate::shape::PoolSpec;
use crate::{Error, signal};

pub const AFTER_HELP: &str = "\
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

Environment: CHAOS_XC_LOG=1 prints libxc's and libxenguest's own messages.
For tests: CHAOS_STOP_AFTER=STEP makes chaos SIGKILL itself right after step STEP (as
`chaos -v` names it, e.g. \"xc_domain_create\"), CHAOS_PAUSE_AFTER=STEP SIGSTOP
itself there (SIGCONT resumes).";

pub const CREATE_HELP: &str = "\
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
pub struct Cli {
    /// Print how long each step takes, on stderr, after the time from process start to
    /// `main`.
    #[arg(short, long, global = true)]
    pub verbose: bool,
    /// xendevd's socket.
    #[arg(long, global = true, value_name = "PATH", default_value = xendevd::SOCKET_PATH)]
    pub xendevd: PathBuf,
    /// chaos's run directory: the claims of creates under way (one create per name;
    /// what a killed chaos left is found there), the chaos daemon's socket, lock and
    /// records of shells.
    #[arg(long, global = true, value_name = "DIR", default_value = wire::RUN_DIR)]
    pub run_dir: PathBuf,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create guests from a JSON configuration; prints each new domain's id.
    #[command(after_help = CREATE_HELP)]
    Create(CreateArgs),
    /// Destroy a guest at once, with its devices.
    Destroy(DestroyArgs),
    /// Ask a guest to power off (or reboot); with -w, wait until it has.
    Shutdown(ShutdownArgs),
    /// List the domains: id, name, memory, vCPUs, state (as xl's), uptime; then, for a
    /// domain a create has not finished, "being created …" or "orphan: …" (its chaos
    /// died: `chaos destroy --orphans` removes it).
    List,
    /// Show a guest's console until the guest ends, and send it what comes on stdin:
    /// xenconsoled's pty, or for a NoXS guest xendevd's stream of it (its output from
    /// the first byte). A terminal on stdin is made raw and Ctrl-] detaches; other
    /// input (a pipe, a file) goes to the guest as it comes, and when it ends the
    /// console goes on until the guest ends (Ctrl-C leaves).
    Console(TargetArgs),
    /// Save a running guest into a file: it is asked to suspend (control/shutdown, or a
    /// NoXS guest's sysctl device), its memory and configuration written, then it is
    /// destroyed with its devices, unless --keep-running. If the save fails, the guest
    /// runs on.
    Save(SaveArgs),
    /// Restore a guest from a file `chaos save` wrote, under its name, with its devices
    /// made anew; prints the new domain's id. A bad file is refused before anything is
    /// made; any later failure leaves nothing behind.
    Restore(RestoreArgs),
    /// Move a running guest live to the chaos receiver at HOST[:PORT]
    /// (`chaos receive` there): its memory is copied while it runs, then it is
    /// suspended, the receiver starts it and this host's copy is destroyed. If anything
    /// fails before the receiver has it, the guest runs on here.
    Migrate(MigrateArgs),
    /// Receive guests that `chaos migrate` sends (in the foreground, one at a time);
    /// prints each new domain's id. Senders are not authenticated: a trusted network
    /// only.
    Receive(ReceiveArgs),
    /// The chaos daemon: pools of shells (domains built ahead of their guests) that
    /// `chaos create` turns into guests (split instantiation).
    #[command(subcommand, after_help = DAEMON_HELP)]
    Daemon(DaemonCommand),
}

pub const DAEMON_HELP: &str = "\
While a daemon runs, `chaos create` hands it the checked configuration: it turns a
shell of the guest's shape (device method, memory, vCPUs, each vif's bridge, number of
disks) into the guest — kernel, command line, name, MACs, addresses, disks — or builds
it in full when no shell fits. The guest is the same either way. --no-daemon builds in
this process. Shells are not guests: `chaos list` leaves them out.

A pool (--pool, repeatable): KEY=VALUE,… with method=xenstore|noxs, memory=MIB
(required), vcpus=N, vifs=N, bridge=NAME (or bridges=A+B…), vbds=N, size=N (shells kept
ready, default 2), e.g. --pool method=noxs,memory=8,vifs=1,size=4";

#[derive(Debug, Subcommand)]
pub enum DaemonCommand {
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
pub struct DaemonRunArgs {
    /// A pool of shells to keep ready (see below); repeatable.
    #[arg(long = "pool", value_name = "SPEC")]
    pub pools: Vec<PoolSpec>,
    /// How long a device's back end may take to be ready, in seconds.
    #[arg(long, value_name = "S", default_value_t = 20)]
    pub device_timeout: u64,
}

#[derive(Debug, Args)]
pub struct DestroyArgs {
    /// The domain: its id or its name.
    #[arg(value_name = "ID|NAME", required_unless_present = "orphans")]
    pub domain: Option<String>,
    /// Instead: destroy every domain a chaos began and did not finish (it was killed
    /// while creating; `chaos list` marks them "orphan"), with everything made for it,
    /// and the shells a chaos daemon that was killed left behind (not while a daemon
    /// runs). Creates under way in a running chaos are left alone.
    #[arg(long, conflicts_with = "domain")]
    pub orphans: bool,
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// The configuration file.
    pub config: PathBuf,
    /// Create N guests; each name gets -0, -1, … appended.
    #[arg(short = 'n', long = "count", value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=10000))]
    pub count: u32,
    /// Leave the guests paused, whatever the configuration says.
    #[arg(short, long)]
    pub paused: bool,
    /// Stream the guest's console to stdout from its first byte, until it ends, and
    /// stdin to it as `chaos console` does; then destroy it and exit with how it ended
    /// (see the exit status in `chaos --help`).
    #[arg(short, long, conflicts_with = "paused")]
    pub console: bool,
    /// Wait until the guest ends, destroy it, exit with how it ended.
    #[arg(short, long, conflicts_with = "paused")]
    pub wait: bool,
    /// How long a device's back end may take to be ready, in seconds.
    #[arg(long, value_name = "S", default_value_t = 20)]
    pub device_timeout: u64,
    /// Build the guests in this process even when a chaos daemon runs.
    #[arg(long)]
    pub no_daemon: bool,
}

#[derive(Debug, Args)]
pub struct TargetArgs {
    /// The domain: its id or its name.
    #[arg(value_name = "ID|NAME")]
    pub domain: String,
}

#[derive(Debug, Args)]
pub struct SaveArgs {
    /// Let the guest run on after the save (it resumes where it was).
    #[arg(short = 'c', long)]
    pub keep_running: bool,
    /// The domain: its id or its name.
    #[arg(value_name = "ID|NAME")]
    pub domain: String,
    /// The file to write (replaced if it exists, once the save is complete).
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
}

#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// Leave the restored guest paused (not a NoXS guest: its devices are offered to it
    /// again once it runs).
    #[arg(short, long)]
    pub paused: bool,
    /// A file `chaos save` wrote.
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
}

#[derive(Debug, Args)]
pub struct MigrateArgs {
    /// The domain: its id or its name.
    #[arg(value_name = "ID|NAME")]
    pub domain: String,
    /// The receiver: HOST or HOST:PORT (default port 8002).
    #[arg(value_name = "HOST[:PORT]")]
    pub target: String,
}

#[derive(Debug, Args)]
pub struct ReceiveArgs {
    /// The TCP port to listen on.
    #[arg(short, long, default_value_t = crate::migrate::DEFAULT_PORT)]
    pub port: u16,
    /// Exit after the first guest (with its outcome).
    #[arg(long)]
    pub once: bool,
}

#[derive(Debug, Args)]
pub struct ShutdownArgs {
    /// The domain: its id or its name.
    #[arg(value_name = "ID|NAME")]
    pub domain: String,
    /// Wait until the guest has shut down; then destroy it (its devices go too) and
    /// report why it ended.
    #[arg(short, long)]
    pub wait: bool,
    /// Ask for a reboot instead (chaos does not restart it: it ends with "reboot").
    #[arg(long)]
    pub reboot: bool,
    /// With -w: give up after S seconds (exit 1; the guest stays). A NoXS guest must
    /// also acknowledge the request within S seconds.
    #[arg(long, value_name = "S", default_value_t = 60)]
    pub timeout: u64,
}

/// How the CLI ends, beyond success.
#[derive(Debug)]
pub enum Failure {
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

/// With -v, how long a step took (one outside [`Host::timed`]).
pub fn trace(cli: &Cli, what: &str, started: Instant) {
    if cli.verbose {
        eprintln!(
            "chaos: {:>8.3} ms  {what}",
            started.elapsed().as_secs_f64() * 1000.0
        );
    }
}

/// With -v, the time since the process started (from /proc/self/stat and the uptime),
/// which includes the exec and the dynamic loader before `main`.
pub fn trace_total(cli: &Cli, what: &str) {
    if cli.verbose
        && let Some(ms) = since_start_ms()
    {
        print_since_start(ms, what);
    }
}

/// With -v, a time since the process started taken earlier (`since_start_ms`).
pub fn print_since_start(ms: f64, what: &str) {
    eprintln!("chaos: {ms:>8.0} ms  {what} (since the process started, ±10 ms)");
}

/// The time since this process started (exec included; an exec keeps it), from
/// /proc/self/stat's start time and the uptime: 10 ms ticks.
pub fn since_start_ms() -> Option<f64> {
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
}

pub fn format_uptime(uptime: Duration) -> String {
    let secs = uptime.as_secs();
    format!("{}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60)
}

/// The exit status of `create --wait/--console` for how the guest ended.
pub fn ending_status(ending: Ending) -> u8 {
    match ending {
        Ending::Shutdown(ShutdownReason::Poweroff) => 0,
        Ending::Shutdown(ShutdownReason::Reboot) => 3,
        Ending::Shutdown(ShutdownReason::Crash) => 5,
        Ending::Shutdown(_) => 4,
        Ending::Destroyed => 6,
    }
}

pub fn describe(name: &str, domid: u32, ending: Ending) -> String {
    match ending {
        Ending::Shutdown(reason) => format!(
            "{name} (domain {domid}) shut down: {} (reason code {})",
            reason.name(),
            reason.code()
        ),
        Ending::Destroyed => format!("{name} (domain {domid}) was destroyed"),
    }
}

/// Configuration errors name the file too: `chaos: guest.json: vifs[0].mac: …`.
pub fn prefix_config(path: &std::path::Path, err: Error) -> Error {
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

/// What asking the daemon to create came to.
#[derive(Debug)]
pub enum ByDaemon {
    /// No daemon listens: nothing was asked.
    NoDaemon,
    /// Done; the exit status.
    Done(u8),
    /// `--console`: the guest was created paused, for the caller to attach.
    Attach(Made),
}

/// `create` through the chaos daemon, if one listens. Touches no Xen library: the
/// daemon does the Xen work (and for --wait the waiting); --console leaves the
/// attaching to the caller.
pub fn create_by_daemon(cli: &Cli, args: &CreateArgs) -> Result<ByDaemon, Failure> {
    check_watch(args)?;
    let started = Instant::now();
    let socket = RunDir(cli.run_dir.clone()).socket();
    let mut talk = match Conversation::connect(&socket) {
        Ok(talk) => talk,
        Err(AskError::NotRunning { .. }) => return Ok(ByDaemon::NoDaemon),
        Err(err) => return Err(daemon_failed(err)),
    };
    trace(cli, "connect to the daemon", started);
    let started = Instant::now();
    let config =
        domain::load_config(&args.config).map_err(|err| prefix_config(&args.config, err))?;
    trace(cli, "load and check the configuration", started);
    let started = Instant::now();
    let guests = (0..args.count)
        .map(|index| config.numbered(index, args.count)?.to_json())
        .collect::<Result<Vec<_>, ConfigError>>()
        .map_err(|err| prefix_config(&args.config, err.into()))?;
    talk.send(&Request::Create {
        guests,
        // --console attaches before the guest runs.
        paused: args.paused || args.console,
        wait: args.wait,
    })
    .map_err(daemon_failed)?;
    let (made, failure) = match talk.answer(None).map_err(daemon_failed)? {
        Some(Response::Created { guests, failure }) => (guests, failure),
        other => return Err(unexpected(other)),
    };
    trace(
        cli,
        "the chaos daemon's create (request to answer)",
        started,
    );
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
    match failure {
        None => {}
        Some(wire::Failure::Config { field, message }) => {
            return Err(
                prefix_config(&args.config, ConfigError::new(field, message).into()).into(),
            );
        }
        Some(wire::Failure::Failed(message)) => return Err(Failure::Failed(message)),
    }
    let Some(guest) = made
        .into_iter()
        .next()
        .filter(|_| args.console || args.wait)
    else {
        return Ok(ByDaemon::Done(0));
    };
    if args.console {
        return Ok(ByDaemon::Attach(guest));
    }
    eprintln!("chaos: created {} (domain {})", guest.name, guest.domid);
    loop {
        if let Some(signal) = signal::caught() {
            return match wire::ask(&socket, &Request::Destroy { domid: guest.domid }) {
                Ok(Response::Destroyed) => {
                    eprintln!(
                        "chaos: {signal}: destroyed {} (domain {})",
                        guest.name, guest.domid
                    );
                    Ok(ByDaemon::Done(signal::exit_status(signal)))
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
            Some(Response::Ended {
                shutdown_code,
                steps,
            }) => {
                let ending = shutdown_code.map_or(Ending::Destroyed, |code| {
                    Ending::Shutdown(ShutdownReason::from_code(code))
                });
                if cli.verbose {
                    for step in &steps {
                        eprintln!("chaos: {:>8.3} ms  daemon: {}", step.ms, step.name);
                    }
                }
                trace_total(cli, &format!("ended {}", guest.name));
                eprintln!("chaos: {}", describe(&guest.name, guest.domid, ending));
                return Ok(ByDaemon::Done(ending_status(ending)));
            }
            other => return Err(unexpected(other)),
        }
    }
}

/// --console and --wait watch one guest.
pub fn check_watch(args: &CreateArgs) -> Result<(), Failure> {
    if (args.console || args.wait) && args.count > 1 {
        return Err(Failure::Usage(format!(
            "--{} watches one guest; -n {} makes {}",
            if args.console { "console" } else { "wait" },
            args.count,
            args.count
        )));
    }
    Ok(())
}

pub fn daemon_failed(err: AskError) -> Failure {
    Failure::Failed(err.to_string())
}

/// An answer the request does not call for (a refusal says why).
pub fn unexpected(answer: Option<Response>) -> Failure {
    Failure::Failed(match answer {
        Some(Response::Refused(why)) => format!("the chaos daemon refused: {why}"),
        Some(other) => {
            format!("the chaos daemon answered {other:?}, which does not fit the request")
        }
        None => "the chaos daemon did not answer".to_owned(),
    })
}

/// Ask the daemon; "not running" says how to start one.
fn ask_daemon(cli: &Cli, request: &Request) -> Result<Response, Failure> {
    wire::ask(&RunDir(cli.run_dir.clone()).socket(), request).map_err(|err| match err {
        AskError::NotRunning { .. } => {
            Failure::Failed(format!("{err} (start one with `chaos daemon run`)"))
        }
        other => daemon_failed(other),
    })
}

/// `chaos daemon status`.
pub fn daemon_status(cli: &Cli) -> Result<u8, Failure> {
    let Response::Status(status) = ask_daemon(cli, &Request::Status)? else {
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
        let ids = |ids: &[u32]| ids.iter().map(u32::to_string).collect::<Vec<_>>().join(" ");
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

/// `chaos daemon stop`: returns once the daemon is gone.
pub fn daemon_stop(cli: &Cli) -> Result<u8, Failure> {
    match ask_daemon(cli, &Request::Stop)? {
        Response::Stopped { shells_destroyed } => {
            // Gone once its socket is: scripts may start the next one at once.
            let socket = RunDir(cli.run_dir.clone()).socket();
            let deadline = Instant::now() + Duration::from_secs(10);
            while socket.exists() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            eprintln!("chaos: the daemon destroyed {shells_destroyed} shell(s) and stopped");
            Ok(0)
        }
        other => Err(unexpected(Some(other))),
    }
}

/// How the CLI ends: the exit status, the message on stderr.
pub fn exit_code(result: Result<u8, Failure>) -> ExitCode {
    match result {
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
