//! The bulk path: one `[op, a, b, c]` row per event (docs/ENGINE-API.md, "Bulk path").

use crate::engine::{Engine, Handle};
use crate::error::{EngineError, Result};
use crate::sites::NO_SITE;

/// One row of the bulk path (`Engine::apply`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Alloc {
        ptr: u64,
        nbytes: u64,
        stream: Handle,
    },
    Access {
        ptr: u64,
        nbytes: u64,
        stream: Handle,
        write: bool,
    },
    Free {
        ptr: u64,
    },
    Adopt {
        ptr: u64,
        nbytes: u64,
        stream: Handle,
    },
    Flush,
    RecordStream {
        ptr: u64,
        stream: Handle,
    },
    EventRecord {
        event: Handle,
        stream: Handle,
    },
    EventWait {
        event: Handle,
        stream: Handle,
    },
    StreamWait {
        waiter: Handle,
        waited: Handle,
    },
    StreamSync {
        stream: Handle,
    },
    EventSync {
        event: Handle,
    },
    DeviceSync,
}

impl Op {
    /// Decodes a bulk row `[op, a, b, c]` (docs/ENGINE-API.md, "Bulk path").
    pub fn decode(row: [i64; 4]) -> Result<Op> {
        let [op, a, b, c] = row;
        let ptr = |v: i64, what: &'static str| -> Result<u64> {
            u64::try_from(v).map_err(|_| EngineError::Negative { what, value: v })
        };
        let size = |v: i64| -> Result<u64> {
            if v <= 0 {
                Err(EngineError::BadSize {
                    ptr: a.max(0) as u64,
                    nbytes: v,
                })
            } else {
                Ok(v as u64)
            }
        };
        Ok(match op {
            0 => Op::Alloc {
                ptr: ptr(a, "ptr")?,
                nbytes: size(b)?,
                stream: c.into(),
            },
            1 | 2 => Op::Access {
                ptr: ptr(a, "ptr")?,
                nbytes: size(b)?,
                stream: c.into(),
                write: op == 2,
            },
            3 => Op::Free {
                ptr: ptr(a, "ptr")?,
            },
            4 => Op::RecordStream {
                ptr: ptr(a, "ptr")?,
                stream: b.into(),
            },
            5 => Op::EventRecord {
                event: a.into(),
                stream: b.into(),
            },
            6 => Op::EventWait {
                event: a.into(),
                stream: b.into(),
            },
            7 => Op::StreamWait {
                waiter: a.into(),
                waited: b.into(),
            },
            8 => Op::StreamSync { stream: a.into() },
            9 => Op::EventSync { event: a.into() },
            10 => Op::DeviceSync,
            11 => Op::Adopt {
                ptr: ptr(a, "ptr")?,
                nbytes: size(b)?,
                stream: c.into(),
            },
            12 => Op::Flush,
            code => return Err(EngineError::UnknownOp { code }),
        })
    }
}

impl Engine {
    // ----- bulk path -----------------------------------------------------------------

    pub fn apply(&mut self, op: Op) -> Result<()> {
        match op {
            Op::Alloc {
                ptr,
                nbytes,
                stream,
            } => self.alloc(ptr, nbytes, stream, NO_SITE),
            Op::Access {
                ptr,
                nbytes,
                stream,
                write,
            } => self.access(ptr, nbytes, stream, write, NO_SITE),
            Op::Free { ptr } => self.free(ptr, NO_SITE),
            Op::Adopt {
                ptr,
                nbytes,
                stream,
            } => self.adopt(ptr, nbytes, stream, NO_SITE),
            Op::Flush => {
                self.flush();
                Ok(())
            }
            Op::RecordStream { ptr, stream } => self.record_stream(ptr, stream, NO_SITE),
            Op::EventRecord { event, stream } => {
                self.event_record(event, stream);
                Ok(())
            }
            Op::EventWait { event, stream } => {
                self.event_wait(event, stream);
                Ok(())
            }
            Op::StreamWait { waiter, waited } => {
                self.stream_wait(waiter, waited);
                Ok(())
            }
            Op::StreamSync { stream } => {
                self.stream_synchronize(stream);
                Ok(())
            }
            Op::EventSync { event } => {
                self.event_synchronize(event);
                Ok(())
            }
            Op::DeviceSync => {
                self.device_synchronize();
                Ok(())
            }
        }
    }

    /// Applies bulk rows in order; on a bad row returns its index and the error, with
    /// every row before it applied and the bad row not.
    ///
    /// Rows are taken in blocks; while one is applied, the storage slot of the row
    /// `AHEAD` rows later is prefetched (when the table is larger than the caches), so
    /// with many live storages the memory misses of successive rows overlap instead of
    /// adding up.
    pub fn apply_rows(&mut self, mut rows: impl Iterator<Item = [i64; 4]>) -> Result<usize> {
        const BLOCK: usize = 64;
        const AHEAD: usize = 8;
        let mut n = 0;
        let mut block = [[0i64; 4]; BLOCK];
        loop {
            let mut len = 0;
            for (slot, row) in block.iter_mut().zip(rows.by_ref()) {
                *slot = row;
                len += 1;
            }
            // a table that fits in the caches gains nothing from prefetches
            let ahead = if self.storages_in_cache() { 0 } else { AHEAD };
            for i in 0..len {
                if ahead > 0 && i + ahead < len {
                    let [op, a, ..] = block[i + ahead];
                    // accesses, frees and record_stream name a storage by pointer
                    if matches!(op, 1..=4) {
                        self.prefetch_storage(a as u64);
                    }
                }
                // An access (most rows) goes straight to the engine; a row that is not
                // valid takes the general path below, which gives its error.
                let [op, a, b, c] = block[i];
                if (op == 1 || op == 2) && a >= 0 && b > 0 {
                    if let Ok(checked) = self.check_access(a as u64, b as u64) {
                        self.apply_access(a as u64, checked, c.into(), op == 2, NO_SITE);
                        n += 1;
                        continue;
                    }
                }
                let at = |e: EngineError| EngineError::Row {
                    row: n,
                    error: Box::new(e),
                };
                let op = Op::decode(block[i]).map_err(at)?;
                self.apply(op).map_err(at)?;
                n += 1;
            }
            if len < BLOCK {
                return Ok(n);
            }
        }
    }
}
