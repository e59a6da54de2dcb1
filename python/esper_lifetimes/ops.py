"""Op codes of the engine's bulk path, `Engine.replay(array)` (docs/ENGINE-API.md).

Each row of the int64 array is `[op, a, b, c]`. The codes are defined once, in
:data:`esper_lifetimes.vocab.BULK` (which also says which arguments a, b, c are);
this module gives them names for code that builds rows.
"""

from typing import Final

from esper_lifetimes.vocab import BULK, BULK_CODES

ALLOC: Final = BULK_CODES["ALLOC"]  # ptr, nbytes, stream
READ: Final = BULK_CODES["READ"]  # ptr, nbytes, stream
WRITE: Final = BULK_CODES["WRITE"]  # ptr, nbytes, stream
FREE: Final = BULK_CODES["FREE"]  # ptr
RECORD_STREAM: Final = BULK_CODES["RECORD_STREAM"]  # ptr, stream
EVENT_RECORD: Final = BULK_CODES["EVENT_RECORD"]  # event, stream
EVENT_WAIT: Final = BULK_CODES["EVENT_WAIT"]  # event, stream
STREAM_WAIT: Final = BULK_CODES["STREAM_WAIT"]  # waiter, waited
STREAM_SYNC: Final = BULK_CODES["STREAM_SYNC"]  # stream
EVENT_SYNC: Final = BULK_CODES["EVENT_SYNC"]  # event
DEVICE_SYNC: Final = BULK_CODES["DEVICE_SYNC"]
ADOPT: Final = BULK_CODES["ADOPT"]  # ptr, nbytes, stream
FLUSH: Final = BULK_CODES["FLUSH"]

NAMES: Final = {code: bulk.name for code, bulk in BULK.items()}
"""code -> constant name."""
