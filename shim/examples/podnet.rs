//! The shim's pod networking (`src/podnet.rs`) on its own, for the lab
//! (`xtask/src/test/podnet-lab.sh`) before the shim's task service drives it:
//!
//! - `podnet show NETNS`: the namespace's eth0 as the guest would take it;
//! - `podnet redirect NETNS DEV`: redirect eth0 to/from dom0's device DEV, until stdin
//!   ends, then remove the redirect;
//! - `podnet run NETNS CONFIG`: what the shim's start does: the chaos configuration's
//!   first vif takes eth0's MAC, address and gateway (`ip=A/P gw=G` before the command
//!   line), the domain is made paused, its vif's host end redirected, the domain
//!   unpaused; prints `domid N` and how long reading eth0 and redirecting took
//!   (`took …`); once stdin ends, the redirect is removed (the domain is left to `chaos
//!   destroy`, which the job runs before).
//!
//! Errors go to stderr with status 1; a failed `run` destroys its domain.

use std::io::Read;
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

use chaos::config::Mac;

#[path = "../src/podnet.rs"]
#[allow(dead_code)]
mod podnet;

use podnet::{PodInterface, Redirect};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let result = match args.as_slice() {
        ["show", netns] => show(Path::new(netns)),
        ["redirect", netns, dev] => podnet::redirect(Path::new(netns), dev)
            .map_err(|err| err.to_string())
            .and_then(hold),
        ["run", netns, config] => run(Path::new(netns), Path::new(config)),
        _ => Err("usage: podnet show NETNS | redirect NETNS DEV | run NETNS CONFIG".into()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("podnet: {err}");
            ExitCode::FAILURE
        }
    }
}

fn show(netns: &Path) -> Result<(), String> {
    match podnet::pod_interface(netns).map_err(|err| err.to_string())? {
        Some(eth0) => println!("eth0 {}", describe(&eth0)),
        None => println!("no eth0"),
    }
    Ok(())
}

fn describe(eth0: &PodInterface) -> String {
    let mac = eth0.mac.map(|b| format!("{b:02x}")).join(":");
    let gateway = eth0
        .gateway
        .map_or("none".into(), |gw: Ipv4Addr| gw.to_string());
    format!(
        "mac {mac} address {}/{} gateway {gateway} mtu {}",
        eth0.address, eth0.prefix_len, eth0.mtu
    )
}

/// Report the redirect, wait for stdin to end, remove it.
fn hold(redirect: Redirect) -> Result<(), String> {
    println!("redirected {} <-> eth0", redirect.host_dev());
    let mut rest = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut rest);
    redirect.remove().map_err(|err| err.to_string())?;
    println!("removed");
    Ok(())
}

fn run(netns: &Path, config_path: &Path) -> Result<(), String> {
    let mut config = chaos::domain::load_config(config_path).map_err(|err| err.to_string())?;
    let started = Instant::now();
    let eth0 = podnet::pod_interface(netns)
        .map_err(|err| err.to_string())?
        .ok_or_else(|| format!("network namespace {} has no eth0", netns.display()))?;
    let read = started.elapsed();
    println!("eth0 {}", describe(&eth0));
    let vif = config
        .vifs
        .first_mut()
        .ok_or_else(|| format!("{} has no vif", config_path.display()))?;
    vif.mac = Some(Mac(eth0.mac));
    vif.ip = Some(eth0.address);
    vif.prefix_len = Some(eth0.prefix_len);
    vif.gateway = eth0.gateway;
    let mut net = format!("ip={}/{}", eth0.address, eth0.prefix_len);
    if let Some(gateway) = eth0.gateway {
        net.push_str(&format!(" gw={gateway}"));
    }
    config.cmdline = format!("{net} {}", config.cmdline).trim_end().to_owned();

    let host = chaos::Host::open(chaos::Options::default()).map_err(|err| err.to_string())?;
    let made = chaos::domain::create(&host, &config, true).map_err(|err| err.to_string())?;
    let destroy = |why: String| {
        if let Err(err) =
            chaos::domain::destroy_known(&host, made.domid, Some(&made.uuid), made.dev_method)
        {
            eprintln!("podnet: destroying domain {} failed: {err}", made.domid);
        }
        why
    };
    let started = Instant::now();
    let redirect = podnet::redirect(netns, &format!("vif{}.0", made.domid))
        .map_err(|err| destroy(err.to_string()))?;
    let redirected = started.elapsed();
    if let Err(err) = host.xc.domain_unpause(made.domid) {
        let _ = redirect.remove();
        return Err(destroy(format!("unpausing domain {}: {err}", made.domid)));
    }
    println!("domid {}", made.domid);
    println!(
        "took {} ms to read eth0, {} ms to redirect",
        read.as_millis(),
        redirected.as_millis()
    );
    hold(redirect)
}
