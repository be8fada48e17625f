//! Connect to a uTP listener and say hello.
//!
//! ```text
//! cargo run -p tokio-utp --example connect                   # self-hosted
//! cargo run -p tokio-utp --example connect -- 127.0.0.1:4000 # a real peer
//! ```
//!
//! With an address it connects there (try it against `utp listen
//! 127.0.0.1:4000`, which prints what it receives). Without one it first
//! starts its own listener on an ephemeral port of 127.0.0.1, so the example
//! runs standalone, and prints what that listener received.

use std::io;
use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinHandle;
use tokio_utp::{UtpListener, UtpStream};

#[tokio::main]
async fn main() -> io::Result<()> {
    let (addr, listener_task) = match std::env::args().nth(1) {
        Some(arg) => (resolve(&arg).await?, None),
        None => {
            let (addr, task) = start_listener().await?;
            println!("no address given: listening on {addr} myself");
            (addr, Some(task))
        }
    };

    let (mut stream, driver) = UtpStream::connect(addr).await?;
    tokio::spawn(driver);
    stream.write_all(b"Hi there!").await?;
    stream.close().await?;

    println!("sent \"Hi there!\" to {addr}");
    if let Some(task) = listener_task {
        task.await.expect("listener task panicked")?;
    }
    Ok(())
}

/// Resolves `host:port` (names work too) to one socket address.
async fn resolve(arg: &str) -> io::Result<SocketAddr> {
    tokio::net::lookup_host(arg).await?.next().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{arg} resolved to nothing"),
        )
    })
}

/// A listener on an ephemeral port that accepts one connection and prints
/// everything it reads.
async fn start_listener() -> io::Result<(SocketAddr, JoinHandle<io::Result<()>>)> {
    let listener = UtpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let task = tokio::spawn(async move {
        let (mut stream, peer) = listener.accept().await?;
        let mut received = Vec::new();
        stream.read_to_end(&mut received).await?;
        println!(
            "listener received {:?} from {peer}",
            String::from_utf8_lossy(&received)
        );
        Ok(())
    });
    Ok((addr, task))
}
