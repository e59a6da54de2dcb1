//! The engine's errors as data: what was wrong and the values involved, with `Display`
//! for the sentence and `class()` for the Python exception it becomes. A call that
//! returns an error leaves the engine exactly as it was.

use crate::sites::SiteId;
use std::fmt;

/// Which Python exception an error becomes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorClass {
    /// The call's arguments are malformed (`InvalidArgumentError`).
    InvalidArgument,
    /// The call names memory the engine does not know as it says (`UnknownStorageError`).
    UnknownStorage,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EngineError {
    /// A size of zero (or, in a bulk row, a negative one).
    BadSize { ptr: u64, nbytes: i64 },
    /// `ptr + nbytes` does not fit in 64 bits.
    Overflow { ptr: u64, nbytes: u64 },
    /// A negative value in a bulk row where a pointer belongs.
    Negative { what: &'static str, value: i64 },
    /// A bulk row's op code is not one of the engine's.
    UnknownOp { code: i64 },
    /// A site id that `intern()` did not return.
    BadSite { id: SiteId },
    /// An allocation (or adoption) over a live storage.
    Overlap {
        op: &'static str,
        ptr: u64,
        nbytes: u64,
        base: u64,
        len: u64,
    },
    /// An access outside every live storage.
    Outside { ptr: u64, nbytes: u64 },
    /// An access that starts in a storage and runs past its end.
    PastEnd {
        ptr: u64,
        nbytes: u64,
        base: u64,
        len: u64,
    },
    /// record_stream on memory inside no live storage.
    RecordNoStorage { ptr: u64 },
    /// A free of an interior pointer.
    InteriorFree { ptr: u64, base: u64 },
    /// A free of memory that is no live storage.
    UnknownFree { ptr: u64 },
    /// A bad row of the bulk path: its index and what was wrong.
    Row { row: usize, error: Box<EngineError> },
}

impl EngineError {
    pub fn class(&self) -> ErrorClass {
        use EngineError::*;
        match self {
            BadSize { .. }
            | Overflow { .. }
            | Negative { .. }
            | UnknownOp { .. }
            | BadSite { .. } => ErrorClass::InvalidArgument,
            Overlap { .. }
            | Outside { .. }
            | PastEnd { .. }
            | RecordNoStorage { .. }
            | InteriorFree { .. }
            | UnknownFree { .. } => ErrorClass::UnknownStorage,
            Row { error, .. } => error.class(),
        }
    }
}

impl fmt::Display for EngineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use EngineError::*;
        match self {
            BadSize { ptr, nbytes } => {
                write!(f, "nbytes must be positive, got {nbytes} (ptr {ptr:#x})")
            }
            Overflow { ptr, nbytes } => write!(
                f,
                "range {ptr:#x} + {nbytes} bytes overflows the address space"
            ),
            Negative { what, value } => write!(f, "{what} must not be negative, got {value}"),
            UnknownOp { code } => write!(f, "unknown op code {code} (expected 0..=12)"),
            BadSite { id } => write!(f, "site id {id} was not returned by intern()"),
            Overlap {
                op,
                ptr,
                nbytes,
                base,
                len,
            } => write!(
                f,
                "{op} of {ptr:#x} ({nbytes} bytes) overlaps the live storage at {base:#x} \
                 ({len} bytes): free it first"
            ),
            Outside { ptr, nbytes } => write!(
                f,
                "access of {ptr:#x} ({nbytes} bytes) is outside every live storage"
            ),
            PastEnd {
                ptr,
                nbytes,
                base,
                len,
            } => write!(
                f,
                "access of {ptr:#x} ({nbytes} bytes) runs past the end of the storage at \
                 {base:#x} ({len} bytes)"
            ),
            RecordNoStorage { ptr } => write!(
                f,
                "record_stream on {ptr:#x}, which is inside no live storage"
            ),
            InteriorFree { ptr, base } => write!(
                f,
                "free of {ptr:#x}, an interior pointer of the storage at {base:#x}: free takes \
                 the base pointer"
            ),
            UnknownFree { ptr } => write!(f, "free of {ptr:#x}, which is no live storage"),
            Row { row, error } => write!(f, "replay row {row}: {error}"),
        }
    }
}

impl std::error::Error for EngineError {}

pub type Result<T> = std::result::Result<T, EngineError>;
