//! The library's tokio adapter (`dserver::tokio_io`, feature `tokio`): an echo server written
//! with `AsyncRead`/`AsyncWrite` on a current-thread runtime, its node on AF_XDP in a node's
//! namespace behind `dsha xdp`; kernel-TCP clients (`std::net`) in the client's namespace
//! talk to the DS address at the same time, each getting back exactly what it sent. Needs
//! root; prints SKIP otherwise.

mod cluster;

use cluster::{Addrs, Cluster};
use ds_testbed::conn::connect_retrying;
use ds_testbed::{require_root, PatternStream};
use std::io::{Read, Write};
use std::net::Ipv6Addr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const CLIENTS: usize = 3;
const BYTES: usize = 200_000;

/// Serve `CLIENTS` echo connections on `node`, each in its own task, then return.
async fn echo(node: dserver::Node) -> Result<(), dserver::Error> {
    let node = dserver::tokio_io::AsyncNode::new(node);
    let driver = node.clone();
    tokio::task::spawn_local(async move {
        if let Err(e) = driver.run().await {
            panic!("the node's driver stopped: {e}");
        }
    });
    let mut tasks = Vec::new();
    for _ in 0..CLIENTS {
        let (mut conn, state) = node.accept().await?;
        assert!(state.is_none(), "a new client has no state");
        tasks.push(tokio::task::spawn_local(async move {
            let mut buf = vec![0u8; 8192];
            let mut total = 0;
            loop {
                let n = conn.read(&mut buf).await?;
                if n == 0 {
                    break;
                }
                conn.write_all(&buf[..n]).await?;
                total += n;
            }
            conn.shutdown().await?;
            Ok::<usize, std::io::Error>(total)
        }));
    }
    for t in tasks {
        let n = t.await.expect("task").expect("echo");
        assert_eq!(n, BYTES);
    }
    // The closed connections still have their last bytes and FINs to deliver.
    node.with_node(|n| n.shutdown(Duration::from_secs(10)))
}

#[test]
fn a_tokio_echo_server_on_the_library_serves_clients_at_once() {
    if !require_root("a_tokio_echo_server_on_the_library_serves_clients_at_once") {
        return;
    }
    let c = Cluster::start("tk", Addrs::new(0xe3, 1));
    let ds: Ipv6Addr = c.a.ds().parse().expect("DS");
    let coa: Ipv6Addr = c.a.coa(0).parse().expect("CoA");
    let mac = c.a.mac(0);
    std::thread::scope(|s| {
        let server = s.spawn(|| {
            c.topo.nodes[0].run(move || {
                let node = dserver::Node::builder()
                    .ds_addr(ds)
                    .care_of(coa)
                    .mac(mac)
                    .port(7)
                    .device(dserver::Device::afxdp("n0"))
                    .build()
                    .expect("node");
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime");
                let local = tokio::task::LocalSet::new();
                local.block_on(&rt, async {
                    tokio::time::timeout(Duration::from_secs(30), echo(node)).await
                })
            })
        });
        // The node needs a moment to attach; the clients retry their connects.
        let sent = c.topo.client.run(move || {
            let clients: Vec<_> = (0..CLIENTS)
                .map(|k| {
                    std::thread::spawn(move || {
                        let to = std::net::SocketAddr::from((ds, 7));
                        let mut s = connect_retrying(to, 20).expect("connect");
                        s.set_read_timeout(Some(Duration::from_secs(20)))
                            .expect("timeout");
                        let msg = PatternStream::bytes(k as u64 + 1, BYTES);
                        let mut r = s.try_clone().expect("clone");
                        let reader = std::thread::spawn(move || {
                            let mut back = Vec::new();
                            r.read_to_end(&mut back).map(|_| back)
                        });
                        s.write_all(&msg).expect("write");
                        s.shutdown(std::net::Shutdown::Write).expect("shutdown");
                        let back = reader.join().expect("reader").expect("read");
                        assert!(back == msg, "client {k}: the echo differs");
                        back.len()
                    })
                })
                .collect();
            clients
                .into_iter()
                .map(|t| t.join().expect("client"))
                .sum::<usize>()
        });
        assert_eq!(sent, CLIENTS * BYTES);
        let served = server.join().expect("server thread");
        served.expect("in time").expect("echo server");
    });
    assert!(c.stop(), "the home agent removed its pins");
}
