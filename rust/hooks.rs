//! The always-on tracker's hooks in compiled code (part of the bindings layer).
//!
//! The always-on mode keeps a few rare calls hooked for a whole training run: stream and
//! event waits and records, synchronizations, queries and `Tensor.item()`. In Python
//! each hooked call cost 0.3-1.9 us (a frame, thread-local reads, attribute lookups, the
//! window decision). `AlwaysOnHooks` does the common case of each in one call: the
//! engine update under the lock, and at a barrier (a synchronize, a blocking `.item()`)
//! the window schedule's next boundary and the new-hazard check. Whatever is not the
//! common case goes back to the Python tracker (`esper_lifetimes.always_on_tracker`),
//! which stays the one place of every rule: opening and closing windows, logging
//! hazards, CUDA stream names, emulated or host memory, another tracker on the thread.
//!
//! The tracker installs the `on_*` methods as instance attributes over its Python ones
//! (`AlwaysOnTracker.start`), so the patched calls and virtual streams reach them with
//! no Python frame of the tracker's; the `record_stream` wrapper calls `skips_record`,
//! and `Tensor.item` is compiled here too (`item_method`, at the end of this file), which
//! calls `after_item`. Nothing here raises into the program: a failure is
//! handed to `tracker.note(exc, what)`. The engine lock is never held across a call
//! into Python.

use crate::bindings::{handle_arg, Engine};
use crate::engine::Handle;
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::ffi;
use pyo3::gc::{PyTraverseError, PyVisit};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PySet, PyType};
use std::sync::atomic::{
    AtomicBool, AtomicI64, AtomicPtr, AtomicU64, AtomicUsize, Ordering::Relaxed,
};

extern "C" {
    // CPython's stable ABI (what `threading.get_ident()` returns); pyo3-ffi does not
    // declare it.
    fn PyThread_get_thread_ident() -> std::os::raw::c_ulong;
}

/// `patches.CUDA_STREAM_TAG`: the handle of a CUDA stream (named once, by the tracker).
const CUDA_TAG: Handle = 1 << 62;

/// The Python objects the hooks read, held until the tracker is collected.
struct Refs {
    /// The tracker's engine: the compiled one, or a wrapper of it (a timeline's
    /// recording proxy), called through Python then.
    engine: Py<PyAny>,
    native: Option<Py<Engine>>,
    tracker: Py<PyAny>,
    /// `patches.thread_state.__dict__` of the watched thread: `depth`, `fast`.
    tstate: Py<PyDict>,
    /// `virtual.thread_stream().__dict__` of the watched thread: its current stream,
    /// `stream`.
    vcur: Py<PyDict>,
    /// `virtual.host_storages`: CPU storages marked as host memory.
    host_marks: Py<PyDict>,
    /// `tracker._named`: the stream handles the engine has a name for.
    named: Py<PySet>,
    /// `tracker._recs`: the tracker's storages by `id(storage)`.
    recs: Py<PyDict>,
}

/// One engine update of a hook.
enum Ev {
    StreamWait(Handle, Handle),
    EventRecord(Handle, Handle),
    EventWait(Handle, Handle),
    StreamSync(Handle),
    EventSync(Handle),
    DeviceSync,
    StreamQuery(Handle, bool),
    EventQuery(Handle, bool),
}

/// The hooks of one always-on tracker, and the part of its window schedule a barrier
/// reads: the boundary count, the next boundary that opens a window, whether the common
/// case applies (`quick`: no window open and the schedule drawn for the current rate).
#[pyclass(module = "esper_lifetimes._core", weakref)]
pub struct AlwaysOnHooks {
    refs: Option<Refs>,
    thread: u64,
    /// The handle of `virtual.DEFAULT`, the stream when `vcur["stream"]` is None.
    vdefault: Handle,
    cpu_device: bool,
    full: bool,
    adopt_unseen: bool,
    active: AtomicBool,
    /// The tracker is alone on its thread (`thread_state.fast`, told by `thread_fast`).
    alone: AtomicBool,
    /// CUDA emulation runs (`memory.emulating`, told by `memory.set_emulating`).
    emulating: AtomicBool,
    quick: AtomicBool,
    boundary: AtomicI64,
    next_open: AtomicI64,
    barriers: AtomicU64,
    logged: AtomicUsize,
}

fn current_thread() -> u64 {
    // SAFETY: a plain query of the calling thread's id, valid with or without the GIL
    #[allow(clippy::useless_conversion)] // c_ulong is 32 bits on Windows
    u64::from(unsafe { PyThread_get_thread_ident() })
}

impl AlwaysOnHooks {
    fn refs(&self) -> PyResult<&Refs> {
        self.refs
            .as_ref()
            .ok_or_else(|| pyo3::exceptions::PyRuntimeError::new_err("the hooks were cleared"))
    }

    /// Feeds `ev` to the engine: under its lock, or through a wrapper's Python methods.
    fn apply(py: Python<'_>, r: &Refs, ev: Ev) -> PyResult<()> {
        if let Some(n) = &r.native {
            let mut c = n.get().lock();
            match ev {
                Ev::StreamWait(a, b) => c.stream_wait(a, b),
                Ev::EventRecord(e, s) => c.event_record(e, s),
                Ev::EventWait(e, s) => c.event_wait(e, s),
                Ev::StreamSync(s) => c.stream_synchronize(s),
                Ev::EventSync(e) => c.event_synchronize(e),
                Ev::DeviceSync => c.device_synchronize(),
                Ev::StreamQuery(s, done) => c.stream_query(s, done),
                Ev::EventQuery(e, done) => c.event_query(e, done),
            }
            return Ok(());
        }
        let e = r.engine.bind(py);
        match ev {
            Ev::StreamWait(a, b) => e.call_method1(intern!(py, "stream_wait"), (a, b)),
            Ev::EventRecord(ev, s) => e.call_method1(intern!(py, "event_record"), (ev, s)),
            Ev::EventWait(ev, s) => e.call_method1(intern!(py, "event_wait"), (ev, s)),
            Ev::StreamSync(s) => e.call_method1(intern!(py, "stream_synchronize"), (s,)),
            Ev::EventSync(ev) => e.call_method1(intern!(py, "event_synchronize"), (ev,)),
            Ev::DeviceSync => e.call_method0(intern!(py, "device_synchronize")),
            Ev::StreamQuery(s, d) => e.call_method1(intern!(py, "stream_query"), (s, d)),
            Ev::EventQuery(ev, d) => e.call_method1(intern!(py, "event_query"), (ev, d)),
        }?;
        Ok(())
    }

    /// `apply`, then the engine's hazard count (under the same lock when compiled).
    fn apply_counted(py: Python<'_>, r: &Refs, ev: Ev) -> PyResult<usize> {
        if let Some(n) = &r.native {
            let mut c = n.get().lock();
            match ev {
                Ev::StreamSync(s) => c.stream_synchronize(s),
                Ev::EventSync(e) => c.event_synchronize(e),
                Ev::DeviceSync => c.device_synchronize(),
                _ => {
                    drop(c);
                    Self::apply(py, r, ev)?;
                    return Self::hazard_count(py, r);
                }
            }
            return Ok(c.hazards().len());
        }
        Self::apply(py, r, ev)?;
        Self::hazard_count(py, r)
    }

    fn hazard_count(py: Python<'_>, r: &Refs) -> PyResult<usize> {
        match &r.native {
            Some(n) => Ok(n.get().lock().hazards().len()),
            None => r
                .engine
                .bind(py)
                .call_method0(intern!(py, "hazard_count"))?
                .extract(),
        }
    }

    /// Hands a failure to the tracker's diagnostics (never raises).
    fn note(&self, py: Python<'_>, err: PyErr, what: &str) {
        let Some(r) = &self.refs else {
            err.write_unraisable(py, None);
            return;
        };
        if let Err(e) = r
            .tracker
            .bind(py)
            .call_method1(intern!(py, "note"), (err, what))
        {
            // the tracker itself failed to take it: printed as an unraisable error, as a
            // finalizer's would be, rather than lost
            e.write_unraisable(py, None);
        }
    }

    fn guard(&self, py: Python<'_>, what: &str, f: impl FnOnce(&Refs) -> PyResult<()>) {
        let r = match self.refs() {
            Ok(r) => f(r),
            Err(e) => Err(e),
        };
        if let Err(e) = r {
            self.note(py, e, what);
        }
    }

    /// Names a CUDA stream the engine has no name for yet (the tracker's Python does it).
    fn name_if_cuda(py: Python<'_>, r: &Refs, obj: &Bound<'_, PyAny>, h: Handle) -> PyResult<()> {
        if h & CUDA_TAG != 0 && !r.named.bind(py).contains(obj)? {
            r.tracker
                .bind(py)
                .call_method1(intern!(py, "name_cuda_stream"), (obj,))?;
        }
        Ok(())
    }

    /// Whether the tracker is alone on its thread (`patches.thread_state.fast` there);
    /// only meaningful on the watched thread.
    fn alone(&self) -> bool {
        self.alone.load(Relaxed)
    }

    /// A barrier on the watched thread. Alone there, the common case runs here; with
    /// another tracker on the thread, the tracker's `_barrier` decides.
    /// `hazards`: the engine's hazard count just read under the lock of the sync.
    fn barrier_here(&self, py: Python<'_>, r: &Refs, hazards: usize) -> PyResult<()> {
        if !self.active.load(Relaxed) {
            return Ok(());
        }
        if current_thread() != self.thread || !self.alone() {
            r.tracker.bind(py).call_method0(intern!(py, "_barrier"))?;
            return Ok(());
        }
        self.barrier_checked(py, r, hazards)
    }

    /// The barrier's bookkeeping for a caller that has checked the thread; `hazards`,
    /// the engine's hazard count.
    fn barrier_checked(&self, py: Python<'_>, r: &Refs, hazards: usize) -> PyResult<()> {
        self.barriers.fetch_add(1, Relaxed);
        let mut window = false;
        if !self.full {
            let b = self.boundary.load(Relaxed);
            if self.quick.load(Relaxed) && b != self.next_open.load(Relaxed) {
                self.boundary.store(b + 1, Relaxed); // no window open, none opening here
            } else {
                window = true;
            }
        }
        let new = hazards != self.logged.load(Relaxed);
        if window || new {
            r.tracker
                .bind(py)
                .call_method1(intern!(py, "_barrier_slow"), (window,))?;
        }
        Ok(())
    }

    /// A synchronize: the engine update (a failure noted as `what`), then the barrier
    /// (a failure noted as "window"), as the Python tracker's `on_*_sync` + `_barrier`.
    fn sync_then_barrier(
        &self,
        py: Python<'_>,
        what: &str,
        ev: impl FnOnce(&Refs) -> PyResult<Ev>,
    ) {
        let Ok(r) = self.refs() else { return };
        let hazards = match ev(r).and_then(|ev| Self::apply_counted(py, r, ev)) {
            Ok(n) => Ok(n),
            Err(e) => {
                self.note(py, e, what);
                Self::hazard_count(py, r)
            }
        };
        if let Err(e) = hazards.and_then(|n| self.barrier_here(py, r, n)) {
            self.note(py, e, "window");
        }
    }

    /// A blocking host read of `t` on the watched thread, alone there, no emulation.
    fn blocking_read(&self, py: Python<'_>, r: &Refs, t: &Bound<'_, PyAny>) -> PyResult<()> {
        if !is_cpu(py, t)? || !r.host_marks.bind(py).is_empty() {
            // CUDA memory (its current stream), marked host memory: the Python path
            r.tracker
                .bind(py)
                .call_method1(intern!(py, "_blocking_read"), (t,))?;
            return Ok(());
        }
        if !self.cpu_device {
            return Ok(()); // host memory: no stream synchronized, no barrier
        }
        let h = match r.vcur.bind(py).get_item(intern!(py, "stream"))? {
            Some(s) if !s.is_none() => handle_arg(&s.getattr(intern!(py, "handle"))?, "stream")?,
            _ => self.vdefault, // memory.vcurrent(), inlined
        };
        let hazards = Self::apply_counted(py, r, Ev::StreamSync(h))?;
        self.barrier_checked(py, r, hazards)
    }

    /// After torch's `Tensor.item()` on `t` returned (the compiled `Tensor.item`,
    /// `item_impl` below, calls torch's first, then this): on the watched thread and
    /// outside the tracker's own calls, the blocking read (a sync of the current stream)
    /// and the barrier. Never raises.
    fn after_item(&self, py: Python<'_>, t: &Bound<'_, PyAny>) {
        if !self.active.load(Relaxed) || current_thread() != self.thread {
            return;
        }
        let Some(r) = &self.refs else { return };
        let step = || -> PyResult<()> {
            let ts = r.tstate.bind(py);
            if let Some(d) = ts.get_item(intern!(py, "depth"))? {
                if d.is_truthy()? {
                    return Ok(()); // inside a patched call: not an event of the program
                }
            }
            if self.emulating.load(Relaxed) || !self.alone() {
                // the real device of an emulated tensor, or another tracker on the thread
                r.tracker
                    .bind(py)
                    .call_method1(intern!(py, "_item_slow"), (t,))?;
                return Ok(());
            }
            self.blocking_read(py, r, t)
        };
        if let Err(e) = step() {
            self.note(py, e, "blocking read");
        }
    }
}

#[pymethods]
impl AlwaysOnHooks {
    #[new]
    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (engine, tracker, thread, tstate, vcur, vdefault, host_marks,
                        named, recs, *, cpu_device, full, adopt_unseen))]
    fn new(
        engine: &Bound<'_, PyAny>,
        tracker: Py<PyAny>,
        thread: u64,
        tstate: Py<PyDict>,
        vcur: Py<PyDict>,
        vdefault: &Bound<'_, PyAny>,
        host_marks: Py<PyDict>,
        named: Py<PySet>,
        recs: Py<PyDict>,
        cpu_device: bool,
        full: bool,
        adopt_unseen: bool,
    ) -> PyResult<Self> {
        let vdefault = handle_arg(&vdefault.getattr("handle")?, "vdefault.handle")?;
        Ok(AlwaysOnHooks {
            refs: Some(Refs {
                native: engine.cast::<Engine>().ok().map(|e| e.clone().unbind()),
                engine: engine.clone().unbind(),
                tracker,
                tstate,
                vcur,
                host_marks,
                named,
                recs,
            }),
            thread,
            vdefault,
            cpu_device,
            full,
            adopt_unseen,
            active: AtomicBool::new(true),
            alone: AtomicBool::new(false),
            emulating: AtomicBool::new(false),
            quick: AtomicBool::new(false),
            boundary: AtomicI64::new(0),
            next_open: AtomicI64::new(0),
            barriers: AtomicU64::new(0),
            logged: AtomicUsize::new(0),
        })
    }

    // -- the schedule and counters the tracker's Python reads and writes ---------------

    #[getter]
    fn active(&self) -> bool {
        self.active.load(Relaxed)
    }
    #[setter]
    fn set_active(&self, v: bool) {
        self.active.store(v, Relaxed);
    }
    #[getter]
    fn emulating(&self) -> bool {
        self.emulating.load(Relaxed)
    }
    #[setter]
    fn set_emulating(&self, v: bool) {
        self.emulating.store(v, Relaxed);
    }
    /// `patches._set_fast` set the calling thread's `fast` slot to `fast`: on the
    /// watched thread, whether the tracker is alone there now.
    fn thread_fast(&self, py: Python<'_>, fast: &Bound<'_, PyAny>) {
        if current_thread() == self.thread {
            let alone = self
                .refs
                .as_ref()
                .is_some_and(|r| fast.is(r.tracker.bind(py)));
            self.alone.store(alone, Relaxed);
        }
    }
    #[getter]
    fn quick(&self) -> bool {
        self.quick.load(Relaxed)
    }
    #[setter]
    fn set_quick(&self, v: bool) {
        self.quick.store(v, Relaxed);
    }
    #[getter]
    fn boundary(&self) -> i64 {
        self.boundary.load(Relaxed)
    }
    #[setter]
    fn set_boundary(&self, v: i64) {
        self.boundary.store(v, Relaxed);
    }
    #[getter]
    fn next_open(&self) -> i64 {
        self.next_open.load(Relaxed)
    }
    #[setter]
    fn set_next_open(&self, v: i64) {
        self.next_open.store(v, Relaxed);
    }
    #[getter]
    fn barriers(&self) -> u64 {
        self.barriers.load(Relaxed)
    }
    #[getter]
    fn logged(&self) -> usize {
        self.logged.load(Relaxed)
    }
    #[setter]
    fn set_logged(&self, v: usize) {
        self.logged.store(v, Relaxed);
    }

    /// The barrier's bookkeeping, for `AlwaysOnTracker._barrier` once it has checked
    /// that the calling thread is the watched one and the tracker owns its events.
    fn barrier(&self, py: Python<'_>) {
        self.guard(py, "barrier", |r| {
            let hazards = Self::hazard_count(py, r)?;
            self.barrier_checked(py, r, hazards)
        });
    }

    // -- the Watcher methods of patches.py and virtual.py ------------------------------

    fn on_stream_wait(&self, py: Python<'_>, waiter: &Bound<'_, PyAny>, waited: &Bound<'_, PyAny>) {
        self.guard(py, "wait_stream", |r| {
            let (a, b) = (handle_arg(waiter, "waiter")?, handle_arg(waited, "waited")?);
            if (a | b) & CUDA_TAG != 0 {
                Self::name_if_cuda(py, r, waiter, a)?;
                Self::name_if_cuda(py, r, waited, b)?;
            }
            Self::apply(py, r, Ev::StreamWait(a, b))
        });
    }

    fn on_event_record(&self, py: Python<'_>, event: &Bound<'_, PyAny>, stream: &Bound<'_, PyAny>) {
        self.guard(py, "event_record", |r| {
            let (e, s) = (handle_arg(event, "event")?, handle_arg(stream, "stream")?);
            Self::name_if_cuda(py, r, stream, s)?;
            Self::apply(py, r, Ev::EventRecord(e, s))
        });
    }

    fn on_event_wait(&self, py: Python<'_>, event: &Bound<'_, PyAny>, stream: &Bound<'_, PyAny>) {
        self.guard(py, "event_wait", |r| {
            let (e, s) = (handle_arg(event, "event")?, handle_arg(stream, "stream")?);
            Self::name_if_cuda(py, r, stream, s)?;
            Self::apply(py, r, Ev::EventWait(e, s))
        });
    }

    fn on_stream_query(&self, py: Python<'_>, stream: &Bound<'_, PyAny>, complete: bool) {
        self.guard(py, "stream_query", |r| {
            let s = handle_arg(stream, "stream")?;
            Self::name_if_cuda(py, r, stream, s)?;
            Self::apply(py, r, Ev::StreamQuery(s, complete))
        });
    }

    fn on_event_query(&self, py: Python<'_>, event: &Bound<'_, PyAny>, complete: bool) {
        self.guard(py, "event_query", |r| {
            let e = handle_arg(event, "event")?;
            Self::apply(py, r, Ev::EventQuery(e, complete))
        });
    }

    fn on_stream_sync(&self, py: Python<'_>, stream: &Bound<'_, PyAny>) {
        self.sync_then_barrier(py, "stream_synchronize", |r| {
            let s = handle_arg(stream, "stream")?;
            Self::name_if_cuda(py, r, stream, s)?;
            Ok(Ev::StreamSync(s))
        });
    }

    fn on_event_sync(&self, py: Python<'_>, event: &Bound<'_, PyAny>) {
        self.sync_then_barrier(py, "event_synchronize", |_| {
            Ok(Ev::EventSync(handle_arg(event, "event")?))
        });
    }

    fn on_device_sync(&self, py: Python<'_>) {
        self.sync_then_barrier(py, "device_synchronize", |_| Ok(Ev::DeviceSync));
    }

    /// Whether `t.record_stream(...)` has nothing to record: called on the watched
    /// thread, outside patched calls, with the tracker alone there, and `t`'s storage is
    /// not one it tracks (allocated outside a window). False when unsure: the patched
    /// method's Python path then decides.
    fn skips_record(&self, py: Python<'_>, t: &Bound<'_, PyAny>) -> bool {
        let Some(r) = &self.refs else { return false };
        if self.adopt_unseen || !self.active.load(Relaxed) || current_thread() != self.thread {
            return false;
        }
        let check = || -> PyResult<bool> {
            let ts = r.tstate.bind(py);
            if let Some(d) = ts.get_item(intern!(py, "depth"))? {
                if d.is_truthy()? {
                    return Ok(false);
                }
            }
            if !self.alone() {
                return Ok(false);
            }
            let recs = r.recs.bind(py);
            if recs.is_empty() {
                // No storage tracked at all, the common case between windows (over
                // 99% of the training loop's record_stream calls): nothing to look up,
                // and no storage object is built for a tensor that had none.
                return Ok(true);
            }
            let st = t.call_method0(intern!(py, "untyped_storage"))?;
            // id(storage): the object's address, as CPython's id() gives it
            Ok(!recs.contains(st.as_ptr() as usize)?)
        };
        check().unwrap_or(false)
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        if let Some(r) = &self.refs {
            visit.call(&r.engine)?;
            if let Some(n) = &r.native {
                visit.call(n)?;
            }
            visit.call(&r.tracker)?;
            visit.call(&r.tstate)?;
            visit.call(&r.vcur)?;
            visit.call(&r.host_marks)?;
            visit.call(&r.named)?;
            visit.call(&r.recs)?;
        }
        Ok(())
    }

    fn __clear__(&mut self) {
        self.refs = None;
    }
}

// ----- `Tensor.item()`, compiled -------------------------------------------------------
//
// `.item()` is the one sync many loops have (`loss.item()`), and it dispatches
// `_local_scalar_dense` only to a dispatch mode, so outside windows it is invisible. While
// an always-on tracker runs, `torch.Tensor.item` is replaced by a method descriptor made
// here (`item_method`): a C method of `torch._C.TensorBase`, as torch's own is, so that
// `t.item()` is called with no bound method and no Python frame. It calls torch's `item`
// first, then, when hooks are set (`set_item_hooks`), `AlwaysOnHooks::after_item`.

/// `TensorBase.is_cpu`'s descriptor and its `tp_descr_get` (both held for the process,
/// set by `item_method`): `t.is_cpu` without the attribute lookup through `Tensor`'s MRO.
static IS_CPU: std::sync::OnceLock<(usize, usize)> = std::sync::OnceLock::new();

/// `t.is_cpu`.
#[inline]
fn is_cpu(py: Python<'_>, t: &Bound<'_, PyAny>) -> PyResult<bool> {
    let Some(&(descr, get)) = IS_CPU.get() else {
        return t.getattr(intern!(py, "is_cpu"))?.is_truthy();
    };
    // SAFETY: `get` is the descr_get slot of `descr`'s type, both kept alive for the
    // process; the getter checks that `t` is a TensorBase and raises if not
    let v = unsafe {
        let get: ffi::descrgetfunc = std::mem::transmute(get);
        get(
            descr as *mut ffi::PyObject,
            t.as_ptr(),
            std::ptr::null_mut(),
        )
    };
    // SAFETY: a new reference, or null with the error set
    let v = unsafe { Bound::from_owned_ptr_or_err(py, v) }?;
    v.is_truthy()
}

/// torch's own `item` (a method descriptor), held once `item_method` made ours.
static ITEM_ORIG: AtomicPtr<ffi::PyObject> = AtomicPtr::new(std::ptr::null_mut());
/// The hooks `.item()` reports to (a strong reference), or null; changed under the GIL.
static ITEM_HOOKS: AtomicPtr<ffi::PyObject> = AtomicPtr::new(std::ptr::null_mut());

unsafe extern "C" fn item_impl(
    slf: *mut ffi::PyObject,
    _: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    let orig = ITEM_ORIG.load(Relaxed);
    // SAFETY: called by CPython with the GIL held and `slf` a TensorBase; `orig` is a
    // strong reference kept for the life of the process. The varargs call passes its
    // arguments on the stack to the descriptor's vectorcall (no tuple is built).
    let result = unsafe {
        ffi::PyObject_CallFunctionObjArgs(orig, slf, std::ptr::null_mut::<ffi::PyObject>())
    };
    if result.is_null() || ITEM_HOOKS.load(Relaxed).is_null() {
        return result; // torch raised (its error goes to the caller), or no tracker
    }
    // SAFETY: the GIL is held (see above)
    let py = unsafe { Python::assume_attached() };
    // SAFETY: a non-null ITEM_HOOKS is a strong reference to an AlwaysOnHooks; a clone
    // keeps it alive even if the hook's Python path removes it meanwhile
    let hooks = unsafe { Bound::from_borrowed_ptr(py, ITEM_HOOKS.load(Relaxed)) };
    let t = unsafe { Bound::from_borrowed_ptr(py, slf) };
    if let Ok(h) = hooks.cast::<AlwaysOnHooks>() {
        // a shared borrow, as a call of the `after_item` method takes
        if let Ok(h) = h.try_borrow() {
            h.after_item(py, &t);
        }
    }
    if let Some(e) = PyErr::take(py) {
        // after_item hands its failures to the tracker; whatever escaped that is
        // printed as unraisable, never raised into the program's `.item()`
        e.write_unraisable(py, Some(&t));
    }
    result
}

/// Makes the compiled `Tensor.item` (once per process: `base` is `torch._C.TensorBase`,
/// `orig` its `item`). Later calls return a new descriptor of the same method.
#[pyfunction]
pub fn item_method(base: &Bound<'_, PyType>, orig: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
    let py = base.py();
    if !orig.is_callable() {
        return Err(PyTypeError::new_err("orig must be torch's Tensor.item"));
    }
    let held = ITEM_ORIG.load(Relaxed);
    if held.is_null() {
        ITEM_ORIG.store(orig.clone().into_ptr(), Relaxed); // held for the process
    } else if held != orig.as_ptr() {
        return Err(PyValueError::new_err(
            "item_method was made for another Tensor.item; it is made once per process",
        ));
    }
    if IS_CPU.get().is_none() {
        // without it (a base with no `is_cpu`), `is_cpu` takes the attribute lookup
        if let Ok(d) = base.getattr("is_cpu") {
            // SAFETY: a valid object's type; PyType_GetSlot reads static types from 3.10
            let get =
                unsafe { ffi::PyType_GetSlot(ffi::Py_TYPE(d.as_ptr()), ffi::Py_tp_descr_get) };
            if !get.is_null() {
                let _ = IS_CPU.set((d.into_ptr() as usize, get as usize)); // held
            }
        }
    }
    static DEF: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    let def = *DEF.get_or_init(|| {
        let doc = orig
            .getattr("__doc__")
            .ok()
            .and_then(|d| d.extract::<String>().ok())
            .map(|d| {
                format!(
                    "{d}\n\n(esper_lifetimes: while an always-on tracker runs, this is its \
                     compiled wrapper of torch's item(), which reports the blocking read.)"
                )
            })
            .and_then(|d| std::ffi::CString::new(d).ok());
        let def = Box::new(ffi::PyMethodDef {
            ml_name: c"item".as_ptr(),
            ml_meth: ffi::PyMethodDefPointer {
                PyCFunction: item_impl,
            },
            ml_flags: ffi::METH_NOARGS,
            ml_doc: doc.map_or(std::ptr::null(), |d| d.into_raw()),
        });
        Box::into_raw(def) as usize // kept for the process: CPython keeps pointing at it
    });
    // SAFETY: a valid type and a PyMethodDef that lives for the process
    let d = unsafe { ffi::PyDescr_NewMethod(base.as_type_ptr(), def as *mut ffi::PyMethodDef) };
    // SAFETY: a new reference, or null with the error set
    unsafe { Bound::from_owned_ptr_or_err(py, d) }.map(Bound::unbind)
}

/// The hooks the compiled `Tensor.item` reports to (None: none; it then only calls
/// torch's).
#[pyfunction]
#[pyo3(signature = (hooks))]
pub fn set_item_hooks(hooks: Option<&Bound<'_, AlwaysOnHooks>>) {
    let new = hooks.map_or(std::ptr::null_mut(), |h| h.clone().into_any().into_ptr());
    let old = ITEM_HOOKS.swap(new, Relaxed);
    if !old.is_null() {
        // SAFETY: the strong reference stored by an earlier call; the GIL is held
        unsafe { ffi::Py_DECREF(old) };
    }
}
