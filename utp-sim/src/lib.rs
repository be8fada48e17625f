//! A deterministic network simulator for the uTP protocol core.
//!
//! Whole connections (`utp_proto::Endpoint`s, exactly the code the tokio
//! library runs) exchange datagrams over simulated links in virtual time:
//! link rate, one-way delay, jitter, a drop-tail queue in packets or bytes,
//! random loss, reordering, duplication and an MTU, with a clock per host
//! (offset and drift). Several flows share one bottleneck (a dumbbell), and a
//! loss-based reference sender ([`reno`]) can compete with them. Everything
//! derives from one seed, so any run can be replayed exactly.
//!
//! ```
//! use std::time::Duration;
//! use utp_sim::{scenario, Sim};
//!
//! let mut spec = scenario::by_name("steady").unwrap().spec;
//! spec.duration = Duration::from_secs(5);
//! let result = Sim::new(spec).run();
//! assert!(result.utilization(Duration::from_secs(2), Duration::from_secs(5)) > 0.5);
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod net;
pub mod plot;
pub mod reno;
pub mod result;
pub mod scenario;

pub use net::{Buffer, ClockSpec, FlowKind, FlowSpec, LinkSpec, Sim, SimSpec};
pub use result::{FlowSeries, SimResult};
