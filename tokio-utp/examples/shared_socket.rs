//! uTP and a DHT-style request/response on one UDP port, as a BitTorrent
//! client runs them: the uTP socket hands every datagram that is not uTP to
//! the application (`recv_other`), and the application answers through the
//! same socket (`send_to`).
//!
//! ```sh
//! cargo run -p tokio-utp --example shared_socket
//! ```

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UdpSocket;
use tokio_utp::{Config, UtpSocket};

#[tokio::main]
async fn main() -> std::io::Result<()> {
    // The client's one port: bound by the application, then shared.
    let std_sock = std::net::UdpSocket::bind("127.0.0.1:0")?;
    let sock = UtpSocket::from_std(std_sock, Config::default())?;
    let port = sock.local_addr()?;
    let listener = sock.listen()?;
    println!("uTP and DHT on {port}");

    // The DHT side of the application: answer pings on the shared port.
    let dht = {
        let sock = sock.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 1500];
            let (n, from) = sock.recv_other(&mut buf).await?;
            println!(
                "DHT query from {from}: {}",
                String::from_utf8_lossy(&buf[..n])
            );
            sock.send_to(b"d1:rd2:id20:mnopqrstuvwxyz123456e1:t2:aa1:y1:re", from)
                .await?;
            std::io::Result::Ok(())
        })
    };

    // Give the DHT task time to ask for datagrams: they are kept from the
    // first `recv_other` call on.
    tokio::time::sleep(Duration::from_millis(50)).await;

    // A remote DHT node pings us...
    let node = UdpSocket::bind("127.0.0.1:0").await?;
    node.send_to(
        b"d1:ad2:id20:abcdefghij0123456789e1:q4:ping1:t2:aa1:y1:qe",
        port,
    )
    .await?;
    let mut buf = [0u8; 1500];
    let (n, from) = node.recv_from(&mut buf).await?;
    println!("DHT node got {} bytes back from {from}", n);
    dht.await.expect("dht task")?;

    // ...while a peer connects over uTP to the same port.
    let server = tokio::spawn(async move {
        let (mut stream, peer) = listener.accept().await?;
        let mut msg = String::new();
        stream.read_to_string(&mut msg).await?;
        println!("uTP from {peer}: {msg}");
        std::io::Result::Ok(())
    });
    let peer = UtpSocket::bind("127.0.0.1:0").await?;
    let mut stream = peer.connect(port).await?;
    stream.write_all(b"piece 7, block 0").await?;
    stream.close().await?;
    server.await.expect("server task")?;
    println!("socket counters: {:?}", sock.stats());
    Ok(())
}
