//! Client for `echo_server`: sends a message, reads the echo back until the
//! server closes, and checks that it matches.
//!
//! ```text
//! cargo run -p tokio-utp --example echo_client -- 127.0.0.1:4000 hello uTP
//! ```

use std::io;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_utp::UtpStream;

#[tokio::main]
async fn main() -> io::Result<()> {
    let mut args = std::env::args().skip(1);
    let Some(addr) = args.next() else {
        eprintln!("usage: echo_client HOST:PORT [MESSAGE...]");
        std::process::exit(2);
    };
    let words: Vec<String> = args.collect();
    let message = if words.is_empty() {
        "hello, uTP".to_string()
    } else {
        words.join(" ")
    };

    let (stream, driver) = UtpStream::connect(addr.as_str()).await?;
    tokio::spawn(driver);
    let (mut rd, mut wr) = stream.into_split();

    // Write and read at once, so long messages can't deadlock on full buffers.
    let send = async {
        wr.write_all(message.as_bytes()).await?;
        wr.shutdown().await // FIN; reading goes on
    };
    let mut echoed = Vec::new();
    let receive = rd.read_to_end(&mut echoed);
    tokio::try_join!(send, receive)?;

    println!("{}", String::from_utf8_lossy(&echoed));
    if echoed != message.as_bytes() {
        eprintln!(
            "echo differs: sent {} bytes, got {} back",
            message.len(),
            echoed.len()
        );
        std::process::exit(1);
    }
    Ok(())
}
