//! The director: its data path (load, attach, detach: `datapath`), its maps (`maps`, the one
//! writer, and the reader of counters and connections: `conntrack`), and the pure parts that
//! decide what goes into them — the service table (`table`), the scheduling tables
//! (`scheduler`) and the planning of a change (`plan`). `ipvsadm` and `daemon` both change the
//! director through [`maps::Maps::apply`].

pub mod allow;
pub mod conntrack;
pub mod datapath;
pub mod layout;
pub mod maps;
pub mod peers;
pub mod plan;
pub mod scheduler;
pub mod status;
pub mod table;
pub mod trace;
pub mod upgrade;

pub use maps::{Maps, MapsError};
pub use scheduler::Scheduler;
pub use table::{InstalledService, Protocol, RealServer, ServiceId, VirtualService};
