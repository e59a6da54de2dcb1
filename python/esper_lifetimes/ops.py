"""Op codes of the engine's bulk path, `Engine.replay(array)` (docs/ENGINE-API.md).

Each row of the int64 array is `[op, a, b, c]`.
"""

ALLOC = 0  # ptr, nbytes, stream
READ = 1  # ptr, nbytes, stream
WRITE = 2  # ptr, nbytes, stream
FREE = 3  # ptr
RECORD_STREAM = 4  # ptr, stream
EVENT_RECORD = 5  # event, stream
EVENT_WAIT = 6  # event, stream
STREAM_WAIT = 7  # waiter, waited
STREAM_SYNC = 8  # stream
EVENT_SYNC = 9  # event
DEVICE_SYNC = 10

NAMES = {
    ALLOC: "ALLOC",
    READ: "READ",
    WRITE: "WRITE",
    FREE: "FREE",
    RECORD_STREAM: "RECORD_STREAM",
    EVENT_RECORD: "EVENT_RECORD",
    EVENT_WAIT: "EVENT_WAIT",
    STREAM_WAIT: "STREAM_WAIT",
    STREAM_SYNC: "STREAM_SYNC",
    EVENT_SYNC: "EVENT_SYNC",
    DEVICE_SYNC: "DEVICE_SYNC",
}
