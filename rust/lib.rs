//! esper-lifetimes: a happens-before engine for CUDA stream lifetime hazards.
//!
//! The engine (everything but `bindings` and `hooks`) is pure Rust with no Python types in it: it
//! keeps vector clocks of streams, events and the host, an interval map of live
//! storages, per-byte-range shadow state for race detection, and the hazards found.
//! `bindings` (feature `python`) is the one thin PyO3 layer over it, with `hooks`, the
//! always-on tracker's hooked calls in compiled code.

mod clock;
mod describe;
mod engine;
mod error;
mod hashing;
mod hazard;
mod op;
mod shadow;
mod sites;

#[cfg(feature = "python")]
mod bindings;
#[cfg(feature = "python")]
mod hooks;

pub use clock::StreamIx;
pub use describe::message;
pub use engine::{Engine, Handle, Stats};
pub use error::{EngineError, ErrorClass};
pub use hazard::{Hazard, Kind, Role};
pub use op::Op;
pub use sites::{SiteId, NO_SITE};

#[cfg(test)]
mod tests;
