//! Send a file over uTP to `recv_file`. The file is read in blocks into
//! `Bytes` that `write_chunk` queues as they are: the stack sends from
//! them without copying.
//!
//! ```text
//! cargo run -p tokio-utp --release --example recv_file -- 127.0.0.1:4000 copy.bin
//! cargo run -p tokio-utp --release --example send_file -- 127.0.0.1:4000 original.bin
//! ```

use std::io;
use std::time::Instant;

use bytes::BytesMut;
use tokio::io::AsyncReadExt;
use tokio_utp::UtpStream;

/// Bytes read from the file per chunk: a few 64 KiB packets each.
const BLOCK: usize = 256 * 1024;

#[tokio::main]
async fn main() -> io::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [addr, path] = args.as_slice() else {
        eprintln!("usage: send_file HOST:PORT FILE");
        std::process::exit(2);
    };

    let mut file = tokio::fs::File::open(path).await?;

    let (mut stream, driver) = UtpStream::connect(addr.as_str()).await?;
    tokio::spawn(driver);
    let start = Instant::now();
    let mut bytes = 0u64;
    loop {
        let mut block = BytesMut::with_capacity(BLOCK);
        while block.len() < BLOCK {
            if file.read_buf(&mut block).await? == 0 {
                break;
            }
        }
        if block.is_empty() {
            break;
        }
        bytes += block.len() as u64;
        stream.write_chunk(block.freeze()).await?;
    }
    // FIN, and wait until the receiver has acknowledged everything.
    let stats = stream.stats();
    stream.close().await?;
    let secs = start.elapsed().as_secs_f64();

    println!(
        "sent {bytes} bytes to {addr} in {secs:.3} s ({:.1} MB/s, {} packets retransmitted)",
        bytes as f64 / 1e6 / secs.max(1e-9),
        stats.packets_retransmitted
    );
    Ok(())
}
