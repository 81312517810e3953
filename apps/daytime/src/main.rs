//! daytime: the RFC 867 daytime service. A TCP client that connects to port 13 gets
//! one line — the UTC time as RFC 3339 with microseconds, `2026-11-24T03:12:48.123456Z`
//! and CR LF — and the connection closes; a UDP datagram to port 13 gets the same line
//! back. Xen's wall clock is the time source.
//!
//! Arguments: `ip=ADDR/PREFIX gw=GATEWAY` (else DHCP), `port=N` (default 13).
//!
//! It runs until the toolstack asks it to power off or reboot (`xl shutdown`,
//! `xl reboot`): then it stops accepting, closes its sockets and ends the domain with
//! the matching reason. It can be saved, restored and migrated meanwhile (the kernel
//! and drivers see to that).

#![no_std]
#![no_main]

extern crate alloc;

use alloc::format;
use alloc::string::String;
use core::time::Duration;

use kernel::executor::timeout;
use kernel::executor::{Either, block_on, select, spawn};
use kernel::println;
use kernel::shutdown::ShutdownReason;
use kernel::time::{since_boot, utc_now};
use net::{TcpListener, TcpStream, UdpSocket};
use sysctl::{PowerControl, PowerRequest};

kernel::main!(main);

/// Listening sockets kept ready: this many clients can connect at the same instant;
/// as many datagrams can wait for their answer.
const BACKLOG: usize = 128;
/// Bytes of the datagrams waiting each way (a question and its answer are tens of bytes).
const UDP_QUEUE_BYTES: usize = BACKLOG * 128;
/// A client that does not take its line within this time is dropped.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);

fn main(args: kernel::Args) -> Result<ShutdownReason, String> {
    let port: u16 = match args.value("port") {
        Some(text) => text
            .parse()
            .map_err(|_| format!("port={text}: not a port number"))?,
        None => 13,
    };
    block_on(async {
        let info = net::start(&args)
            .await
            .map_err(|err| format!("network: {err}"))?;
        let power = PowerControl::start()
            .await
            .map_err(|err| format!("power control: {err}"))?;
        let mut listener =
            TcpListener::bind(port, BACKLOG).map_err(|err| format!("tcp port {port}: {err}"))?;
        let udp = UdpSocket::with_queue(port, BACKLOG, UDP_QUEUE_BYTES)
            .map_err(|err| format!("udp port {port}: {err}"))?;
        let boot = since_boot();
        println!(
            "daytime: listening on {}:{port} (tcp, udp), {}.{:03} ms after boot",
            info.address.address(),
            boot.as_millis(),
            boot.subsec_micros() % 1000
        );
        let request = serve_until_stopped(&mut listener, &udp, &power).await?;
        println!("daytime: shutting down ({request})");
        drop(listener);
        drop(udp);
        println!("daytime: stopped");
        Ok(request.shutdown_reason())
    })
}

/// Serve TCP and UDP clients until a poweroff or reboot request comes.
async fn serve_until_stopped(
    listener: &mut TcpListener,
    udp: &UdpSocket,
    power: &PowerControl,
) -> Result<PowerRequest, String> {
    let mut datagram = [0u8; 512];
    loop {
        let clients = select(listener.accept(), udp.recv_from(&mut datagram));
        match select(power.next(), clients).await {
            Either::Left(Ok(request)) => return Ok(request),
            Either::Left(Err(err)) => return Err(format!("power control: {err}")),
            Either::Right(Either::Left(stream)) => spawn(serve(stream)),
            Either::Right(Either::Right((_, from))) => {
                if let Err(err) = udp.send_to(daytime_line().as_bytes(), from).await {
                    log::debug!("daytime: udp reply to {from}: {err}");
                }
            }
        }
    }
}

/// The line RFC 867 sends: the time now, CR LF.
fn daytime_line() -> String {
    format!("{}\r\n", utc_now())
}

async fn serve(mut stream: TcpStream) {
    let line = daytime_line();
    match timeout(CLIENT_TIMEOUT, stream.write_all(line.as_bytes())).await {
        Ok(Ok(())) => {
            let _ = timeout(CLIENT_TIMEOUT, stream.close()).await;
        }
        Ok(Err(err)) => log::debug!("daytime: {:?}: {err}", stream.peer()),
        Err(_) => log::debug!("daytime: {:?}: timed out", stream.peer()),
    }
}
