//! The one PyO3 layer: argument checking, the lock, and conversion of hazards.
//!
//! Hot-path methods take positional ints and do no keyword work on success. Every
//! argument error becomes an `InvalidArgumentError` naming the value, and every engine
//! error keeps the engine's state as it was (interned sites included).

use crate::clock::StreamIx;
use crate::engine::{Engine as Core, Handle};
use crate::error::{EngineError, ErrorClass};
use crate::hazard::{Hazard as CoreHazard, Kind};
use crate::sites::{SiteId, NO_SITE};
use parking_lot::{Mutex, MutexGuard};
use pyo3::basic::CompareOp;
use pyo3::buffer::PyBuffer;
use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyInt, PyList, PyString, PyTuple};
use smallvec::SmallVec;
use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};
use std::sync::OnceLock;

create_exception!(
    _core,
    LifetimesError,
    PyException,
    "Base class of every error esper-lifetimes raises."
);
create_exception!(
    _core,
    InvalidArgumentError,
    LifetimesError,
    "A call's argument is malformed: not an int, out of range, a zero or negative size."
);
create_exception!(
    _core,
    UnknownStorageError,
    LifetimesError,
    "A call names memory the engine does not know as it says (unknown or interior pointer, \
     access outside any live storage, allocation over a live storage)."
);

fn to_py(e: EngineError) -> PyErr {
    let text = e.to_string();
    match e.class() {
        ErrorClass::InvalidArgument => InvalidArgumentError::new_err(text),
        ErrorClass::UnknownStorage => UnknownStorageError::new_err(text),
    }
}

fn describe(obj: &Bound<'_, PyAny>) -> String {
    obj.repr()
        .map(|r| r.to_string())
        .unwrap_or_else(|_| "<unprintable>".to_owned())
}

/// Ints are ints: Python ints and numpy integer scalars (anything with `__index__`),
/// never a bool. Flags are bools (numpy's too), never an int. One rule for every
/// argument, checked before any state changes.
#[inline]
fn not_bool(obj: &Bound<'_, PyAny>, what: &str) -> PyResult<()> {
    if obj.is_instance_of::<PyBool>() {
        return Err(InvalidArgumentError::new_err(format!(
            "{what} must be an int, not a bool, got {}",
            describe(obj)
        )));
    }
    Ok(())
}

/// The value of an exact `int` that fits in an i64, read with `PyLong_AsLong` (a
/// loop over its digits); `None` for anything else (a subclass such as bool, numpy
/// scalars, or a value out of range), which takes the general path. The general path
/// reads multi-digit ints through `_PyLong_AsByteArray` (CPython 3.11): pointers and
/// stream handles are multi-digit, and that was the largest part of `launch`'s cost.
#[inline(always)]
fn fast_i64(obj: &Bound<'_, PyAny>) -> Option<i64> {
    let p = obj.as_ptr();
    // SAFETY: `p` is a live object (borrowed for the call); PyLong_AsLong on an exact
    // int only fails by overflow, whose error is cleared here (the GIL is held)
    unsafe {
        if pyo3::ffi::PyLong_CheckExact(p) == 0 {
            return None;
        }
        let v = pyo3::ffi::PyLong_AsLong(p);
        if v == -1 && !pyo3::ffi::PyErr_Occurred().is_null() {
            pyo3::ffi::PyErr_Clear();
            return None;
        }
        #[allow(clippy::useless_conversion)] // c_long is 32 bits on Windows
        Some(i64::from(v))
    }
}

/// The hot path of the int arguments (an exact int in range) is inlined into every
/// caller; the general path, and the error, are not.
#[inline(always)]
fn ptr_arg(obj: &Bound<'_, PyAny>, what: &str) -> PyResult<u64> {
    match fast_i64(obj) {
        Some(v) if v >= 0 => Ok(v as u64),
        _ => ptr_arg_slow(obj, what),
    }
}

#[cold]
#[inline(never)]
fn ptr_arg_slow(obj: &Bound<'_, PyAny>, what: &str) -> PyResult<u64> {
    match obj.extract::<u64>() {
        Ok(v) => not_bool(obj, what).map(|()| v),
        Err(_) => Err(InvalidArgumentError::new_err(
            if obj.is_instance_of::<PyInt>() {
                format!(
                    "{what} must be a non-negative int below 2**64, got {}",
                    describe(obj)
                )
            } else {
                format!("{what} must be an int, got {}", describe(obj))
            },
        )),
    }
}

#[inline(always)]
fn size_arg(obj: &Bound<'_, PyAny>) -> PyResult<u64> {
    match fast_i64(obj) {
        Some(v) if v > 0 => Ok(v as u64),
        _ => size_arg_slow(obj),
    }
}

#[cold]
#[inline(never)]
fn size_arg_slow(obj: &Bound<'_, PyAny>) -> PyResult<u64> {
    match obj.extract::<i64>() {
        Ok(v) if v > 0 && !obj.is_instance_of::<PyBool>() => Ok(v as u64),
        _ => Err(InvalidArgumentError::new_err(format!(
            "nbytes must be a positive int, got {}",
            describe(obj)
        ))),
    }
}

#[inline(always)]
pub(crate) fn handle_arg(obj: &Bound<'_, PyAny>, what: &str) -> PyResult<Handle> {
    match fast_i64(obj) {
        Some(v) => Ok(Handle::from(v)),
        None => handle_arg_slow(obj, what),
    }
}

#[cold]
#[inline(never)]
fn handle_arg_slow(obj: &Bound<'_, PyAny>, what: &str) -> PyResult<Handle> {
    if let Ok(v) = obj.extract::<i64>() {
        not_bool(obj, what)?;
        return Ok(Handle::from(v));
    }
    if let Ok(v) = obj.extract::<u64>() {
        return Ok(Handle::from(v));
    }
    Err(InvalidArgumentError::new_err(format!(
        "{what} must be an int in the 64-bit range (a stream or event handle), got {}",
        describe(obj)
    )))
}

#[inline]
fn flag_arg(obj: &Bound<'_, PyAny>, what: &str) -> PyResult<bool> {
    obj.extract::<bool>().map_err(|_| {
        InvalidArgumentError::new_err(format!("{what} must be a bool, got {}", describe(obj)))
    })
}

/// The UTF-8 text of a str; a lone surrogate (not encodable) is a bad argument.
fn text<'a>(s: &'a Bound<'_, PyString>, what: &str) -> PyResult<&'a str> {
    s.to_str().map_err(|_| {
        InvalidArgumentError::new_err(format!(
            "{what} must be valid text, got {} (a lone surrogate cannot be encoded)",
            describe(s.as_any())
        ))
    })
}

fn str_arg(obj: &Bound<'_, PyAny>, what: &str) -> PyResult<String> {
    match obj.cast::<PyString>() {
        Ok(s) => Ok(text(s, what)?.to_owned()),
        Err(_) => Err(InvalidArgumentError::new_err(format!(
            "{what} must be a str, got {}",
            describe(obj)
        ))),
    }
}

/// The ranges of one launch, reads then writes (filled in place: no copies of the
/// buffer on the hot path).
type Ranges = SmallVec<[(u64, u64); 16]>;

/// Appends the flat sequence `[ptr0, nbytes0, ptr1, nbytes1, ...]` (tuple or list) to
/// `out` as ranges.
fn ranges_into(obj: &Bound<'_, PyAny>, what: &str, out: &mut Ranges) -> PyResult<()> {
    let odd = |n: usize| {
        InvalidArgumentError::new_err(format!(
            "{what} must hold (ptr, nbytes) pairs flattened, got {n} items"
        ))
    };
    if let Ok(t) = obj.cast::<PyTuple>() {
        // borrowed items: no reference counting per int on the hot path
        let n = t.len();
        if !n.is_multiple_of(2) {
            return Err(odd(n));
        }
        out.reserve(n / 2);
        for i in (0..n).step_by(2) {
            let (p, b) = (t.get_borrowed_item(i)?, t.get_borrowed_item(i + 1)?);
            out.push((ptr_arg(&p, "ptr")?, size_arg(&b)?));
        }
    } else if let Ok(l) = obj.cast::<PyList>() {
        let n = l.len();
        if !n.is_multiple_of(2) {
            return Err(odd(n));
        }
        for i in (0..n).step_by(2) {
            let (p, b) = (l.get_item(i)?, l.get_item(i + 1)?);
            out.push((ptr_arg(&p, "ptr")?, size_arg(&b)?));
        }
    } else {
        return Err(InvalidArgumentError::new_err(format!(
            "{what} must be a tuple or list of ints, got {}",
            describe(obj)
        )));
    }
    Ok(())
}

/// A launch's `reads` and `writes` in one buffer, and where the writes start.
#[inline]
fn launch_ranges(reads: &Bound<'_, PyAny>, writes: &Bound<'_, PyAny>) -> PyResult<(Ranges, usize)> {
    let mut ranges = Ranges::new();
    ranges_into(reads, "reads", &mut ranges)?;
    let n = ranges.len();
    ranges_into(writes, "writes", &mut ranges)?;
    Ok((ranges, n))
}

// ----- arguments: one conversion per kind of value ----------------------------------

/// The name an argument has in error messages (PyO3 names only `TypeError`s).
trait Name {
    const NAME: &'static str;
}

macro_rules! names {
    ($($t:ident = $s:literal;)*) => {
        $(
            struct $t;
            impl Name for $t {
                const NAME: &'static str = $s;
            }
        )*
    };
}

names! {
    PtrN = "ptr";
    HostPtrN = "host_ptr";
    StreamN = "stream";
    EventN = "event";
    WaiterN = "waiter";
    WaitedN = "waited";
    WriteN = "write";
    CompleteN = "complete";
    VirtualN = "virtual";
}

/// A pointer: an int in `[0, 2**64)`.
struct Ptr<N = PtrN>(u64, PhantomData<N>);
/// A size: a positive int.
struct Size(u64);
/// A stream or event handle: an int in the signed or unsigned 64-bit range.
struct H<N>(Handle, PhantomData<N>);
/// A flag: a bool.
struct Flag<N>(bool, PhantomData<N>);
/// `None`, a site string, or an id from `intern()`.
type Site<'a, 'py> = Option<&'a Bound<'py, PyAny>>;

impl<N> Flag<N> {
    fn get(f: Option<Self>) -> bool {
        f.is_some_and(|f| f.0)
    }
}

impl<'a, 'py, N: Name> FromPyObject<'a, 'py> for Ptr<N> {
    type Error = PyErr;
    fn extract(obj: Borrowed<'a, 'py, PyAny>) -> PyResult<Self> {
        ptr_arg(&obj, N::NAME).map(|v| Ptr(v, PhantomData))
    }
}

impl<'a, 'py> FromPyObject<'a, 'py> for Size {
    type Error = PyErr;
    fn extract(obj: Borrowed<'a, 'py, PyAny>) -> PyResult<Self> {
        size_arg(&obj).map(Size)
    }
}

impl<'a, 'py, N: Name> FromPyObject<'a, 'py> for H<N> {
    type Error = PyErr;
    fn extract(obj: Borrowed<'a, 'py, PyAny>) -> PyResult<Self> {
        handle_arg(&obj, N::NAME).map(|v| H(v, PhantomData))
    }
}

impl<'a, 'py, N: Name> FromPyObject<'a, 'py> for Flag<N> {
    type Error = PyErr;
    fn extract(obj: Borrowed<'a, 'py, PyAny>) -> PyResult<Self> {
        flag_arg(&obj, N::NAME).map(|v| Flag(v, PhantomData))
    }
}

/// The engine, shared by every thread that holds it: all state sits behind one lock.
#[pyclass(frozen, module = "esper_lifetimes._core")]
pub struct Engine {
    core: Mutex<Core>,
    /// `set_error_signal`'s list: a call that raised the error count leaves one `None`
    /// in it (if it is empty), so a tracker learns of a new error from the list's truth
    /// value instead of a call per op.
    signal: OnceLock<Py<PyList>>,
}

/// The engine's state, locked for one call; on release, a raised error count is
/// appended to the error signal.
pub(crate) struct CoreGuard<'a> {
    core: MutexGuard<'a, Core>,
    errors: usize,
    signal: &'a OnceLock<Py<PyList>>,
}

impl Deref for CoreGuard<'_> {
    type Target = Core;
    fn deref(&self) -> &Core {
        &self.core
    }
}

impl DerefMut for CoreGuard<'_> {
    fn deref_mut(&mut self) -> &mut Core {
        &mut self.core
    }
}

impl Drop for CoreGuard<'_> {
    fn drop(&mut self) {
        if self.core.error_count() != self.errors {
            if let Some(list) = self.signal.get() {
                // every caller holds the GIL (the lock is only taken from Python calls);
                // a full list cannot fail to grow short of memory, and then the next
                // safe point still reads the count itself
                Python::attach(|py| {
                    let list = list.bind(py);
                    if list.is_empty() {
                        // a flag, not a log: one entry until the owner clears it
                        let _ = list.append(py.None());
                    }
                });
            }
        }
    }
}

impl Engine {
    /// The engine's state for one call (see [`CoreGuard`]).
    #[inline]
    pub(crate) fn lock(&self) -> CoreGuard<'_> {
        let core = self.core.lock();
        let errors = core.error_count();
        CoreGuard {
            core,
            errors,
            signal: &self.signal,
        }
    }

    /// Resolves `site` (None, str, or interned int) and runs `f`; a failed call rolls
    /// back a site it interned, so the engine is exactly as before the call.
    #[inline]
    fn with_site<T>(
        &self,
        site: Site<'_, '_>,
        f: impl FnOnce(&mut Core, SiteId) -> Result<T, EngineError>,
    ) -> PyResult<T> {
        let mut core = self.lock();
        let mark = core.sites_len();
        let id = match site {
            None => NO_SITE,
            Some(obj) if obj.is_none() => NO_SITE,
            Some(obj) => match fast_i64(obj).map(u32::try_from) {
                // an id from intern(), the hot path: an exact int, read inline
                Some(Ok(i)) => core.check_site(i).map_err(to_py)?,
                _ => site_slow(&mut core, obj)?,
            },
        };
        let r = f(&mut core, id);
        if r.is_err() {
            core.truncate_sites(mark);
        }
        r.map_err(to_py)
    }
}

/// A site that is not an exact int in range: a str (interned here), an int subclass,
/// or a bad argument.
#[cold]
#[inline(never)]
fn site_slow(core: &mut Core, obj: &Bound<'_, PyAny>) -> PyResult<SiteId> {
    if let Ok(s) = obj.cast::<PyString>() {
        Ok(core.intern(text(s, "site")?))
    } else if let Ok(i) = obj.extract::<u32>() {
        core.check_site(i).map_err(to_py)
    } else {
        Err(InvalidArgumentError::new_err(format!(
            "site must be None, a str or an int from intern(), got {}",
            describe(obj)
        )))
    }
}

#[pymethods]
impl Engine {
    #[new]
    fn new() -> Self {
        Engine {
            core: Mutex::new(Core::new()),
            signal: OnceLock::new(),
        }
    }

    /// Gives the engine a list to signal new errors on: a later call that records an
    /// error leaves one `None` in it (appended if the list is empty). The owner reads
    /// the list's truth value and clears it at its safe point. Set once per engine.
    fn set_error_signal(&self, signal: Bound<'_, PyList>) -> PyResult<()> {
        self.signal.set(signal.unbind()).map_err(|_| {
            InvalidArgumentError::new_err("set_error_signal: this engine already has its signal")
        })
    }

    /// A storage `[ptr, ptr+nbytes)` allocated while `stream` was current.
    #[pyo3(signature = (ptr, nbytes, stream, site=None))]
    fn alloc(
        &self,
        ptr: Ptr,
        nbytes: Size,
        stream: H<StreamN>,
        site: Site<'_, '_>,
    ) -> PyResult<()> {
        self.with_site(site, |c, id| c.alloc(ptr.0, nbytes.0, stream.0, id))
    }

    /// `alloc`, then a whole write of the new storage on `stream` at `site`: the fresh
    /// output of an op, in one call (the same as `alloc` then
    /// `access(ptr, nbytes, stream, True, site)`).
    #[pyo3(signature = (ptr, nbytes, stream, site=None))]
    fn alloc_write(
        &self,
        ptr: Ptr,
        nbytes: Size,
        stream: H<StreamN>,
        site: Site<'_, '_>,
    ) -> PyResult<()> {
        self.with_site(site, |c, id| {
            c.alloc(ptr.0, nbytes.0, stream.0, id)?;
            c.access(ptr.0, nbytes.0, stream.0, true, id)
        })
    }

    /// A storage whose allocation was not seen (it existed before tracking began).
    #[pyo3(signature = (ptr, nbytes, stream, site=None))]
    fn adopt(
        &self,
        ptr: Ptr,
        nbytes: Size,
        stream: H<StreamN>,
        site: Site<'_, '_>,
    ) -> PyResult<()> {
        self.with_site(site, |c, id| c.adopt(ptr.0, nbytes.0, stream.0, id))
    }

    /// The end of a region, test or run: every pending free is judged now, and the
    /// advice of record_stream sites redundant every time they ran is emitted.
    fn flush(&self) {
        self.lock().flush();
    }

    /// Work on `stream` reads (or writes) `[ptr, ptr+nbytes)` inside one live storage.
    #[pyo3(signature = (ptr, nbytes, stream, write=None, site=None))]
    fn access(
        &self,
        ptr: Ptr,
        nbytes: Size,
        stream: H<StreamN>,
        write: Option<Flag<WriteN>>,
        site: Site<'_, '_>,
    ) -> PyResult<()> {
        let write = Flag::get(write);
        self.with_site(site, |c, id| c.access(ptr.0, nbytes.0, stream.0, write, id))
    }

    /// One kernel launch on `stream`: `reads` and `writes` are flat sequences
    /// `[ptr0, nbytes0, ptr1, nbytes1, ...]`; the same as `access` for each read, then
    /// each write, in one call. A bad range leaves the engine unchanged.
    #[pyo3(signature = (stream, reads, writes, site=None))]
    fn launch(
        &self,
        stream: H<StreamN>,
        reads: &Bound<'_, PyAny>,
        writes: &Bound<'_, PyAny>,
        site: Site<'_, '_>,
    ) -> PyResult<()> {
        let (ranges, n) = launch_ranges(reads, writes)?;
        let (r, w) = ranges.split_at(n);
        self.with_site(site, |c, id| c.launch(stream.0, r, w, id))
    }

    /// The floor of `launch` for benchmarks: the same argument checks, no engine work.
    #[pyo3(signature = (stream, reads, writes, site=None))]
    fn _noop_launch(
        &self,
        stream: H<StreamN>,
        reads: &Bound<'_, PyAny>,
        writes: &Bound<'_, PyAny>,
        site: Site<'_, '_>,
    ) -> PyResult<()> {
        let ranges = launch_ranges(reads, writes)?;
        let _ = (stream, ranges, site);
        Ok(())
    }

    /// `Tensor.record_stream(stream)` on the storage containing `ptr`.
    #[pyo3(signature = (ptr, stream, site=None))]
    fn record_stream(&self, ptr: Ptr, stream: H<StreamN>, site: Site<'_, '_>) -> PyResult<()> {
        self.with_site(site, |c, id| c.record_stream(ptr.0, stream.0, id))
    }

    /// The storage whose base pointer is `ptr` is freed.
    #[pyo3(signature = (ptr, site=None))]
    fn free(&self, ptr: Ptr, site: Site<'_, '_>) -> PyResult<()> {
        self.with_site(site, |c, id| c.free(ptr.0, id))
    }

    fn event_record(&self, event: H<EventN>, stream: H<StreamN>) {
        self.lock().event_record(event.0, stream.0);
    }

    fn event_wait(&self, event: H<EventN>, stream: H<StreamN>) {
        self.lock().event_wait(event.0, stream.0);
    }

    fn stream_wait(&self, waiter: H<WaiterN>, waited: H<WaitedN>) {
        self.lock().stream_wait(waiter.0, waited.0);
    }

    fn stream_synchronize(&self, stream: H<StreamN>) {
        self.lock().stream_synchronize(stream.0);
    }

    fn event_synchronize(&self, event: H<EventN>) {
        self.lock().event_synchronize(event.0);
    }

    fn device_synchronize(&self) {
        self.lock().device_synchronize();
    }

    fn stream_query(&self, stream: H<StreamN>, complete: Flag<CompleteN>) {
        self.lock().stream_query(stream.0, complete.0);
    }

    fn event_query(&self, event: H<EventN>, complete: Flag<CompleteN>) {
        self.lock().event_query(event.0, complete.0);
    }

    /// Forgets a destroyed event (keeps memory flat when events are made per step).
    fn forget_event(&self, event: H<EventN>) {
        self.lock().forget_event(event.0);
    }

    /// Names a stream for reports; `virtual=True`: its work completes only when the host
    /// synchronizes it.
    #[pyo3(signature = (stream, name=None, r#virtual=None))]
    fn define_stream(
        &self,
        stream: H<StreamN>,
        name: Option<&Bound<'_, PyAny>>,
        r#virtual: Option<Flag<VirtualN>>,
    ) -> PyResult<()> {
        let name = match name {
            Some(n) if !n.is_none() => Some(str_arg(n, "name")?),
            _ => None,
        };
        let is_virtual = Flag::get(r#virtual);
        self.lock()
            .define_stream(stream.0, name.as_deref(), is_virtual);
        Ok(())
    }

    /// A non-blocking device-to-host copy on `stream` writes host bytes.
    #[pyo3(signature = (host_ptr, nbytes, stream, site=None))]
    fn copy_to_host(
        &self,
        host_ptr: Ptr<HostPtrN>,
        nbytes: Size,
        stream: H<StreamN>,
        site: Site<'_, '_>,
    ) -> PyResult<()> {
        self.with_site(site, |c, id| {
            c.copy_to_host(host_ptr.0, nbytes.0, stream.0, id)
        })
    }

    /// A non-blocking host-to-device copy on `stream` reads pinned host bytes.
    #[pyo3(signature = (host_ptr, nbytes, stream, site=None))]
    fn copy_from_host(
        &self,
        host_ptr: Ptr<HostPtrN>,
        nbytes: Size,
        stream: H<StreamN>,
        site: Site<'_, '_>,
    ) -> PyResult<()> {
        self.with_site(site, |c, id| {
            c.copy_from_host(host_ptr.0, nbytes.0, stream.0, id)
        })
    }

    /// The host reads (or writes) host bytes.
    #[pyo3(signature = (host_ptr, nbytes, write=None, site=None))]
    fn host_access(
        &self,
        host_ptr: Ptr<HostPtrN>,
        nbytes: Size,
        write: Option<Flag<WriteN>>,
        site: Site<'_, '_>,
    ) -> PyResult<()> {
        let write = Flag::get(write);
        self.with_site(site, |c, id| c.host_access(host_ptr.0, nbytes.0, write, id))
    }

    /// The host block was freed: forget pending copies over it.
    fn host_release(&self, host_ptr: Ptr<HostPtrN>, nbytes: Size) -> PyResult<()> {
        self.lock()
            .host_release(host_ptr.0, nbytes.0)
            .map_err(to_py)
    }

    /// An int standing for `site` (cheaper than a str on hot paths).
    fn intern(&self, site: &Bound<'_, PyAny>) -> PyResult<u32> {
        let site = str_arg(site, "site")?;
        Ok(self.lock().intern(&site))
    }

    /// `(base, nbytes, alloc_stream)` of the live storage containing `ptr`, or None.
    fn storage_at(&self, ptr: Ptr) -> Option<(u64, u64, Handle)> {
        self.lock().storage_at(ptr.0)
    }

    /// Distinct hazards in the order first found, from index `since`.
    #[pyo3(signature = (since=None))]
    fn hazards(&self, since: Option<&Bound<'_, PyAny>>) -> PyResult<Vec<Hazard>> {
        let since = match since {
            None => 0,
            Some(o) => o.extract::<usize>().map_err(|_| {
                InvalidArgumentError::new_err(format!(
                    "since must be a non-negative int, got {}",
                    describe(o)
                ))
            })?,
        };
        let core = self.lock();
        Ok(core
            .hazards()
            .iter()
            .skip(since)
            .map(|h| Hazard::from_core(&core, h))
            .collect())
    }

    fn hazard_count(&self) -> usize {
        self.lock().hazards().len()
    }

    fn error_count(&self) -> usize {
        self.lock().error_count()
    }

    /// The engine's counters (docs/ENGINE-API.md), one entry per `Stats` field.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        for (name, value) in self.lock().stats().fields() {
            d.set_item(name, value)?;
        }
        Ok(d)
    }

    /// Bulk path: a C-contiguous int64 array of shape (N, 4), one event a row. Returns
    /// the rows applied; on a bad row, the rows before it stay applied and the error
    /// names its index.
    fn replay(&self, py: Python<'_>, array: &Bound<'_, PyAny>) -> PyResult<usize> {
        let buf = PyBuffer::<i64>::get(array).map_err(|e| {
            InvalidArgumentError::new_err(format!(
                "replay takes a C-contiguous numpy int64 array of shape (N, 4): {e}"
            ))
        })?;
        let format = buf.format().to_string_lossy();
        let foreign = if cfg!(target_endian = "little") {
            format.starts_with(['>', '!'])
        } else {
            format.starts_with('<')
        };
        if foreign {
            return Err(InvalidArgumentError::new_err(format!(
                "replay takes int64 rows in the machine's byte order, got buffer format \
                 {format:?}: convert with array.astype(numpy.int64)"
            )));
        }
        let shape = buf.shape();
        if buf.dimensions() != 2 || shape[1] != 4 || !buf.is_c_contiguous() {
            return Err(InvalidArgumentError::new_err(format!(
                "replay takes a C-contiguous int64 array of shape (N, 4), got shape {shape:?}"
            )));
        }
        let cells = buf
            .as_slice(py)
            .ok_or_else(|| InvalidArgumentError::new_err("replay: array is not contiguous"))?;
        let mut core = self.lock();
        let rows = cells
            .chunks_exact(4)
            .map(|r| [r[0].get(), r[1].get(), r[2].get(), r[3].get()]);
        core.apply_rows(rows).map_err(to_py)
    }

    /// The floor for benchmarks: same arguments and checks as `access`, no engine work.
    #[pyo3(signature = (ptr, nbytes, stream, write=None, site=None))]
    fn _noop(
        &self,
        ptr: Ptr,
        nbytes: Size,
        stream: H<StreamN>,
        write: Option<Flag<WriteN>>,
        site: Site<'_, '_>,
    ) {
        let _ = (ptr, nbytes, stream, write, site);
    }

    /// For benchmarks: `_noop` plus finding the live storage containing `ptr` (what an
    /// access does first, and all that a larger live set makes dearer); True if found.
    #[pyo3(signature = (ptr, nbytes, stream, write=None, site=None))]
    fn _lookup(
        &self,
        ptr: Ptr,
        nbytes: Size,
        stream: H<StreamN>,
        write: Option<Flag<WriteN>>,
        site: Site<'_, '_>,
    ) -> bool {
        let _ = (nbytes, stream, write, site);
        self.lock().is_live(ptr.0)
    }
}

/// Declares `Hazard` from one list of fields: the class with a getter each, `to_dict()`
/// and the unpickling constructor all come from it.
macro_rules! hazard_class {
    ($($field:ident: $ty:ty,)*) => {
        /// One distinct hazard, resolved to the caller's handles and site strings.
        #[pyclass(frozen, get_all, module = "esper_lifetimes._core")]
        pub struct Hazard {
            kind: &'static str,
            severity: &'static str,
            $($field: $ty,)*
        }

        impl Hazard {
            fn set_fields(&self, d: &Bound<'_, PyDict>) -> PyResult<()> {
                d.set_item("kind", self.kind)?;
                d.set_item("severity", self.severity)?;
                $(d.set_item(stringify!($field), self.$field.clone())?;)*
                Ok(())
            }

            fn from_fields(kind: Kind, d: &Bound<'_, PyDict>) -> PyResult<Self> {
                Ok(Hazard {
                    kind: kind.name(),
                    severity: kind.severity(),
                    $($field: field(d, stringify!($field))?,)*
                })
            }
        }
    };
}

hazard_class! {
    count: u64,
    ptr: u64,
    nbytes: u64,
    alloc_stream: Option<Handle>,
    use_stream: Option<Handle>,
    other_stream: Option<Handle>,
    alloc_stream_name: Option<String>,
    use_stream_name: Option<String>,
    other_stream_name: Option<String>,
    alloc_site: Option<String>,
    use_site: Option<String>,
    free_site: Option<String>,
    other_site: Option<String>,
    other_ptr: Option<u64>,
    other_nbytes: Option<u64>,
    live: Option<bool>,
    message: String,
}

fn field<'py, T: FromPyObjectOwned<'py>>(d: &Bound<'py, PyDict>, k: &str) -> PyResult<T> {
    match d.get_item(k)? {
        Some(v) => v.extract::<T>().map_err(Into::into),
        None => Err(InvalidArgumentError::new_err(format!(
            "a pickled Hazard needs the field {k:?}"
        ))),
    }
}

type Identity<'a> = (
    &'a str,
    u64,
    u64,
    [Option<Handle>; 3],
    [Option<&'a str>; 4],
    Option<u64>,
    Option<u64>,
);

impl Hazard {
    fn identity(&self) -> Identity<'_> {
        (
            self.kind,
            self.ptr,
            self.nbytes,
            [self.alloc_stream, self.use_stream, self.other_stream],
            [
                self.alloc_site.as_deref(),
                self.use_site.as_deref(),
                self.free_site.as_deref(),
                self.other_site.as_deref(),
            ],
            self.other_ptr,
            self.other_nbytes,
        )
    }

    fn from_core(core: &Core, h: &CoreHazard) -> Self {
        let handle = |s: Option<StreamIx>| s.map(|s| core.stream_handle(s));
        let name = |s: Option<StreamIx>| s.map(|s| core.stream_label(s));
        let site = |id: SiteId| core.site(id).map(str::to_owned);
        Hazard {
            kind: h.kind.name(),
            severity: h.kind.severity(),
            count: h.count,
            ptr: h.ptr,
            nbytes: h.nbytes,
            alloc_stream: handle(h.alloc_stream),
            use_stream: handle(h.use_stream),
            other_stream: handle(h.other_stream),
            alloc_stream_name: name(h.alloc_stream),
            use_stream_name: name(h.use_stream),
            other_stream_name: name(h.other_stream),
            alloc_site: site(h.alloc_site),
            use_site: site(h.use_site),
            free_site: site(h.free_site),
            other_site: site(h.other_site),
            other_ptr: h.other_ptr,
            other_nbytes: h.other_nbytes,
            live: h.live,
            message: crate::describe::message(core, h),
        }
    }
}

#[pymethods]
impl Hazard {
    /// The fields as a dict (JSON-ready).
    fn to_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        self.set_fields(&d)?;
        Ok(d)
    }

    /// Pickles as its fields (a `LifetimeHazardError` crosses process boundaries).
    fn __reduce__<'py>(
        &self,
        py: Python<'py>,
    ) -> PyResult<(Bound<'py, PyAny>, (Bound<'py, PyDict>,))> {
        let module = py.import("esper_lifetimes._core")?;
        Ok((module.getattr("_hazard_from_dict")?, (self.to_dict(py)?,)))
    }

    /// Equal when the identity fields agree (kind, storage, streams, sites, the other
    /// allocation); `count`, `live` and `message` grow with repeats and are not compared.
    fn __richcmp__(&self, other: &Bound<'_, PyAny>, op: CompareOp) -> PyResult<Py<PyAny>> {
        let py = other.py();
        let Ok(other) = other.cast::<Hazard>() else {
            return Ok(py.NotImplemented());
        };
        let same = self.identity() == other.get().identity();
        match op {
            CompareOp::Eq => Ok(PyBool::new(py, same).to_owned().into_any().unbind()),
            CompareOp::Ne => Ok(PyBool::new(py, !same).to_owned().into_any().unbind()),
            _ => Ok(py.NotImplemented()),
        }
    }

    fn __hash__(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.identity().hash(&mut h);
        h.finish()
    }

    fn __repr__(&self) -> String {
        format!(
            "Hazard(kind={:?}, count={}, ptr={:#x}, use_site={:?})",
            self.kind,
            self.count,
            self.ptr,
            self.use_site.as_deref().unwrap_or("None")
        )
    }

    fn __str__(&self) -> String {
        self.message.clone()
    }
}

/// Rebuilds a pickled `Hazard` from its `to_dict()`.
#[pyfunction]
fn _hazard_from_dict(d: &Bound<'_, PyDict>) -> PyResult<Hazard> {
    let kind_name: String = field(d, "kind")?;
    let Some(&kind) = Kind::ALL.iter().find(|k| k.name() == kind_name) else {
        return Err(InvalidArgumentError::new_err(format!(
            "unknown hazard kind {kind_name:?}"
        )));
    };
    Hazard::from_fields(kind, d)
}

/// The hazard kinds, from the Rust `Kind` enum: the one list the Python side reads.
fn kinds(py: Python<'_>) -> PyResult<Bound<'_, PyTuple>> {
    let mut out = Vec::new();
    for k in Kind::ALL {
        let d = PyDict::new(py);
        d.set_item("name", k.name())?;
        d.set_item("severity", k.severity())?;
        d.set_item("title", k.title())?;
        d.set_item("hint", k.hint())?;
        let roles = k
            .roles()
            .iter()
            .map(|&(label, site, stream)| (label, site, stream))
            .collect::<Vec<_>>();
        d.set_item("roles", PyTuple::new(py, roles)?)?;
        out.push(d);
    }
    PyTuple::new(py, out)
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("KINDS", kinds(py)?)?;
    m.add_function(wrap_pyfunction!(_hazard_from_dict, m)?)?;
    m.add_class::<Engine>()?;
    m.add_class::<Hazard>()?;
    m.add_class::<crate::hooks::AlwaysOnHooks>()?;
    m.add_function(wrap_pyfunction!(crate::hooks::item_method, m)?)?;
    m.add_function(wrap_pyfunction!(crate::hooks::set_item_hooks, m)?)?;
    m.add("LifetimesError", py.get_type::<LifetimesError>())?;
    m.add(
        "InvalidArgumentError",
        py.get_type::<InvalidArgumentError>(),
    )?;
    m.add("UnknownStorageError", py.get_type::<UnknownStorageError>())?;
    Ok(())
}
