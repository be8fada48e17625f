//! A side that stops mid-transfer: killed outright (no FIN, no RESET), the
//! peer notices by `--idle-timeout`; interrupted (SIGINT), it resets the
//! connection and the peer fails at once. Either way nobody hangs.

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn listener_fails_after_the_idle_timeout_when_the_peer_is_killed() {
    let utp = env!("CARGO_BIN_EXE_utp");
    let addr = format!("127.0.0.1:{}", free_port());
    // The listener's stdin stays open and empty: it only receives, so no
    // retransmission of its own would ever notice the peer is gone.
    let mut listener = Command::new(utp)
        .args(["listen", &addr, "-q", "--idle-timeout", "1.5"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let mut connector = Command::new(utp)
        .args(["connect", &addr, "-q"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let data = vec![7u8; 100_000];
    connector.stdin.as_mut().unwrap().write_all(&data).unwrap();
    let mut got = vec![0u8; data.len()];
    listener
        .stdout
        .as_mut()
        .unwrap()
        .read_exact(&mut got)
        .unwrap();
    assert_eq!(got, data);
    // SIGKILL: the peer sends nothing more, as in a crash.
    connector.kill().unwrap();
    connector.wait().unwrap();
    let t0 = Instant::now();
    let status = loop {
        if let Some(s) = listener.try_wait().unwrap() {
            break s;
        }
        if t0.elapsed() > Duration::from_secs(10) {
            listener.kill().unwrap();
            panic!("listener still running 10 s after its peer died (idle timeout 1.5 s)");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    listener
        .stderr
        .as_mut()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(
        !status.success(),
        "listener exited 0 after its peer was killed"
    );
    assert!(err.contains("timed out"), "stderr: {err}");
    assert!(
        t0.elapsed() >= Duration::from_millis(1000),
        "{:?}",
        t0.elapsed()
    );
}

/// SIGINT (Ctrl-C) on one side mid-transfer: that side resets the
/// connection, so the other learns of it at once instead of after a timeout.
#[cfg(unix)]
#[test]
fn an_interrupted_side_resets_the_connection_and_the_peer_fails_at_once() {
    let utp = env!("CARGO_BIN_EXE_utp");
    let addr = format!("127.0.0.1:{}", free_port());
    // The listener sends for ever (its stdin never ends) and has no idle
    // timeout: only a RESET ends it soon.
    let mut listener = Command::new(utp)
        .args(["listen", &addr, "-q"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let mut connector = Command::new(utp)
        .args(["connect", &addr, "-q"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let data = vec![7u8; 100_000];
    listener.stdin.as_mut().unwrap().write_all(&data).unwrap();
    let mut got = vec![0u8; data.len()];
    connector
        .stdout
        .as_mut()
        .unwrap()
        .read_exact(&mut got)
        .unwrap();
    assert_eq!(got, data);
    let pid = i32::try_from(connector.id()).unwrap();
    // SAFETY: a plain kill(2) on our own child.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGINT) }, 0);
    let t0 = Instant::now();
    let done = |child: &mut std::process::Child, who: &str| loop {
        if let Some(s) = child.try_wait().unwrap() {
            let mut err = String::new();
            child
                .stderr
                .as_mut()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            return (s, err, t0.elapsed());
        }
        if t0.elapsed() > Duration::from_secs(10) {
            child.kill().unwrap();
            panic!("{who} still running 10 s after the SIGINT");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let (status, err, _) = done(&mut connector, "the interrupted side");
    assert_eq!(status.code(), Some(1), "stderr: {err}");
    assert!(err.contains("interrupted by SIGINT"), "stderr: {err}");
    let (status, err, after) = done(&mut listener, "its peer");
    assert!(!status.success(), "the peer exited 0 after a reset");
    assert!(err.contains("reset"), "stderr: {err}");
    assert!(
        after < Duration::from_secs(3),
        "the peer ended {after:?} after"
    );
}
