//! A uTP echo server: every connection gets its bytes back until it closes.
//!
//! ```text
//! cargo run -p tokio-utp --example echo_server -- 127.0.0.1:4000
//! cargo run -p tokio-utp --example echo_client -- 127.0.0.1:4000 hello
//! ```
//!
//! `utp connect 127.0.0.1:4000` (the CLI in `utp-cli`) works as a client too.

use std::io;

use tokio_utp::UtpListener;

#[tokio::main]
async fn main() -> io::Result<()> {
    let Some(addr) = std::env::args().nth(1) else {
        eprintln!("usage: echo_server HOST:PORT   (e.g. 127.0.0.1:4000)");
        std::process::exit(2);
    };
    let listener = UtpListener::bind(addr.as_str()).await?;
    println!("echo server listening on {}", listener.local_addr()?);

    loop {
        let (stream, peer) = listener.accept().await?;
        println!("{peer}: connected");
        tokio::spawn(async move {
            let (mut rd, mut wr) = stream.into_split();
            // Echo until the peer's FIN, then send ours.
            let result = async {
                let n = tokio::io::copy(&mut rd, &mut wr).await?;
                tokio::io::AsyncWriteExt::shutdown(&mut wr).await?;
                io::Result::Ok(n)
            }
            .await;
            match result {
                Ok(n) => println!("{peer}: echoed {n} bytes, closed"),
                Err(e) => eprintln!("{peer}: {e}"),
            }
        });
    }
}
