//! What a node shows of itself: Prometheus [`metrics`], a [`journal`] of
//! what happened (peers joining and leaving, copies stored, repaired and
//! trimmed) and the [`activity`] under way (puts and gets with their
//! progress). One [`Observe`] per node, held by the network core so every
//! layer can record into it; the dashboard reads it.

pub mod activity;
pub mod journal;
pub mod metrics;

pub use activity::{Activity, Task, TaskState};
pub use journal::{Entry, Journal};
pub use metrics::Metrics;

/// The node's metrics, journal and activity. Cheap to clone.
#[derive(Clone, Default)]
pub struct Observe {
    /// Counters, gauges and histograms, in the node's own registry.
    pub metrics: Metrics,
    /// Recent events, newest last.
    pub journal: Journal,
    /// Puts and gets under way and recently finished.
    pub activity: Activity,
}
