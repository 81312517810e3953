//! bootbench: runs in dom0 and times toolstack commands, the same way for every
//! toolstack, so `cargo xtask bench boot` compares like with like.
//!
//! - `until-exit`: the time a command takes (e.g. `xl create -F noop.cfg`: create →
//!   the guest ran → it is gone).
//! - `until-reply`: the time from starting a command (e.g. `xl create daytime.cfg`) to
//!   the first line a TCP service in the guest sends back.
//! - `downtime`: the time a command takes (e.g. `xl migrate …`) while a client asks the
//!   guest's service for a line every few milliseconds; the longest time between two
//!   answers, until the first answer after the command ended, is the guest's downtime
//!   (`bootbench-downtime LABEL RUN MILLISECONDS`, before the run's time line).
//!
//! Each run is followed by an untimed `--cleanup` command. One line per run on stdout:
//! `bootbench LABEL RUN MILLISECONDS`; a command's own output is shown only if it fails,
//! except that `--show-stderr` passes on each line a timed run's command, then its
//! cleanup, wrote to stderr as `bootbench-out LABEL RUN LINE` (e.g. the steps `chaos -v`
//! times, the guest's own boot times), before the run's time line. With `--limit-ms`, a series whose median passes the limit says
//! so last (`bootbench-limit LABEL MEDIAN LIMIT`) and bootbench exits with status 3
//! ([`bootbench::passes_limit`]: the density bench stops that toolstack there).
//!
//! `until-reply` does not hammer the guest's address while it boots: connecting before
//! anything answers ARP leaves dom0's neighbour entry FAILED, and Linux then refuses
//! connects for seconds after the guest is up. It forgets the address before each run
//! and connects once dom0 has learnt the guest's MAC (the guest announces itself with a
//! gratuitous ARP when its address is set; dom0 needs `arp_accept` to learn from it).

use std::io::{BufRead, BufReader};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::process::{Child, Command, ExitCode, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(about)]
struct Cli {
    /// A name for the series, repeated on every output line.
    #[arg(long)]
    label: String,
    /// Timed runs.
    #[arg(long, default_value_t = 10)]
    runs: u32,
    /// Untimed runs first, to warm caches.
    #[arg(long, default_value_t = 1)]
    warmup: u32,
    /// Shell command run after each run (not timed); `{i}` is the run number.
    #[arg(long)]
    cleanup: Option<String>,
    /// Pass on what the timed command and its cleanup write to stderr, a `bootbench-out`
    /// line each.
    #[arg(long)]
    show_stderr: bool,
    /// Exit with status 3 (after every run) if the median passes this many ms.
    #[arg(long, value_name = "MS")]
    limit_ms: Option<f64>,
    #[command(subcommand)]
    what: What,
}

#[derive(Debug, Subcommand)]
enum What {
    /// Time COMMAND until it exits (it must exit 0).
    UntilExit {
        /// Shell command; `{i}` is the run number.
        command: String,
    },
    /// Time from starting COMMAND to the first line from ADDR.
    UntilReply {
        /// Where the guest's service listens.
        #[arg(long)]
        addr: SocketAddr,
        /// Give up on a run after this many seconds.
        #[arg(long, default_value_t = 60)]
        timeout: u64,
        /// Shell command; `{i}` is the run number.
        command: String,
    },
    /// Time COMMAND (it must exit 0) while asking ADDR for a line every few ms; the
    /// longest time without an answer, until the first answer after COMMAND ended, is
    /// printed as `bootbench-downtime LABEL RUN MS`. ADDR must answer when it starts.
    Downtime {
        #[arg(long)]
        addr: SocketAddr,
        /// Give up on a run after this many seconds.
        #[arg(long, default_value_t = 120)]
        timeout: u64,
        /// Shell command; `{i}` is the run number.
        command: String,
    },
    /// Time one reply of a running service: connect to ADDR, read its first line. Runs
    /// follow each other after INTERVAL ms; a run without a reply within 5 s counts 5 s.
    /// Ends with `bootbench-percentiles LABEL P50 P99 MAX FAILED`.
    Reply {
        #[arg(long)]
        addr: SocketAddr,
        #[arg(long, default_value_t = 50)]
        interval_ms: u64,
    },
}

/// Start `command` under `sh -c`, its output collected.
fn start(command: &str, run: u32) -> Result<Child> {
    Command::new("sh")
        .arg("-c")
        .arg(command.replace("{i}", &run.to_string()))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting `{command}`"))
}

/// Wait for a command from [`start`]; its output becomes the error if it fails.
fn finish(child: Child, command: &str, run: u32) -> Result<Output> {
    let output = child.wait_with_output()?;
    if !output.status.success() {
        bail!(
            "run {run}: `{command}` failed: {}\n{}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(output)
}

fn until_exit(command: &str, run: u32) -> Result<(Duration, Output)> {
    let began = Instant::now();
    let output = finish(start(command, run)?, command, run)?;
    Ok((began.elapsed(), output))
}

/// Whether dom0's ARP table has a complete entry for `ip` (`/proc/net/arp` flags 0x2).
fn neighbour_known(ip: IpAddr) -> bool {
    let Ok(table) = std::fs::read_to_string("/proc/net/arp") else {
        return false;
    };
    table.lines().skip(1).any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        fields.len() >= 3
            && fields[0] == ip.to_string()
            && u32::from_str_radix(fields[2].trim_start_matches("0x"), 16)
                .is_ok_and(|flags| flags & 0x2 != 0)
    })
}

fn forget_neighbour(ip: IpAddr) -> Result<()> {
    // Busybox's `ip` fails with "Nothing to flush" when there is no entry: fine too.
    Command::new("ip")
        .args(["neigh", "flush", &ip.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .context("running `ip neigh flush`")?;
    Ok(())
}

/// How long one connection attempt may wait for the guest's SYN-ACK (or RST). A SYN the
/// guest never saw (it announced its address before its vif could take packets) costs
/// this much of the measure, so it is short: the next attempt follows at once.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(20);

/// Read one line from `addr`, if the service is up.
fn first_line(addr: SocketAddr) -> Option<String> {
    let stream = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).ok()?;
    line.ends_with('\n').then_some(line)
}

fn until_reply(
    command: &str,
    run: u32,
    addr: SocketAddr,
    timeout: Duration,
) -> Result<(Duration, Output)> {
    forget_neighbour(addr.ip())?;
    let began = Instant::now();
    let mut child = start(command, run)?;
    let replied = loop {
        if began.elapsed() > timeout {
            let _ = child.kill();
            bail!("run {run}: no reply from {addr} within {timeout:?}");
        }
        if child.try_wait()?.is_some_and(|status| !status.success()) {
            finish(child, command, run)?;
            unreachable!("finish reports the failure");
        }
        // Up on the network (its gratuitous ARP arrived), then the service: a refused
        // connection means not yet.
        if neighbour_known(addr.ip()) && first_line(addr).is_some() {
            break began.elapsed();
        }
        std::thread::sleep(Duration::from_millis(1));
    };
    let output = finish(child, command, run)?;
    Ok((replied, output))
}

/// How long a poll of [`downtime`] waits for the line once connected: a guest
/// suspended mid-answer must not hide the answers after it.
const POLL_READ_TIMEOUT: Duration = Duration::from_millis(200);

/// Whether `addr` answers with a line now (within [`CONNECT_TIMEOUT`] to connect and
/// [`POLL_READ_TIMEOUT`] to answer).
fn answers(addr: SocketAddr) -> bool {
    let Ok(stream) = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT) else {
        return false;
    };
    if stream.set_read_timeout(Some(POLL_READ_TIMEOUT)).is_err() {
        return false;
    }
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).is_ok() && line.ends_with('\n')
}

/// Run `command` while polling `addr`: its time, and the longest gap between answers
/// (see [`What::Downtime`]).
fn downtime(
    command: &str,
    run: u32,
    addr: SocketAddr,
    timeout: Duration,
) -> Result<(Duration, Duration, Output)> {
    if !answers(addr) {
        bail!("run {run}: {addr} does not answer before `{command}`");
    }
    let began = Instant::now();
    let mut last_answer = began;
    let mut longest = Duration::ZERO;
    let mut child = start(command, run)?;
    let mut took = None;
    loop {
        if began.elapsed() > timeout {
            let _ = child.kill();
            bail!("run {run}: {addr} did not answer within {timeout:?} of `{command}`");
        }
        if took.is_none()
            && let Some(status) = child.try_wait()?
        {
            if !status.success() {
                finish(child, command, run)?;
                unreachable!("finish reports the failure");
            }
            took = Some(began.elapsed());
        }
        if answers(addr) {
            let now = Instant::now();
            longest = longest.max(now - last_answer);
            last_answer = now;
            if let Some(took) = took {
                let output = finish(child, command, run)?;
                return Ok((took, longest, output));
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// How long a service took to send its first line (a timed-out run counts its wait).
fn reply(addr: SocketAddr, interval: Duration, failed: &mut u32) -> (Duration, Output) {
    std::thread::sleep(interval);
    let began = Instant::now();
    let line = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .ok()
        .and_then(|stream| {
            let left = Duration::from_secs(5).saturating_sub(began.elapsed());
            stream
                .set_read_timeout(Some(left.max(Duration::from_millis(1))))
                .ok()?;
            let mut line = String::new();
            BufReader::new(stream).read_line(&mut line).ok()?;
            line.ends_with('\n').then_some(line)
        });
    *failed += u32::from(line.is_none());
    let output = Output {
        status: std::process::ExitStatus::default(),
        stdout: Vec::new(),
        stderr: Vec::new(),
    };
    (began.elapsed(), output)
}

fn main() -> Result<ExitCode> {
    let cli = Cli::parse();
    let mut millis = Vec::new();
    let mut failed = 0;
    for run in 0..cli.warmup + cli.runs {
        let (took, output) = match &cli.what {
            What::Reply { addr, interval_ms } => {
                // Warm-up runs count no failures.
                let mut failures = 0;
                let timed = reply(*addr, Duration::from_millis(*interval_ms), &mut failures);
                if run >= cli.warmup {
                    failed += failures;
                }
                timed
            }
            What::UntilExit { command } => until_exit(command, run)?,
            What::Downtime {
                addr,
                timeout,
                command,
            } => {
                let (took, down, output) =
                    downtime(command, run, *addr, Duration::from_secs(*timeout))?;
                if run >= cli.warmup {
                    let ms = down.as_secs_f64() * 1000.0;
                    println!(
                        "bootbench-downtime {} {} {ms:.3}",
                        cli.label,
                        run - cli.warmup
                    );
                }
                (took, output)
            }
            What::UntilReply {
                addr,
                timeout,
                command,
            } => until_reply(command, run, *addr, Duration::from_secs(*timeout))?,
        };
        let cleaned = match &cli.cleanup {
            Some(cleanup) => Some(finish(start(cleanup, run)?, cleanup, run)?),
            None => None,
        };
        if run >= cli.warmup {
            let run = run - cli.warmup;
            if cli.show_stderr {
                for out in std::iter::once(&output).chain(&cleaned) {
                    for line in String::from_utf8_lossy(&out.stderr).lines() {
                        println!("bootbench-out {} {run} {line}", cli.label);
                    }
                }
            }
            let ms = took.as_secs_f64() * 1000.0;
            println!("bootbench {} {run} {ms:.3}", cli.label);
            millis.push(ms);
        }
    }
    if let What::Reply { .. } = cli.what {
        let pct = |p| bootbench::percentile(&millis, p).unwrap_or(f64::NAN);
        println!(
            "bootbench-percentiles {} {:.3} {:.3} {:.3} {failed}",
            cli.label,
            pct(50.0),
            pct(99.0),
            pct(100.0)
        );
    }
    if let Some(limit) = cli.limit_ms
        && bootbench::passes_limit(&millis, limit)
    {
        let median = bootbench::median(&millis).unwrap_or(f64::NAN);
        println!("bootbench-limit {} {median:.3} {limit}", cli.label);
        return Ok(ExitCode::from(3));
    }
    Ok(ExitCode::SUCCESS)
}
