//! A side that stops mid-transfer: killed outright (no FIN, no RESET), the
//! peer notices by `--idle-timeout`; interrupted (SIGINT), it resets the
//! connection and the peer fails at once. Either way nobody hangs.

use std::io::{Read, Write};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `utp listen ADDR -q LISTEN_ARGS...` and, once it is bound, `utp connect
/// ADDR -q`, with stdin, stdout and stderr piped (stdins stay open).
fn pair(listen_args: &[&str]) -> (Child, Child) {
    let utp = env!("CARGO_BIN_EXE_utp");
    let addr = format!("127.0.0.1:{}", free_port());
    let spawn = |args: &[&str]| {
        Command::new(utp)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let listener = spawn(&[&["listen", addr.as_str(), "-q"], listen_args].concat());
    std::thread::sleep(Duration::from_millis(300));
    (listener, spawn(&["connect", &addr, "-q"]))
}

/// 100 kB from `from`'s stdin, checked as they come out of `to`'s stdout.
fn pass_data(from: &mut Child, to: &mut Child) {
    let data = vec![7u8; 100_000];
    from.stdin.as_mut().unwrap().write_all(&data).unwrap();
    let mut got = vec![0u8; data.len()];
    to.stdout.as_mut().unwrap().read_exact(&mut got).unwrap();
    assert_eq!(got, data);
}

/// Waits (at most 10 s) for `child` to exit: its status, its stderr, and
/// the time since `t0`.
fn wait_exit(child: &mut Child, who: &str, t0: Instant) -> (ExitStatus, String, Duration) {
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if t0.elapsed() > Duration::from_secs(10) {
            child.kill().unwrap();
            panic!("{who} still running 10 s on");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let mut err = String::new();
    let stderr = child.stderr.as_mut().unwrap();
    stderr.read_to_string(&mut err).unwrap();
    (status, err, t0.elapsed())
}

#[test]
fn listener_fails_after_the_idle_timeout_when_the_peer_is_killed() {
    // The listener's stdin stays open and empty: it only receives, so no
    // retransmission of its own would ever notice the peer is gone.
    let (mut listener, mut connector) = pair(&["--idle-timeout", "1.5"]);
    pass_data(&mut connector, &mut listener);
    // SIGKILL: the peer sends nothing more, as in a crash.
    connector.kill().unwrap();
    connector.wait().unwrap();
    let (status, err, after) = wait_exit(&mut listener, "the listener", Instant::now());
    assert!(!status.success(), "exited 0 after its peer was killed");
    assert!(err.contains("timed out"), "stderr: {err}");
    assert!(after >= Duration::from_millis(1000), "{after:?}");
}

/// SIGINT (Ctrl-C) on one side mid-transfer: that side resets the
/// connection, so the other learns of it at once instead of after a timeout.
#[cfg(unix)]
#[test]
fn an_interrupted_side_resets_the_connection_and_the_peer_fails_at_once() {
    // The listener's stdin stays open (it never sends FIN) and it has no
    // idle timeout: only a RESET ends it soon.
    let (mut listener, mut connector) = pair(&[]);
    pass_data(&mut listener, &mut connector);
    let pid = i32::try_from(connector.id()).unwrap();
    // SAFETY: a plain kill(2) on our own child.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGINT) }, 0);
    let t0 = Instant::now();
    let (status, err, _) = wait_exit(&mut connector, "the interrupted side", t0);
    assert_eq!(status.code(), Some(1), "stderr: {err}");
    assert!(err.contains("interrupted by SIGINT"), "stderr: {err}");
    let (status, err, after) = wait_exit(&mut listener, "its peer", t0);
    assert!(!status.success(), "the peer exited 0 after a reset");
    assert!(err.contains("reset"), "stderr: {err}");
    assert!(
        after < Duration::from_secs(3),
        "the peer ended {after:?} after"
    );
}
