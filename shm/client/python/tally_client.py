"""Report AI workload usage to the tally node agent, from Python (ctypes over libtally-client.so).

    import tally_client
    with tally_client.Client("my-inference-server") as tally:
        chat = tally.intern(tenant="acme", model="llama-3-70b", use_case="chat")
        tally.record(chat, tokens_in=812, tokens_out=230, ttft_ns=41_000_000, duration_ns=900_000_000,
                     gpu_time_ns=610_000_000)
        tally.add(chat, tally_client.TOKENS_IN, 10)

Same contract as the C API (tally/client.h): nothing here raises because of the agent, blocks on it, or fails
the workload; with no agent every call counts in the client's own memory, and the client attaches when an agent
appears and hands it over. os.fork() and multiprocessing's fork start method are safe: a child registers as its
own process, and its label handles stay valid.
The library is found through $TALLY_CLIENT_LIBRARY, else as libtally-client.so.1 on the loader's path.
"""

import ctypes
import os

TOKENS_IN, TOKENS_OUT, CACHED_TOKENS, REQUESTS, ERRORS, GPU_TIME_NS, TOOL_CALLS = range(7)
USER_COUNTER_0 = 8
COUNTER_INVALID = 0xFFFF
KV_CACHE_BYTES, CONTEXT_TOKENS = 0, 1
ALLOW, THROTTLE, DENY, DEGRADE = 0, 1, 2, 3
REASON_NONE, REASON_NO_AGENT, REASON_LABELS_REFUSED, REASON_BUDGET, REASON_POLICY = range(5)


class _Label(ctypes.Structure):
    _fields_ = [("key", ctypes.c_char_p), ("value", ctypes.c_char_p)]


class _Request(ctypes.Structure):
    _fields_ = [("tokens_in", ctypes.c_uint64), ("tokens_out", ctypes.c_uint64), ("ttft_ns", ctypes.c_uint64),
                ("duration_ns", ctypes.c_uint64), ("gpu_time_ns", ctypes.c_uint64),
                ("tool_calls", ctypes.c_uint32), ("status", ctypes.c_uint32)]


class _Admission(ctypes.Structure):
    _fields_ = [("decision", ctypes.c_int), ("reason", ctypes.c_uint32)]


def _load():
    lib = ctypes.CDLL(os.environ.get("TALLY_CLIENT_LIBRARY", "libtally-client.so.1"))
    lib.tally_open.restype = ctypes.c_void_p
    lib.tally_open.argtypes = [ctypes.c_char_p]
    lib.tally_close.argtypes = [ctypes.c_void_p]
    lib.tally_intern.restype = ctypes.c_uint32
    lib.tally_intern.argtypes = [ctypes.c_void_p, ctypes.POINTER(_Label), ctypes.c_size_t]
    lib.tally_register_counter.restype = ctypes.c_int
    lib.tally_register_counter.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    lib.tally_add.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint64]
    lib.tally_set.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint64]
    lib.tally_record.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.POINTER(_Request)]
    lib.tally_admit.restype = _Admission
    lib.tally_admit.argtypes = [ctypes.c_void_p, ctypes.c_uint32]
    lib.tally_reserve.restype = ctypes.c_int
    lib.tally_reserve.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint64]
    lib.tally_commit.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint64, ctypes.c_uint64]
    lib.tally_attached.restype = ctypes.c_int
    lib.tally_attached.argtypes = [ctypes.c_void_p]
    lib.tally_dropped.restype = ctypes.c_uint64
    lib.tally_dropped.argtypes = [ctypes.c_void_p]
    lib.tally_last_error.restype = ctypes.c_char_p
    lib.tally_last_error.argtypes = [ctypes.c_void_p]
    return lib


_lib = _load()


class Client:
    """One tally client (one segment). Use it from any number of threads."""

    def __init__(self, workload_name: str):
        self._client = _lib.tally_open(workload_name.encode())

    def close(self):
        if self._client:
            _lib.tally_close(self._client)
            self._client = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def intern(self, **labels) -> int:
        """A handle for this label set (0 when malformed), e.g. intern(tenant="acme", model="llama")."""
        items = (_Label * len(labels))(*[_Label(k.encode(), str(v).encode()) for k, v in labels.items()])
        return _lib.tally_intern(self._client, items, len(labels))

    def counter(self, name: str) -> int:
        """Registers a user-named counter once; returns its id (COUNTER_INVALID when malformed or full)."""
        return _lib.tally_register_counter(self._client, name.encode())

    def add(self, labels: int, counter: int, value: int = 1):
        _lib.tally_add(self._client, labels, counter, value)

    def set(self, labels: int, gauge: int, value: int):
        _lib.tally_set(self._client, labels, gauge, value)

    def record(self, labels: int, tokens_in=0, tokens_out=0, ttft_ns=0, duration_ns=0, gpu_time_ns=0,
               tool_calls=0, status=0):
        request = _Request(tokens_in, tokens_out, ttft_ns, duration_ns, gpu_time_ns, tool_calls, status)
        _lib.tally_record(self._client, labels, ctypes.byref(request))

    def admit(self, labels: int):
        """(decision, reason): ALLOW, THROTTLE, DENY or DEGRADE as the agent decided for this label set. The
        tally_reason is reason & 0xFF; for DEGRADE, (reason >> 8) & 0xFFFF is the largest max_tokens a request
        should ask for (0: no cap)."""
        a = _lib.tally_admit(self._client, labels)
        return a.decision, a.reason

    def reserve(self, labels: int, counter: int, amount: int) -> bool:
        """Before the work: holds `amount` of the label set's allowance for `counter`. False when refused (the
        budget is spent for now); True when granted, or when no budget governs it or no agent is attached."""
        return _lib.tally_reserve(self._client, labels, counter, amount) != 0

    def commit(self, labels: int, counter: int, reserved: int, used: int):
        """After the work: adds `used` to the counter (do not add it again) and gives back what was reserved and
        not used. Once per granted reserve, with its amount."""
        _lib.tally_commit(self._client, labels, counter, reserved, used)

    @property
    def attached(self) -> bool:
        return _lib.tally_attached(self._client) != 0

    @property
    def dropped(self) -> int:
        return _lib.tally_dropped(self._client)

    @property
    def last_error(self) -> str:
        return (_lib.tally_last_error(self._client) or b"").decode(errors="replace")
