//! `chaos`: create, list, watch, shut down and destroy our PV guests on Xen (the command
//! line and the chaos daemon's client are `chaos::cli`).
//!
//! Exit status: 0 success; 1 failure (the reason on stderr); 2 a usage or configuration
//! error (one line on stderr naming the field; nothing was created). `create --wait`
//! and `create --console` exit with how the guest ended: 0 poweroff, 3 reboot, 4
//! suspend/watchdog/soft_reset, 5 crash, 6 destroyed from outside; 130/143/129 when
//! interrupted by SIGINT/SIGTERM/SIGHUP (the guest is destroyed).

use std::io::Write;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;

use chaos::cli::{
    ByDaemon, Cli, Command, CreateArgs, DaemonCommand, DestroyArgs, Failure, MigrateArgs,
    ReceiveArgs, RestoreArgs, SaveArgs, ShutdownArgs, check_watch, create_by_daemon, daemon_status,
    daemon_stop, describe, ending_status, exit_code, format_uptime, prefix_config, trace,
    trace_total,
};
use chaos::config::DevMethod;
use chaos::console::{GuestConsole, Stopped};
use chaos::daemon::records::Records;
use chaos::daemon::wire::{Made, RunDir};
use chaos::daemon::{self, Options as DaemonOptions};
use chaos::domain::{self, Ending};
use chaos::uuid::Uuid;
use chaos::{Error, Host, Options, signal};
use xenhost::xc::ShutdownReason;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // With -v: what went before main (the exec, the dynamic loader), for the boot
    // bench's process-start share.
    trace_total(&cli, "main");
    exit_code(run(&cli))
}

fn open(cli: &Cli, device_timeout: Duration) -> Result<Host, Failure> {
    let started = Instant::now();
    let host = Host::open(Options {
        xendevd_socket: cli.xendevd.clone(),
        device_timeout,
        trace: cli.verbose,
        run_dir: cli.run_dir.clone(),
        ..Options::default()
    })?;
    trace(cli, "open libxenctrl", started);
    Ok(host)
}

fn run(cli: &Cli) -> Result<u8, Failure> {
    signal::install();
    match &cli.command {
        Command::Create(args) => create(cli, args),
        Command::Destroy(args) => destroy(cli, args),
        Command::Daemon(command) => run_daemon(cli, command),
        Command::Shutdown(args) => shutdown(cli, args),
        Command::Save(args) => save(cli, args),
        Command::Restore(args) => restore(cli, args),
        Command::Migrate(args) => migrate(cli, args),
        Command::Receive(args) => receive(cli, args),
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
                if shells.contains(&d.domid)
                    || d.name.starts_with(chaos::config::SHELL_NAME_PREFIX)
                    || d.claimed
                        .as_ref()
                        .is_some_and(|c| c.is_shell_in_the_making())
                {
                    continue;
                }
                // A domain a create has not finished says so after the usual columns
                // (only then: the lines of finished domains stay as they were).
                let _ = writeln!(
                    out,
                    "{:>5}  {:<24} {:>8}  {:>5}  {:<6}  {:>10}{}",
                    d.domid,
                    d.name,
                    d.memory_mib,
                    d.vcpus,
                    d.state,
                    d.uptime.map_or_else(|| "-".to_owned(), format_uptime),
                    d.claimed
                        .map_or_else(String::new, |claimed| format!("  {}", claimed.describe()))
                );
            }
            Ok(0)
        }
        Command::Console(args) => {
            let host = open(cli, Options::default().device_timeout)?;
            let domid = domain::resolve(&host, &args.domain)?;
            let mut out = std::io::stdout().lock();
            let console = GuestConsole::open(&host, domid, domain::dev_method_of(&host, domid)?)?;
            Ok(match console.relay(&host, domid, None, &mut out)? {
                Stopped::Ended(_) | Stopped::Closed | Stopped::Detached => 0,
                Stopped::Interrupted(signal) => signal::exit_status(signal),
            })
        }
    }
}

fn create(cli: &Cli, args: &CreateArgs) -> Result<u8, Failure> {
    check_watch(args)?;
    if !args.no_daemon {
        match create_by_daemon(cli, args)? {
            ByDaemon::NoDaemon => {}
            ByDaemon::Done(status) => return Ok(status),
            ByDaemon::Attach(made) => {
                let host = open(cli, Duration::from_secs(args.device_timeout))?;
                let config = domain::load_config(&args.config)
                    .map_err(|err| prefix_config(&args.config, err))?;
                return watch_created(&host, &created_of(&made)?, true, config.paused);
            }
        }
    }
    let started = Instant::now();
    let config =
        domain::load_config(&args.config).map_err(|err| prefix_config(&args.config, err))?;
    trace(cli, "load and check the configuration", started);
    let host = open(cli, Duration::from_secs(args.device_timeout))?;
    let watch = args.console || args.wait;
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
        return destroy_orphans(cli, &host);
    };
    let domid = domain::resolve(&host, target)?;
    domain::destroy_domain(&host, domid, None)?;
    Ok(0)
}

/// `chaos destroy --orphans`: the domains of creates whose chaos died, then the shells
/// of a chaos daemon that died (unless one runs: its shells are its own). Says what it
/// removed, one line each, on stderr.
fn destroy_orphans(cli: &Cli, host: &Host) -> Result<u8, Failure> {
    let swept = domain::destroy_orphans(host)?;
    for line in swept.removed.iter().chain(&swept.left_alone) {
        eprintln!("chaos: {line}");
    }
    eprintln!(
        "chaos: destroyed {} orphan domain(s) of chaos create",
        swept.domains
    );
    let mut failures = swept.failures;
    let run_dir = RunDir(cli.run_dir.clone());
    match daemon::lock(&run_dir) {
        Ok(_lock) => {
            let (destroyed, shell_failures) = daemon::sweep(host, &Records::new(run_dir.shells()))?;
            eprintln!("chaos: destroyed {destroyed} shell(s) a chaos daemon left");
            failures.extend(shell_failures);
        }
        Err(err @ daemon::StartError::Running { .. }) => {
            eprintln!("chaos: {err}: its shells are its own (`chaos daemon stop` destroys them)");
        }
        Err(other) => failures.push(other.to_string()),
    }
    if failures.is_empty() {
        return Ok(0);
    }
    Err(Failure::Failed(failures.join("; ")))
}

fn run_daemon(cli: &Cli, command: &DaemonCommand) -> Result<u8, Failure> {
    match command {
        DaemonCommand::Run(args) => {
            daemon::run(DaemonOptions {
                run_dir: RunDir(cli.run_dir.clone()),
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
        DaemonCommand::Status => daemon_status(cli),
        DaemonCommand::Stop => daemon_stop(cli),
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
    let console = GuestConsole::open(host, domid, made.dev_method)?;
    unpause()?;
    let stopped = console.relay(host, domid, Some(&made.uuid), &mut out)?;
    match stopped {
        Stopped::Ended(ending) => Ok(Watched::Ended(ending)),
        Stopped::Closed => Ok(Watched::Ended(
            domain::check_ending(host, domid, Some(&made.uuid))?.unwrap_or(Ending::Destroyed),
        )),
        Stopped::Interrupted(signal) => Ok(Watched::Interrupted(signal)),
        Stopped::Detached => Ok(Watched::Detached),
    }
}

fn save(cli: &Cli, args: &SaveArgs) -> Result<u8, Failure> {
    let host = open(cli, Options::default().device_timeout)?;
    let domid = domain::resolve(&host, &args.domain)?;
    let saved = chaos::save::save(&host, domid, &args.file, args.keep_running)?;
    eprintln!(
        "chaos: saved {} (domain {domid}) to {} ({} MiB){}",
        saved.name,
        args.file.display(),
        saved.bytes >> 20,
        if saved.kept_running {
            "; it runs on"
        } else {
            ""
        }
    );
    trace_total(cli, "saved");
    Ok(0)
}

fn restore(cli: &Cli, args: &RestoreArgs) -> Result<u8, Failure> {
    // The file first: a bad one is refused before Xen is even opened.
    let saved = chaos::save::open(&args.file)?;
    let host = open(cli, Options::default().device_timeout)?;
    let made = chaos::save::restore(&host, &saved, args.paused)?;
    println!("{}", made.domid);
    trace_total(cli, "restored");
    Ok(0)
}

fn migrate(cli: &Cli, args: &MigrateArgs) -> Result<u8, Failure> {
    let host = open(cli, Options::default().device_timeout)?;
    let domid = domain::resolve(&host, &args.domain)?;
    let migrated = chaos::migrate::migrate(&host, domid, &args.target)?;
    eprintln!(
        "chaos: migrated {} (domain {domid}) to {}",
        migrated.name, args.target
    );
    trace_total(cli, "migrated");
    Ok(0)
}

fn receive(cli: &Cli, args: &ReceiveArgs) -> Result<u8, Failure> {
    let host = open(cli, Options::default().device_timeout)?;
    chaos::migrate::receive(&host, args.port, args.once)?;
    Ok(0)
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
