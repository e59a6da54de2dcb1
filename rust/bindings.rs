//! The one PyO3 layer: argument checking, the lock, and conversion of hazards.
//!
//! Hot-path methods take positional ints and do no keyword work on success. Every
//! argument error becomes an `InvalidArgumentError` naming the value, and every engine
//! error keeps the engine's state as it was (interned sites included).

use crate::clock::StreamIx;
use crate::engine::{Engine as Core, Handle, Stats};
use crate::error::{EngineError, ErrorClass};
use crate::hazard::{Hazard as CoreHazard, Kind};
use crate::sites::{SiteId, NO_SITE};
use parking_lot::Mutex;
use pyo3::basic::CompareOp;
use pyo3::buffer::PyBuffer;
use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyInt, PyList, PyString, PyTuple};
use smallvec::SmallVec;

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

#[inline]
fn ptr_arg(obj: &Bound<'_, PyAny>, what: &str) -> PyResult<u64> {
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

#[inline]
fn size_arg(obj: &Bound<'_, PyAny>) -> PyResult<u64> {
    match obj.extract::<i64>() {
        Ok(v) if v > 0 && !obj.is_instance_of::<PyBool>() => Ok(v as u64),
        _ => Err(InvalidArgumentError::new_err(format!(
            "nbytes must be a positive int, got {}",
            describe(obj)
        ))),
    }
}

#[inline]
fn handle_arg(obj: &Bound<'_, PyAny>, what: &str) -> PyResult<Handle> {
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
fn flag_arg(obj: Option<&Bound<'_, PyAny>>, what: &str) -> PyResult<bool> {
    match obj {
        None => Ok(false),
        Some(o) => o.extract::<bool>().map_err(|_| {
            InvalidArgumentError::new_err(format!("{what} must be a bool, got {}", describe(o)))
        }),
    }
}

fn str_arg(obj: &Bound<'_, PyAny>, what: &str) -> PyResult<String> {
    match obj.cast::<PyString>() {
        Ok(s) => Ok(s.to_str()?.to_owned()),
        Err(_) => Err(InvalidArgumentError::new_err(format!(
            "{what} must be a str, got {}",
            describe(obj)
        ))),
    }
}

type Ranges = SmallVec<[(u64, u64); 8]>;

/// A flat sequence `[ptr0, nbytes0, ptr1, nbytes1, ...]` (tuple or list) as ranges.
fn ranges_arg(obj: &Bound<'_, PyAny>, what: &str) -> PyResult<Ranges> {
    let odd = |n: usize| {
        InvalidArgumentError::new_err(format!(
            "{what} must hold (ptr, nbytes) pairs flattened, got {n} items"
        ))
    };
    let mut out = Ranges::new();
    if let Ok(t) = obj.cast::<PyTuple>() {
        // borrowed items: no reference counting per int on the hot path
        let n = t.len();
        if !n.is_multiple_of(2) {
            return Err(odd(n));
        }
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
    Ok(out)
}

/// The engine, shared by every thread that holds it: all state sits behind one lock.
#[pyclass(frozen, module = "esper_lifetimes._core")]
pub struct Engine {
    core: Mutex<Core>,
}

impl Engine {
    /// Resolves `site` (None, str, or interned int) and runs `f`; a failed call rolls
    /// back a site it interned, so the engine is exactly as before the call.
    #[inline]
    fn with_site<T>(
        &self,
        site: Option<&Bound<'_, PyAny>>,
        f: impl FnOnce(&mut Core, SiteId) -> Result<T, EngineError>,
    ) -> PyResult<T> {
        let mut core = self.core.lock();
        let mark = core.sites_len();
        let id = match site {
            None => NO_SITE,
            Some(obj) if obj.is_none() => NO_SITE,
            Some(obj) => {
                if let Ok(s) = obj.cast::<PyString>() {
                    core.intern(s.to_str()?)
                } else if let Ok(i) = obj.extract::<u32>() {
                    core.check_site(i).map_err(to_py)?
                } else {
                    return Err(InvalidArgumentError::new_err(format!(
                        "site must be None, a str or an int from intern(), got {}",
                        describe(obj)
                    )));
                }
            }
        };
        let r = f(&mut core, id);
        if r.is_err() {
            core.truncate_sites(mark);
        }
        r.map_err(to_py)
    }
}

#[pymethods]
impl Engine {
    #[new]
    fn new() -> Self {
        Engine {
            core: Mutex::new(Core::new()),
        }
    }

    /// A storage `[ptr, ptr+nbytes)` allocated while `stream` was current.
    #[pyo3(signature = (ptr, nbytes, stream, site=None))]
    fn alloc(
        &self,
        ptr: &Bound<'_, PyAny>,
        nbytes: &Bound<'_, PyAny>,
        stream: &Bound<'_, PyAny>,
        site: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let (p, n, s) = (
            ptr_arg(ptr, "ptr")?,
            size_arg(nbytes)?,
            handle_arg(stream, "stream")?,
        );
        self.with_site(site, |c, id| c.alloc(p, n, s, id))
    }

    /// A storage whose allocation was not seen (it existed before tracking began).
    #[pyo3(signature = (ptr, nbytes, stream, site=None))]
    fn adopt(
        &self,
        ptr: &Bound<'_, PyAny>,
        nbytes: &Bound<'_, PyAny>,
        stream: &Bound<'_, PyAny>,
        site: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let (p, n, s) = (
            ptr_arg(ptr, "ptr")?,
            size_arg(nbytes)?,
            handle_arg(stream, "stream")?,
        );
        self.with_site(site, |c, id| c.adopt(p, n, s, id))
    }

    /// The end of a region, test or run: every pending free is judged now, and the
    /// advice of record_stream sites redundant every time they ran is emitted.
    fn flush(&self) {
        self.core.lock().flush();
    }

    /// Work on `stream` reads (or writes) `[ptr, ptr+nbytes)` inside one live storage.
    #[pyo3(signature = (ptr, nbytes, stream, write=None, site=None))]
    fn access(
        &self,
        ptr: &Bound<'_, PyAny>,
        nbytes: &Bound<'_, PyAny>,
        stream: &Bound<'_, PyAny>,
        write: Option<&Bound<'_, PyAny>>,
        site: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let (p, n, s) = (
            ptr_arg(ptr, "ptr")?,
            size_arg(nbytes)?,
            handle_arg(stream, "stream")?,
        );
        let write = flag_arg(write, "write")?;
        self.with_site(site, |c, id| c.access(p, n, s, write, id))
    }

    /// One kernel launch on `stream`: `reads` and `writes` are flat sequences
    /// `[ptr0, nbytes0, ptr1, nbytes1, ...]`; the same as `access` for each read, then
    /// each write, in one call. A bad range leaves the engine unchanged.
    #[pyo3(signature = (stream, reads, writes, site=None))]
    fn launch(
        &self,
        stream: &Bound<'_, PyAny>,
        reads: &Bound<'_, PyAny>,
        writes: &Bound<'_, PyAny>,
        site: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let s = handle_arg(stream, "stream")?;
        let (r, w) = (ranges_arg(reads, "reads")?, ranges_arg(writes, "writes")?);
        self.with_site(site, |c, id| c.launch(s, &r, &w, id))
    }

    /// The floor of `launch` for benchmarks: the same argument checks, no engine work.
    #[pyo3(signature = (stream, reads, writes, site=None))]
    fn _noop_launch(
        &self,
        stream: &Bound<'_, PyAny>,
        reads: &Bound<'_, PyAny>,
        writes: &Bound<'_, PyAny>,
        site: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let _ = (handle_arg(stream, "stream")?, site);
        let _ = (ranges_arg(reads, "reads")?, ranges_arg(writes, "writes")?);
        Ok(())
    }

    /// `Tensor.record_stream(stream)` on the storage containing `ptr`.
    #[pyo3(signature = (ptr, stream, site=None))]
    fn record_stream(
        &self,
        ptr: &Bound<'_, PyAny>,
        stream: &Bound<'_, PyAny>,
        site: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let (p, s) = (ptr_arg(ptr, "ptr")?, handle_arg(stream, "stream")?);
        self.with_site(site, |c, id| c.record_stream(p, s, id))
    }

    /// The storage whose base pointer is `ptr` is freed.
    #[pyo3(signature = (ptr, site=None))]
    fn free(&self, ptr: &Bound<'_, PyAny>, site: Option<&Bound<'_, PyAny>>) -> PyResult<()> {
        let p = ptr_arg(ptr, "ptr")?;
        self.with_site(site, |c, id| c.free(p, id))
    }

    fn event_record(&self, event: &Bound<'_, PyAny>, stream: &Bound<'_, PyAny>) -> PyResult<()> {
        let (e, s) = (handle_arg(event, "event")?, handle_arg(stream, "stream")?);
        self.core.lock().event_record(e, s);
        Ok(())
    }

    fn event_wait(&self, event: &Bound<'_, PyAny>, stream: &Bound<'_, PyAny>) -> PyResult<()> {
        let (e, s) = (handle_arg(event, "event")?, handle_arg(stream, "stream")?);
        self.core.lock().event_wait(e, s);
        Ok(())
    }

    fn stream_wait(&self, waiter: &Bound<'_, PyAny>, waited: &Bound<'_, PyAny>) -> PyResult<()> {
        let (w, t) = (handle_arg(waiter, "waiter")?, handle_arg(waited, "waited")?);
        self.core.lock().stream_wait(w, t);
        Ok(())
    }

    fn stream_synchronize(&self, stream: &Bound<'_, PyAny>) -> PyResult<()> {
        let s = handle_arg(stream, "stream")?;
        self.core.lock().stream_synchronize(s);
        Ok(())
    }

    fn event_synchronize(&self, event: &Bound<'_, PyAny>) -> PyResult<()> {
        let e = handle_arg(event, "event")?;
        self.core.lock().event_synchronize(e);
        Ok(())
    }

    fn device_synchronize(&self) {
        self.core.lock().device_synchronize();
    }

    fn stream_query(&self, stream: &Bound<'_, PyAny>, complete: &Bound<'_, PyAny>) -> PyResult<()> {
        let s = handle_arg(stream, "stream")?;
        let complete = flag_arg(Some(complete), "complete")?;
        self.core.lock().stream_query(s, complete);
        Ok(())
    }

    fn event_query(&self, event: &Bound<'_, PyAny>, complete: &Bound<'_, PyAny>) -> PyResult<()> {
        let e = handle_arg(event, "event")?;
        let complete = flag_arg(Some(complete), "complete")?;
        self.core.lock().event_query(e, complete);
        Ok(())
    }

    /// Forgets a destroyed event (keeps memory flat when events are made per step).
    fn forget_event(&self, event: &Bound<'_, PyAny>) -> PyResult<()> {
        let e = handle_arg(event, "event")?;
        self.core.lock().forget_event(e);
        Ok(())
    }

    /// Names a stream for reports; `virtual=True`: its work completes only when the host
    /// synchronizes it.
    #[pyo3(signature = (stream, name=None, r#virtual=None))]
    fn define_stream(
        &self,
        stream: &Bound<'_, PyAny>,
        name: Option<&Bound<'_, PyAny>>,
        r#virtual: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let s = handle_arg(stream, "stream")?;
        let name = match name {
            Some(n) if !n.is_none() => Some(str_arg(n, "name")?),
            _ => None,
        };
        let is_virtual = flag_arg(r#virtual, "virtual")?;
        self.core
            .lock()
            .define_stream(s, name.as_deref(), is_virtual);
        Ok(())
    }

    /// A non-blocking device-to-host copy on `stream` writes host bytes.
    #[pyo3(signature = (host_ptr, nbytes, stream, site=None))]
    fn copy_to_host(
        &self,
        host_ptr: &Bound<'_, PyAny>,
        nbytes: &Bound<'_, PyAny>,
        stream: &Bound<'_, PyAny>,
        site: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let (p, n, s) = (
            ptr_arg(host_ptr, "host_ptr")?,
            size_arg(nbytes)?,
            handle_arg(stream, "stream")?,
        );
        self.with_site(site, |c, id| c.copy_to_host(p, n, s, id))
    }

    /// A non-blocking host-to-device copy on `stream` reads pinned host bytes.
    #[pyo3(signature = (host_ptr, nbytes, stream, site=None))]
    fn copy_from_host(
        &self,
        host_ptr: &Bound<'_, PyAny>,
        nbytes: &Bound<'_, PyAny>,
        stream: &Bound<'_, PyAny>,
        site: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let (p, n, s) = (
            ptr_arg(host_ptr, "host_ptr")?,
            size_arg(nbytes)?,
            handle_arg(stream, "stream")?,
        );
        self.with_site(site, |c, id| c.copy_from_host(p, n, s, id))
    }

    /// The host reads (or writes) host bytes.
    #[pyo3(signature = (host_ptr, nbytes, write=None, site=None))]
    fn host_access(
        &self,
        host_ptr: &Bound<'_, PyAny>,
        nbytes: &Bound<'_, PyAny>,
        write: Option<&Bound<'_, PyAny>>,
        site: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let (p, n) = (ptr_arg(host_ptr, "host_ptr")?, size_arg(nbytes)?);
        let write = flag_arg(write, "write")?;
        self.with_site(site, |c, id| c.host_access(p, n, write, id))
    }

    /// The host block was freed: forget pending copies over it.
    fn host_release(&self, host_ptr: &Bound<'_, PyAny>, nbytes: &Bound<'_, PyAny>) -> PyResult<()> {
        let (p, n) = (ptr_arg(host_ptr, "host_ptr")?, size_arg(nbytes)?);
        self.core.lock().host_release(p, n).map_err(to_py)
    }

    /// An int standing for `site` (cheaper than a str on hot paths).
    fn intern(&self, site: &Bound<'_, PyAny>) -> PyResult<u32> {
        let site = str_arg(site, "site")?;
        Ok(self.core.lock().intern(&site))
    }

    /// `(base, nbytes, alloc_stream)` of the live storage containing `ptr`, or None.
    fn storage_at(&self, ptr: &Bound<'_, PyAny>) -> PyResult<Option<(u64, u64, Handle)>> {
        let p = ptr_arg(ptr, "ptr")?;
        Ok(self.core.lock().storage_at(p))
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
        let core = self.core.lock();
        Ok(core
            .hazards()
            .iter()
            .skip(since)
            .map(|h| Hazard::from_core(&core, h))
            .collect())
    }

    fn hazard_count(&self) -> usize {
        self.core.lock().hazards().len()
    }

    fn error_count(&self) -> usize {
        self.core.lock().error_count()
    }

    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let Stats {
            live_storages,
            pending_frees,
            freed_tracked,
            freed_dropped,
            pending_host_copies,
            streams,
            events,
            sites,
            hazards,
            events_processed,
        } = self.core.lock().stats();
        let d = PyDict::new(py);
        d.set_item("live_storages", live_storages)?;
        d.set_item("pending_frees", pending_frees)?;
        d.set_item("freed_tracked", freed_tracked)?;
        d.set_item("freed_dropped", freed_dropped)?;
        d.set_item("pending_host_copies", pending_host_copies)?;
        d.set_item("streams", streams)?;
        d.set_item("events", events)?;
        d.set_item("sites", sites)?;
        d.set_item("hazards", hazards)?;
        d.set_item("events_processed", events_processed)?;
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
        let mut core = self.core.lock();
        let rows = cells
            .chunks_exact(4)
            .map(|r| [r[0].get(), r[1].get(), r[2].get(), r[3].get()]);
        core.apply_rows(rows).map_err(to_py)
    }

    /// The floor for benchmarks: same arguments and checks as `access`, no engine work.
    #[pyo3(signature = (ptr, nbytes, stream, write=None, site=None))]
    fn _noop(
        &self,
        ptr: &Bound<'_, PyAny>,
        nbytes: &Bound<'_, PyAny>,
        stream: &Bound<'_, PyAny>,
        write: Option<&Bound<'_, PyAny>>,
        site: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let _ = (
            ptr_arg(ptr, "ptr")?,
            size_arg(nbytes)?,
            handle_arg(stream, "stream")?,
        );
        let _ = (flag_arg(write, "write")?, site);
        Ok(())
    }
}

/// One distinct hazard, resolved to the caller's handles and site strings.
#[pyclass(frozen, module = "esper_lifetimes._core")]
pub struct Hazard {
    #[pyo3(get)]
    kind: &'static str,
    #[pyo3(get)]
    severity: &'static str,
    #[pyo3(get)]
    count: u64,
    #[pyo3(get)]
    ptr: u64,
    #[pyo3(get)]
    nbytes: u64,
    #[pyo3(get)]
    alloc_stream: Option<Handle>,
    #[pyo3(get)]
    use_stream: Option<Handle>,
    #[pyo3(get)]
    other_stream: Option<Handle>,
    #[pyo3(get)]
    alloc_stream_name: Option<String>,
    #[pyo3(get)]
    use_stream_name: Option<String>,
    #[pyo3(get)]
    other_stream_name: Option<String>,
    #[pyo3(get)]
    alloc_site: Option<String>,
    #[pyo3(get)]
    use_site: Option<String>,
    #[pyo3(get)]
    free_site: Option<String>,
    #[pyo3(get)]
    other_site: Option<String>,
    #[pyo3(get)]
    other_ptr: Option<u64>,
    #[pyo3(get)]
    other_nbytes: Option<u64>,
    #[pyo3(get)]
    live: Option<bool>,
    #[pyo3(get)]
    message: String,
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
        d.set_item("kind", self.kind)?;
        d.set_item("severity", self.severity)?;
        d.set_item("count", self.count)?;
        d.set_item("ptr", self.ptr)?;
        d.set_item("nbytes", self.nbytes)?;
        d.set_item("alloc_stream", self.alloc_stream)?;
        d.set_item("use_stream", self.use_stream)?;
        d.set_item("other_stream", self.other_stream)?;
        d.set_item("alloc_stream_name", &self.alloc_stream_name)?;
        d.set_item("use_stream_name", &self.use_stream_name)?;
        d.set_item("other_stream_name", &self.other_stream_name)?;
        d.set_item("alloc_site", &self.alloc_site)?;
        d.set_item("use_site", &self.use_site)?;
        d.set_item("free_site", &self.free_site)?;
        d.set_item("other_site", &self.other_site)?;
        d.set_item("other_ptr", self.other_ptr)?;
        d.set_item("other_nbytes", self.other_nbytes)?;
        d.set_item("live", self.live)?;
        d.set_item("message", &self.message)?;
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
    fn get<'py, T: FromPyObjectOwned<'py>>(d: &Bound<'py, PyDict>, k: &str) -> PyResult<T> {
        match d.get_item(k)? {
            Some(v) => v.extract::<T>().map_err(Into::into),
            None => Err(InvalidArgumentError::new_err(format!(
                "a pickled Hazard needs the field {k:?}"
            ))),
        }
    }
    let kind_name: String = get(d, "kind")?;
    let Some(kind) = Kind::ALL.iter().find(|k| k.name() == kind_name) else {
        return Err(InvalidArgumentError::new_err(format!(
            "unknown hazard kind {kind_name:?}"
        )));
    };
    Ok(Hazard {
        kind: kind.name(),
        severity: kind.severity(),
        count: get(d, "count")?,
        ptr: get(d, "ptr")?,
        nbytes: get(d, "nbytes")?,
        alloc_stream: get(d, "alloc_stream")?,
        use_stream: get(d, "use_stream")?,
        other_stream: get(d, "other_stream")?,
        alloc_stream_name: get(d, "alloc_stream_name")?,
        use_stream_name: get(d, "use_stream_name")?,
        other_stream_name: get(d, "other_stream_name")?,
        alloc_site: get(d, "alloc_site")?,
        use_site: get(d, "use_site")?,
        free_site: get(d, "free_site")?,
        other_site: get(d, "other_site")?,
        other_ptr: get(d, "other_ptr")?,
        other_nbytes: get(d, "other_nbytes")?,
        live: get(d, "live")?,
        message: get(d, "message")?,
    })
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
    m.add("LifetimesError", py.get_type::<LifetimesError>())?;
    m.add(
        "InvalidArgumentError",
        py.get_type::<InvalidArgumentError>(),
    )?;
    m.add("UnknownStorageError", py.get_type::<UnknownStorageError>())?;
    Ok(())
}
