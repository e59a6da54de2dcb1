"""Cheap capture of the user's source line for an event.

A *site* is the first frame, walking outward from the caller, whose code is not part of
torch, of esper_lifetimes, or of the few standard-library modules that stand between a
user's statement and the tracker (``weakref``, ``contextlib``, ``functools``,
``warnings``). A site is reported
as ``"path:line"``, the path relative to the working directory when it lies under it.

The hot path does no string formatting: it walks ``f_back`` links, looks the code object
up in a dict (is it internal?), and looks ``(code, f_lasti)`` up in a per-engine dict
that holds the int the engine interned for that site. Only the first time a site is seen
is its line number computed and its string built.
"""

from __future__ import annotations

import inspect
import os
import sys
import threading
import weakref
from types import CodeType, FrameType
from typing import Any

__all__ = [
    "SiteTable",
    "user_frame",
    "format_site",
    "parse_site",
    "is_internal_file",
    "ignore_file",
]


def _dir_of(module_file: str) -> str:
    return os.path.dirname(os.path.realpath(module_file)) + os.sep


def _internal_prefixes() -> tuple[str, ...]:
    prefixes = [_dir_of(__file__)]
    try:
        import torch

        prefixes.append(_dir_of(torch.__file__))
    except ImportError:  # pragma: no cover - torch is a hard requirement of tracking
        pass
    # The same directories as the interpreter may spell them (symlinks, relative paths).
    more = []
    for p in prefixes:
        more.append(os.path.abspath(p.rstrip(os.sep)) + os.sep)
    return tuple(dict.fromkeys(prefixes + more))


_PREFIXES = _internal_prefixes()
# The bundled examples (run by ``esper-lifetimes demo``) are user code inside the package.
_EXAMPLES = tuple(
    dict.fromkeys(
        os.path.join(d, "examples") + os.sep
        for d in (_dir_of(__file__), os.path.dirname(os.path.abspath(__file__)))
    )
)
_getframe = sys._getframe
_STDLIB_NAMES = frozenset(
    {
        "weakref.py",
        "contextlib.py",
        "functools.py",
        "_weakrefset.py",
        "warnings.py",
    }
)
_STDLIB_DIR = os.path.dirname(os.__file__) + os.sep
# File names of code that is not the user's although it is exec'd from a string.
_GENERATED = ("<frozen", "<eval_with_key>", "<torch_package_", "<torchgen")

# Code objects already classified, by id: frames to skip, and the user's. Hashing a code
# object hashes its bytecode (~0.6 us); an id is free. An id must not outlive its code
# object (a new one may get the same id): each classified code object has a weakref in
# _keep whose callback forgets its id here and in every SiteTable (_code_died). So
# nothing here keeps a code object alive: re-running a notebook cell 20,000 times leaves
# the entries of the live functions only.
_internal: set[int] = set()
_internal_gen: set[int] = set()  # internal generators/coroutines: resumed from anywhere
user_codes: set[int] = set()
_skip_lock = threading.RLock()  # reentrant: weakref callbacks may classify code


class _CodeRef(weakref.ref):  # type: ignore[type-arg]
    __slots__ = ("cid",)
    cid: int


_keep: dict[int, Any] = {}  # id -> _CodeRef (or the code itself, if it has no weakrefs)
_tables: weakref.WeakSet[SiteTable] = weakref.WeakSet()


def _code_died(ref: _CodeRef) -> None:
    """weakref callback: a classified code object died; its id may be reused."""
    try:
        cid = ref.cid
        with _skip_lock:
            if _keep.get(cid) is ref:
                del _keep[cid]
            _internal.discard(cid)
            _internal_gen.discard(cid)
            user_codes.discard(cid)
            tables = list(_tables)
        for t in tables:
            t._forget(cid)
    except Exception:  # pragma: no cover - never raise from a callback
        pass


def _remember(code: CodeType) -> None:
    cid = id(code)
    try:
        ref = _CodeRef(code, _code_died)
        ref.cid = cid
    except TypeError:  # pragma: no cover - every CPython code object has weakrefs
        ref = code
    _keep[cid] = ref


_GEN_FLAGS = (
    inspect.CO_GENERATOR | inspect.CO_COROUTINE | inspect.CO_ASYNC_GENERATOR
) | inspect.CO_ITERABLE_COROUTINE


# Files a user declared internal (their own wrappers around streams and factories).
_extra: set[str] = set()


def ignore_file(filename: str) -> None:
    """Skips the frames of ``filename`` too when looking for the user's line (for a
    project's own helpers around torch). Takes effect for code not yet seen by a
    tracker: call it before tracking starts."""
    real = os.path.realpath(os.path.abspath(filename))
    with _skip_lock:
        _extra.add(real)
        _internal.clear()
        _internal_gen.clear()
        user_codes.clear()


def is_internal_file(filename: str) -> bool:
    """Whether frames of ``filename`` are skipped when looking for the user's line."""
    if filename.startswith("<"):
        # <frozen importlib._bootstrap>, <string>, <stdin>: frozen modules are internal,
        # code typed or exec'd by the user is not. Code torch generates and execs (an
        # fx GraphModule's forward, "<eval_with_key>.0 from f.py:42 in forward") is torch's:
        # the site is the user's line that called into it.
        return filename.startswith(_GENERATED)
    real = filename if os.path.isabs(filename) else os.path.abspath(filename)
    if real.startswith(_PREFIXES):
        return not real.startswith(_EXAMPLES)
    if _extra and os.path.realpath(real) in _extra:
        return True
    if os.path.basename(real) in _STDLIB_NAMES and real.startswith(_STDLIB_DIR):
        return True
    try:
        real = os.path.realpath(real)
    except OSError:  # pragma: no cover
        return False
    return real.startswith(_PREFIXES) and not real.startswith(_EXAMPLES)


def _classify(code: CodeType) -> bool:
    internal = is_internal_file(code.co_filename)
    with _skip_lock:
        _remember(code)
        if not internal:
            user_codes.add(id(code))
        elif code.co_flags & _GEN_FLAGS:
            _internal_gen.add(id(code))
        else:
            _internal.add(id(code))
    return internal


def user_frame(depth: int = 1) -> FrameType | None:
    """The first frame outside torch and esper_lifetimes, from ``depth`` frames up
    (1: the caller of this function)."""
    try:
        f: FrameType | None = sys._getframe(depth)
    except ValueError:
        return None
    while f is not None:
        code = f.f_code
        cid = id(code)
        if cid in _internal or cid in _internal_gen:
            f = f.f_back
            continue
        if cid in user_codes or not _classify(code):
            return f
        f = f.f_back
    return None


def _relpath(filename: str) -> str:
    if filename.startswith("<"):
        return filename
    try:
        cwd = os.getcwd()
        if filename.startswith(cwd + os.sep):
            return filename[len(cwd) + 1 :]
    except OSError:  # pragma: no cover
        pass
    return filename


def format_site(filename: str, lineno: int | None) -> str:
    """``"path:line"`` as reports show it."""
    return f"{_relpath(filename)}:{lineno if lineno is not None else 0}"


def parse_site(site: str | None) -> tuple[str, int] | None:
    """Inverse of :func:`format_site`; ``None`` when ``site`` is not ``path:line``."""
    if not site:
        return None
    path, sep, line = site.rpartition(":")
    if not sep or not line.isdigit():
        return None
    return path, int(line)


class SiteMark:
    """Left in ``frame.f_trace`` of an internal frame that a walk went through: while
    that frame runs, the frames above it cannot change, so neither can the user's line
    that the walk found. The next walk that reaches the frame stops there.

    Only frames whose ``f_trace`` is ``None`` are marked, never while a trace function is
    set (a debugger, coverage), and never generator frames (resumed from anywhere). If a
    trace function is set later while a marked frame runs, it calls the mark for that
    frame's events: the mark answers ``None``, which is what the frame would have had.
    """

    __slots__ = ("table", "site")

    def __init__(self, table: SiteTable, site: int) -> None:
        self.table = table
        self.site = site

    def __call__(self, frame: Any, event: str, arg: Any) -> None:
        return None


_gettrace = sys.gettrace


class SiteTable:
    """Sites interned in one engine, keyed by the user's frame's code (by id) and
    ``f_lasti``.

    ``here(depth)`` returns the engine's int for the user's current line, looking outward
    from ``depth`` frames up (1: the caller of ``here``); ``None`` when no frame of the
    stack is the user's. The walk is a few ``f_back`` hops with one set lookup each; it
    stops early at an internal frame that an earlier walk marked (:class:`SiteMark`), so
    that the many ops an optimizer loop or a backward pass dispatch from one frame cost
    no walk at all.
    """

    __slots__ = ("_engine", "ids", "_strings", "_by_code", "__weakref__")

    def __init__(self, engine: Any) -> None:
        self._engine = engine
        self.ids: dict[int, int] = {}  # (id(code) << 24) + f_lasti -> site
        self._strings: dict[str, int] = {}
        self._by_code: dict[int, list[int]] = {}  # id(code) -> its keys in ids
        with _skip_lock:
            _tables.add(self)

    def _forget(self, cid: int) -> None:
        """The code object ``cid`` died: its keys must not match a new one's."""
        for key in self._by_code.pop(cid, ()):
            self.ids.pop(key, None)

    def here(self, depth: int = 1) -> int | None:
        try:
            f: FrameType | None = _getframe(depth)
        except ValueError:
            return None
        return self.from_frame(f)

    def from_frame(self, f: FrameType | None) -> int | None:
        """The site of the first user frame from ``f`` outward (marking on the way)."""
        pending: list[FrameType] = []
        site = None
        while f is not None:
            code = f.f_code
            cid = id(code)
            if cid in _internal:
                m = f.f_trace
                if m is None:
                    pending.append(f)
                elif m.__class__ is SiteMark:
                    if m.table is self:
                        site = m.site
                        break
                    pending.append(f)  # another tracker's mark: take it over
                f = f.f_back
                continue
            if cid in _internal_gen:
                f = f.f_back
                continue
            if cid in user_codes:
                key = (cid << 24) + f.f_lasti
                site = self.ids.get(key)
                if site is None:
                    site = self._intern_frame(key, f)
                break
            _classify(code)  # then look at the same frame again
        if pending and site is not None and _gettrace() is None:
            mark = SiteMark(self, site)
            for fr in pending:
                fr.f_trace = mark
        return site

    def here_frame(self, f: FrameType) -> int:
        """The site of user frame ``f`` (interned on first sight)."""
        key = (id(f.f_code) << 24) + f.f_lasti
        sid = self.ids.get(key)
        if sid is None:
            sid = self._intern_frame(key, f)
        return sid

    def _intern_frame(self, key: int, f: FrameType) -> int:
        sid = self.intern(format_site(f.f_code.co_filename, f.f_lineno))
        cid = id(f.f_code)
        if cid not in _keep:
            _classify(f.f_code)  # ids only for code whose death is seen
        self.ids[key] = sid
        self._by_code.setdefault(cid, []).append(key)
        return sid

    def text_of(self, site: int | None) -> str:
        """The text of interned site ``site`` ("" when it is not one of this table's)."""
        if site is None:
            return ""
        for text, sid in self._strings.items():
            if sid == site:
                return text
        return ""

    def intern(self, site: str) -> int:
        """The engine's int for a site string (cached)."""
        sid = self._strings.get(site)
        if sid is None:
            sid = self._engine.intern(site)
            self._strings[site] = sid
        return sid
