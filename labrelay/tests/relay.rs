//! Both ends of the relay in one process, joined by a socket pair in place of the
//! virtio-serial channel, in front of real servers on 127.0.0.1.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use labrelay::host::{Forward, HostRelay, Listeners};
use labrelay::mux::Mux;
use labrelay::{dom0, wire};

const TIMEOUT: Duration = Duration::from_secs(20);

/// A TCP and a UDP socket on one free port of 127.0.0.1.
fn tcp_and_udp() -> (TcpListener, UdpSocket) {
    loop {
        let tcp = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let port = tcp.local_addr().unwrap().port();
        if let Ok(udp) = UdpSocket::bind((Ipv4Addr::LOCALHOST, port)) {
            return (tcp, udp);
        }
    }
}

/// The IPv4 address a listener on 127.0.0.1 got.
fn local_v4(listener: &TcpListener) -> SocketAddrV4 {
    match listener.local_addr().unwrap() {
        std::net::SocketAddr::V4(addr) => addr,
        other => panic!("{other} is not IPv4"),
    }
}

fn free_port() -> u16 {
    let (tcp, _udp) = tcp_and_udp();
    tcp.local_addr().unwrap().port()
}

/// A relay from a free host port to `to`, its dom0 end on a thread.
fn relay_to(to: SocketAddrV4) -> (HostRelay, SocketAddrV4) {
    let port = free_port();
    let (host_link, dom0_link) = UnixStream::pair().unwrap();
    thread::spawn(move || {
        let mux = Mux::new(Box::new(dom0_link.try_clone().unwrap()));
        mux.send(&wire::Frame::Hello {
            version: wire::VERSION,
        })
        .unwrap();
        dom0::serve(&mux, dom0_link)
    });
    let relay = Listeners::bind(&[Forward {
        host_port: port,
        to,
    }])
    .unwrap()
    .start(host_link)
    .unwrap();
    (relay, SocketAddrV4::new(Ipv4Addr::LOCALHOST, port))
}

/// A daytime-like server: each TCP client gets one line and the connection closes;
/// each datagram gets the line back.
fn line_server() -> SocketAddrV4 {
    let (tcp, udp) = tcp_and_udp();
    let addr = local_v4(&tcp);
    thread::spawn(move || {
        for client in tcp.incoming() {
            let mut client = client.unwrap();
            client.write_all(b"it is now\r\n").unwrap();
        }
    });
    thread::spawn(move || {
        let mut buf = [0u8; 512];
        loop {
            let (len, from) = udp.recv_from(&mut buf).unwrap();
            let mut reply = b"it is now: ".to_vec();
            reply.extend_from_slice(&buf[..len]);
            udp.send_to(&reply, from).unwrap();
        }
    });
    addr
}

#[test]
fn a_hundred_tcp_clients_at_once_each_get_their_line() {
    let (relay, addr) = relay_to(line_server());
    let start = Arc::new(Barrier::new(100));
    let clients: Vec<_> = (0..100)
        .map(|_| {
            let start = start.clone();
            thread::spawn(move || {
                start.wait();
                let mut stream = TcpStream::connect_timeout(&addr.into(), TIMEOUT)?;
                stream.set_read_timeout(Some(TIMEOUT))?;
                let mut line = String::new();
                stream.read_to_string(&mut line)?;
                Ok::<_, std::io::Error>(line)
            })
        })
        .collect();
    for client in clients {
        assert_eq!(client.join().unwrap().unwrap(), "it is now\r\n");
    }
    // Both halves ended on every stream: none is left open.
    let deadline = Instant::now() + TIMEOUT;
    while relay.open_streams() > 0 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(relay.open_streams(), 0);
}

#[test]
fn a_hundred_udp_clients_at_once_each_get_their_reply() {
    let (_relay, addr) = relay_to(line_server());
    let sockets: Vec<UdpSocket> = (0..100)
        .map(|_| {
            let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
            socket.set_read_timeout(Some(TIMEOUT)).unwrap();
            socket
        })
        .collect();
    for (i, socket) in sockets.iter().enumerate() {
        socket.send_to(format!("{i}").as_bytes(), addr).unwrap();
    }
    for (i, socket) in sockets.iter().enumerate() {
        let mut buf = [0u8; 512];
        let (len, from) = socket.recv_from(&mut buf).unwrap();
        assert_eq!(from, addr.into());
        assert_eq!(&buf[..len], format!("it is now: {i}").as_bytes());
    }
}

#[test]
fn megabytes_each_way_arrive_intact_past_the_window() {
    // An echo server that reads everything before it answers: the client's data must
    // get through while nothing comes back, then all of it must come back, in order.
    let server = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let to = local_v4(&server);
    thread::spawn(move || {
        let (mut client, _) = server.accept().unwrap();
        let mut all = Vec::new();
        client.read_to_end(&mut all).unwrap();
        client.write_all(&all).unwrap();
    });
    let (_relay, addr) = relay_to(to);
    let sent: Vec<u8> = (0..4 << 20)
        .map(|i: u32| (i * 7 + i / 4093) as u8)
        .collect();
    assert!(sent.len() > 8 * labrelay::mux::WINDOW);
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut writer = stream.try_clone().unwrap();
    let data = sent.clone();
    let writing = thread::spawn(move || {
        writer.write_all(&data).unwrap();
        writer.shutdown(Shutdown::Write).unwrap();
    });
    let mut echoed = Vec::new();
    stream.read_to_end(&mut echoed).unwrap();
    writing.join().unwrap();
    assert_eq!(echoed.len(), sent.len());
    assert!(echoed == sent, "the echo differs from what was sent");
}

#[test]
fn a_refused_connection_is_reset_at_once() {
    let closed = free_port();
    let (_relay, addr) = relay_to(SocketAddrV4::new(Ipv4Addr::LOCALHOST, closed));
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    let started = Instant::now();
    let mut got = Vec::new();
    let err = stream.read_to_end(&mut got).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset, "{err}");
    assert!(got.is_empty());
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[test]
fn dropping_the_relay_ends_its_clients_and_frees_the_port() {
    // A server that accepts and never answers: the client waits until the relay goes.
    let silent = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let to = local_v4(&silent);
    let (relay, addr) = relay_to(to);
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    let _held = silent.accept().unwrap();
    let started = Instant::now();
    drop(relay);
    let mut got = Vec::new();
    let _ = stream.read_to_end(&mut got);
    assert!(got.is_empty());
    assert!(started.elapsed() < Duration::from_secs(5));
    Listeners::bind(&[Forward {
        host_port: addr.port(),
        to,
    }])
    .expect("the port is free again");
}

#[test]
fn a_port_that_is_taken_is_named() {
    let taken = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let port = taken.local_addr().unwrap().port();
    let err = Listeners::bind(&[Forward {
        host_port: port,
        to: "10.0.2.16:13".parse().unwrap(),
    }])
    .unwrap_err();
    assert!(
        err.to_string()
            .contains(&format!("tcp port 127.0.0.1:{port}")),
        "{err}"
    );
}
