//! daytime: the RFC 867 daytime service. A TCP client that connects to port 13 gets
//! one line — the UTC time as RFC 3339 with microseconds, `2026-11-24T03:12:48.123456Z`
//! and CR LF — and the connection closes; a UDP datagram to port 13 gets the same line
//! back. Xen's wall clock is the time source.
//!
//! Arguments: `ip=ADDR/PREFIX gw=GATEWAY` (else DHCP), `port=N` (default 13).

#![no_std]
#![no_main]

extern crate alloc;

use alloc::format;
use alloc::string::String;
use core::time::Duration;

use kernel::executor::{block_on, spawn};
use kernel::println;
use kernel::time::{since_boot, timeout, utc_now};
use net::{TcpListener, TcpStream, UdpSocket};

kernel::main!(main);

/// Listening sockets kept ready: this many clients can connect at the same instant.
const BACKLOG: usize = 128;
/// A client that does not take its line within this time is dropped.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);

fn main(args: kernel::Args) -> Result<(), String> {
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
        let mut listener =
            TcpListener::bind(port, BACKLOG).map_err(|err| format!("tcp port {port}: {err}"))?;
        let udp = UdpSocket::bind(port).map_err(|err| format!("udp port {port}: {err}"))?;
        spawn(answer_datagrams(udp));
        let boot = since_boot();
        println!(
            "daytime: listening on {}:{port} (tcp, udp), {}.{:03} ms after boot",
            info.address.address(),
            boot.as_millis(),
            boot.subsec_micros() % 1000
        );
        loop {
            let stream = listener.accept().await;
            spawn(serve(stream));
        }
    })
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

async fn answer_datagrams(socket: UdpSocket) {
    let mut buf = [0u8; 512];
    loop {
        let (_, from) = socket.recv_from(&mut buf).await;
        if let Err(err) = socket.send_to(daytime_line().as_bytes(), from).await {
            log::debug!("daytime: udp reply to {from}: {err}");
        }
    }
}
