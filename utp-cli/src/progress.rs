//! The live status line on stderr (only when stderr is a terminal).

use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{BinaryBytes, ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio_utp::ConnectionStats;

/// How often the status line is refreshed.
pub const REFRESH: Duration = Duration::from_millis(250);

/// Whether live output belongs on stderr: it is a terminal and `-q` is off.
pub fn stderr_is_live(quiet: bool) -> bool {
    !quiet && std::io::stderr().is_terminal()
}

/// Renders "bytes in/out, rate, RTT" from connection stats; hidden (and
/// cheap) when stderr is not a terminal.
pub struct StatusLine {
    bar: ProgressBar,
    state: Mutex<Rates>,
}

struct Rates {
    at: Instant,
    sent: u64,
    received: u64,
    up_rate: f64,
    down_rate: f64,
}

impl StatusLine {
    pub fn new(quiet: bool) -> Self {
        let bar = if stderr_is_live(quiet) {
            let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
            bar.set_style(ProgressStyle::with_template("{spinner} {msg}").expect("valid template"));
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        } else {
            ProgressBar::hidden()
        };
        Self {
            bar,
            state: Mutex::new(Rates {
                at: Instant::now(),
                sent: 0,
                received: 0,
                up_rate: 0.0,
                down_rate: 0.0,
            }),
        }
    }

    pub fn is_hidden(&self) -> bool {
        self.bar.is_hidden()
    }

    /// Shows a free-form message (e.g. "listening on ...").
    pub fn message(&self, msg: String) {
        self.bar.set_message(msg);
    }

    /// Refreshes the line from `stats`, at most every [`REFRESH`].
    pub fn update(&self, stats: impl FnOnce() -> ConnectionStats) {
        if self.bar.is_hidden() {
            return;
        }
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let dt = now.duration_since(st.at).as_secs_f64();
        if dt < REFRESH.as_secs_f64() {
            return;
        }
        let s = stats();
        st.up_rate = s.bytes_sent.saturating_sub(st.sent) as f64 / dt;
        st.down_rate = s.bytes_received.saturating_sub(st.received) as f64 / dt;
        st.at = now;
        st.sent = s.bytes_sent;
        st.received = s.bytes_received;
        self.bar.set_message(render(&s, st.up_rate, st.down_rate));
    }

    /// Leaves the last line on screen with the final counters.
    pub fn finish(&self, stats: &ConnectionStats, elapsed: Duration) {
        if self.bar.is_hidden() {
            return;
        }
        let secs = elapsed.as_secs_f64().max(1e-9);
        let line = render(
            stats,
            stats.bytes_sent as f64 / secs,
            stats.bytes_received as f64 / secs,
        );
        self.bar
            .finish_with_message(format!("done in {:.2} s: {line}", elapsed.as_secs_f64()));
    }

    pub fn abandon(&self) {
        self.bar.abandon();
    }
}

fn render(s: &ConnectionStats, up: f64, down: f64) -> String {
    let rtt = match s.rtt {
        Some(d) => format!("{:.2}ms", d.as_secs_f64() * 1e3),
        None => "-".to_string(),
    };
    format!(
        "in {} ({}/s)  out {} ({}/s)  rtt {} retx {}",
        BinaryBytes(s.bytes_received),
        BinaryBytes(down as u64),
        BinaryBytes(s.bytes_sent),
        BinaryBytes(up as u64),
        rtt,
        s.packets_retransmitted,
    )
}
