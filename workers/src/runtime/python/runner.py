# The Python runtime of lambda-microservice workers, started as
# `python3 -I -S -B -u -c <this file> <output limit in bytes> <memory limit in MiB>`.
#
# Protocol: one JSON request per line on stdin,
#   {"id","hash","script","params","context"}
# one JSON response per line on the original fd 1,
#   {"id","ok":true,"result","logs"} or {"id","ok":false,"error":{name,message,line,stack},"logs"}
# plus `"recycle":true` when the process should not be trusted with another job,
# and `"code":"MEMORY_LIMIT"` in the error when the script ran out of memory.
# `{"ready":true}` is written once at start. Nothing else reaches that fd.
#
# Script contract: top-level code that sees `params`, `context` and `event` and
# sets `result`; or a module defining `lambda_handler(event, context)` or
# `handle(params)`. A handler may be `async def`; top-level code may `await`.

import collections
import collections.abc
import io
import json
import linecache
import os
import re
import resource
import sys
import threading
import traceback

import _signal

OUTPUT_LIMIT = int(sys.argv[1]) if len(sys.argv) > 1 else 1024 * 1024
MEMORY_MB = int(sys.argv[2]) if len(sys.argv) > 2 else 0
CACHE_LIMIT = 256
MESSAGE_LIMIT = 16 * 1024  # Characters of an error's message, and of its stack.
MAX_DEPTH = 100  # Deepest nesting of arrays and objects a result may have.
TOKENS = re.compile(rb'"(?:[^"\\]|\\.)*"|[\[\]{}]')
ITIMERS = (_signal.ITIMER_REAL, _signal.ITIMER_VIRTUAL, _signal.ITIMER_PROF)
FILENAME = "<script>"
TRUNCATED = b'"[logs truncated]"'
# ast.PyCF_ALLOW_TOP_LEVEL_AWAIT and inspect.CO_COROUTINE, without importing
# ast, inspect and asyncio at start (most scripts never need them).
ALLOW_TOP_LEVEL_AWAIT = 0x2000
CO_COROUTINE = 0x0080
encode_string = json.encoder.encode_basestring

# The protocol travels on private duplicates of fd 0 and 1 taken before any
# script runs; fd 1 then becomes a copy of fd 2 and fd 0 reads /dev/null, so
# neither print(), os.write(1, ...) nor reading stdin can touch the protocol.
requests = os.fdopen(os.dup(0), "rb")
responses = os.fdopen(os.dup(1), "wb")
os.dup2(2, 1)
_null = os.open(os.devnull, os.O_RDONLY)
os.dup2(_null, 0)
os.close(_null)
stdin = open(os.devnull, "r")

current = None  # The Job being run.


def clean(text):
    """`text` as valid UTF-8 (lone surrogates replaced)."""
    return text.encode("utf-8", "replace").decode("utf-8")


class Job:
    """One request being run and the log lines it printed, bounded."""

    def __init__(self, request_id):
        self.id = int(request_id)
        self.logs = []  # Each line as a UTF-8 JSON string literal.
        self.size = 0
        self.pending = []  # The unfinished last line.
        self.pending_size = 0
        self.truncated = False

    def write(self, text):
        if self.truncated or not text:
            return
        *complete, rest = text.split("\n")
        if complete:
            complete[0] = "".join(self.pending) + complete[0]
            self.pending, self.pending_size = [], 0
            for line in complete:
                self.log(line)
        if rest and not self.truncated:
            self.pending.append(rest)
            self.pending_size += len(rest)
            if self.pending_size > OUTPUT_LIMIT:
                self.end_line()

    def end_line(self):
        if self.pending:
            line = "".join(self.pending)
            self.pending, self.pending_size = [], 0
            self.log(line)

    def log(self, line):
        if self.truncated:
            return
        quoted = encode_string(line).encode("utf-8", "replace")
        if self.size + len(quoted) > OUTPUT_LIMIT:
            self.truncated = True
            self.logs.append(TRUNCATED)
            return
        self.size += len(quoted) + 1
        self.logs.append(quoted)

    def logs_json(self):
        self.end_line()
        return b"[" + b",".join(self.logs) + b"]"


class Capture(io.TextIOBase):
    """sys.stdout and sys.stderr of scripts: writes become the job's log lines."""

    encoding = "utf-8"
    errors = "strict"

    def __init__(self, name):
        self._name = name

    @property
    def name(self):
        return self._name

    def writable(self):
        return True

    def write(self, text):
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        if current is None:
            os.write(2, clean(text).encode("utf-8"))
        else:
            current.write(text)
        return len(text)


stdout, stderr = Capture("<stdout>"), Capture("<stderr>")

cache = collections.OrderedDict()  # hash -> code object, oldest first.


def compiled(script_hash, script):
    code = cache.get(script_hash)
    if code is None:
        code = compile(script, FILENAME, "exec", flags=ALLOW_TOP_LEVEL_AWAIT, dont_inherit=True)
        cache[script_hash] = code
        if len(cache) > CACHE_LIMIT:
            cache.popitem(last=False)
    else:
        cache.move_to_end(script_hash)
    return code


loop = None  # The process's asyncio event loop, made by the first async script.


def wait_for(awaitable):
    """Runs a coroutine of the script on the process's event loop."""
    global loop
    if loop is None or loop.is_closed():
        import asyncio

        loop = asyncio.new_event_loop()
    return loop.run_until_complete(awaitable)


def tasks_left():
    """Whether the script left asyncio tasks that would run during a later job."""
    if loop is None or loop.is_closed():
        return False
    import asyncio

    return bool(asyncio.all_tasks(loop))


def call(code, params, context):
    event = {"params": params, "context": context}
    namespace = {
        "__name__": "__script__",
        "__builtins__": __builtins__,
        "params": params,
        "context": context,
        "event": event,
    }
    pending = eval(code, namespace)
    if code.co_flags & CO_COROUTINE:
        wait_for(pending)
    handler = namespace.get("lambda_handler")
    if callable(handler):
        value = handler(event, context)
    else:
        handler = namespace.get("handle")
        value = handler(params) if callable(handler) else namespace.get("result")
    if isinstance(value, collections.abc.Awaitable):
        value = wait_for(value)
    return value


def serialise(value):
    try:
        text = json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
        data = text.encode("utf-8")
    except (TypeError, ValueError, RecursionError, UnicodeEncodeError) as e:
        raise TypeError(f"result is not JSON-serialisable: {e}") from None
    if len(data) > OUTPUT_LIMIT:
        raise ValueError(f"result too large: {len(data)} bytes, the limit is {OUTPUT_LIMIT}")
    if data.count(b"[") + data.count(b"{") > MAX_DEPTH:
        depth = deepest = 0
        for token in TOKENS.findall(data):
            if token in (b"[", b"{"):
                depth += 1
                deepest = max(deepest, depth)
            elif token in (b"]", b"}"):
                depth -= 1
        if deepest > MAX_DEPTH:
            raise ValueError(f"result nested too deeply: {deepest} levels, the limit is {MAX_DEPTH}")
    return data


def signal_state():
    """The signal handlers now, when a script could have changed them."""
    return [_signal.getsignal(n) for n in range(1, _signal.NSIG) if n not in (9, 19)]


def timers_left():
    """Whether the script left an interval timer (`setitimer`, `alarm`) running."""
    return any(_signal.getitimer(which) != (0.0, 0.0) for which in ITIMERS)


def describe(error, script):
    """The error object of a response; frames of the runner are left out."""
    linecache.cache[FILENAME] = (len(script), None, script.splitlines(True), FILENAME)
    try:
        frames = [f for f in traceback.extract_tb(error.__traceback__) if f.filename == FILENAME]
        line = frames[-1].lineno if frames else None
        if isinstance(error, SyntaxError) and error.filename == FILENAME:
            line = error.lineno
        stack = ["Traceback (most recent call last):\n"] if frames else []
        stack += traceback.StackSummary.from_list(frames).format()
        stack += traceback.format_exception_only(type(error), error)
        message = str(error)
    except Exception as e:  # A script's exception whose __str__ itself fails.
        line, stack, message = None, [], f"<unprintable: {type(e).__name__}>"
    finally:
        del linecache.cache[FILENAME]
    return {
        "name": clean(type(error).__name__),
        "message": clip(message),
        "line": line,
        "stack": clip("".join(stack).rstrip("\n")),
    }


def clip(text):
    if len(text) > MESSAGE_LIMIT:
        text = text[:MESSAGE_LIMIT] + "… [truncated]"
    return clean(text)


def failure(error, script, code=None, message=None):
    described = describe(error, script)
    if code is not None:
        described["code"] = code
    if message is not None:
        described["message"] = message
    return b',"ok":false,"error":' + json.dumps(described, ensure_ascii=False).encode("utf-8")


def run(request):
    global current
    job = current = Job(request["id"])
    script = request.get("script", "")
    recycle = False
    try:
        code = compiled(request["hash"], script)
        value = call(code, request.get("params"), request.get("context"))
        body = b',"ok":true,"result":' + serialise(value)
    except MemoryError as e:
        recycle = True
        limit = f"script exceeded its memory limit of {MEMORY_MB} MiB"
        body = failure(e, script, "MEMORY_LIMIT", str(e) or limit)
    except BaseException as e:  # SystemExit and KeyboardInterrupt fail the job too.
        body = failure(e, script)
    finally:
        current = None
        sys.stdout, sys.stderr, sys.stdin = stdout, stderr, stdin
    # Threads, tasks, timers or signal handlers the script left behind would
    # run into the next job.
    if threading.active_count() > 1 or tasks_left() or timers_left():
        recycle = True
    elif signal_state() != handlers:
        recycle = True
    tail = b',"recycle":true}' if recycle else b"}"
    return b'{"id":%d' % job.id + body + b',"logs":' + job.logs_json() + tail


def limit_memory(megabytes):
    """Lets scripts map at most `megabytes` MiB beyond what the runner holds now."""
    if megabytes <= 0:
        return
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[0])
    limit = pages * resource.getpagesize() + megabytes * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def send(data):
    responses.write(data + b"\n")
    responses.flush()


handlers = None  # The signal handlers the runner started with.


def main():
    global handlers
    sys.stdout, sys.stderr, sys.stdin = stdout, stderr, stdin
    handlers = signal_state()
    limit_memory(MEMORY_MB)
    send(b'{"ready":true}')
    for line in requests:
        send(run(json.loads(line)))


main()
