'use strict';
// The Node.js runtime of lambda-microservice workers, started as
// `node -e <this file> <output limit in bytes>`.
//
// Protocol: one JSON request per line on stdin,
//   {"id","scope","hash","script","params","context"}
// one JSON response per line on fd 1,
//   {"id","ok":true,"result","logs"} or {"id","ok":false,"error":{name,message,stack,line},"logs"}
// plus `"recycle":true` when the process should not be trusted with another job.
// `{"ready":true}` is written once at start. Nothing else may reach fd 1.

const fs = require('fs');
const readline = require('readline');
const util = require('util');
const vm = require('vm');

const OUTPUT_LIMIT = Number(process.argv[1]) || 1024 * 1024;
const CACHE_LIMIT = 256;
// Deepest nesting of arrays and objects a result may have.
const MAX_DEPTH = 100;
const SCRIPT_FILE = 'script.js';
const scriptRequire = require;

// Scripts get `require` as an argument, not as a global of the eval context.
for (const name of ['require', 'module', 'exports', '__filename', '__dirname']) {
  delete globalThis[name];
}

function writeLine(text) {
  const buffer = Buffer.from(text + '\n');
  let offset = 0;
  while (offset < buffer.length) {
    try {
      offset += fs.writeSync(1, buffer, offset);
    } catch (e) {
      if (e.code !== 'EAGAIN') throw e;
    }
  }
}

// Stray writes to stdout (process.stdout.write, the original console) go to
// stderr, so they cannot corrupt the protocol.
Object.defineProperty(process, 'stdout', {
  configurable: true,
  enumerable: true,
  get: () => process.stderr,
});

let current = null; // The job being run: {id, logs, logBytes, truncated, done}.

// Lone surrogates would make the logs, an error or a result JSON that
// storage refuses; logs and errors get U+FFFD in their place.
function wellFormed(text) {
  return String(text).toWellFormed();
}

function capture(...args) {
  const text = wellFormed(util.format(...args));
  if (current === null) {
    process.stderr.write(text + '\n');
    return;
  }
  if (current.truncated) return;
  const bytes = Buffer.byteLength(text);
  if (current.logBytes + bytes > OUTPUT_LIMIT) {
    current.truncated = true;
    current.logs.push('[logs truncated]');
    return;
  }
  current.logBytes += bytes;
  current.logs.push(text);
}
for (const level of ['log', 'info', 'warn', 'error', 'debug', 'trace']) {
  console[level] = capture;
}

// Each scope (a session, or a job without one) runs its scripts in a V8
// context of its own, so scripts never see each other's globals or
// prototypes; runs of one session share theirs, as a warm function does.
// Not a security boundary: the OS sandbox around this process is.
const SCOPE_LIMIT = 64;
const scopes = new Map(); // scope -> {context, parse, handlers}, oldest first.

function touch(map, key, value, limit) {
  map.delete(key);
  map.set(key, value);
  if (map.size > limit) map.delete(map.keys().next().value);
}

function newScope() {
  const context = vm.createContext({
    console,
    process,
    setTimeout, clearTimeout, setInterval, clearInterval, setImmediate, clearImmediate,
    queueMicrotask, structuredClone, atob, btoa,
    Buffer, URL, URLSearchParams, TextEncoder, TextDecoder, AbortController,
  });
  return { context, parse: vm.runInContext('JSON.parse', context), handlers: new Map() };
}

function scopeFor(name) {
  const scope = scopes.get(name) || newScope();
  touch(scopes, name, scope, SCOPE_LIMIT);
  return scope;
}

// The script is wrapped in a function whose first line is the wrapper, so
// `lineOffset: -1` makes stack traces count the script's own lines.
function evaluate(scope, head, script) {
  return vm.runInContext(head + '\n' + script + '\n})', scope.context, {
    filename: SCRIPT_FILE,
    lineOffset: -1,
  });
}

function compile(scope, script) {
  if (/module\.exports|exports\./.test(script)) {
    const module = vm.runInContext('({exports: {}})', scope.context);
    evaluate(scope, '(function (module, exports, require) {', script)(module, module.exports, scriptRequire);
    const exported = module.exports;
    if (exported && typeof exported.handler === 'function') return exported.handler;
    if (typeof exported === 'function') return exported;
    throw new TypeError('module does not export a handler');
  }
  return evaluate(scope, '(async function (event, context, require) {', script);
}

function handlerFor(scope, hash, script) {
  let handler = scope.handlers.get(hash);
  if (handler === undefined) handler = compile(scope, script);
  touch(scope.handlers, hash, handler, CACHE_LIMIT);
  return handler;
}

function describe(error) {
  // Errors thrown in a script's context are not `instanceof Error` here.
  if (!util.types.isNativeError(error) && !(error instanceof Object && 'stack' in error)) {
    return { name: 'Error', message: wellFormed(error), stack: null, line: null };
  }
  const stack = String(error.stack || '');
  const frames = stack.split('\n').filter((l) => !/^\s+at /.test(l) || l.includes(SCRIPT_FILE));
  const match = /script\.js:(\d+):\d+/.exec(stack);
  const line = match ? Number(match[1]) : null;
  return {
    name: wellFormed(error.name || 'Error'),
    message: wellFormed(error.message),
    stack: wellFormed(frames.join('\n')),
    line: line !== null && line > 0 ? line : null,
  };
}

function finish(job, fields, recycle) {
  if (job.done) return;
  job.done = true;
  if (current === job) current = null;
  const tail = ',"logs":' + JSON.stringify(job.logs) + (recycle ? ',"recycle":true}' : '}');
  writeLine('{"id":' + job.id + fields + tail);
}

function fail(job, error, recycle) {
  finish(job, ',"ok":false,"error":' + JSON.stringify(describe(error)), recycle);
}

function serialise(result) {
  let json;
  try {
    json = JSON.stringify(result === undefined ? null : result);
  } catch (e) {
    throw new TypeError('result is not JSON-serialisable: ' + e.message);
  }
  if (json === undefined) {
    throw new TypeError('result is not JSON-serialisable: ' + typeof result);
  }
  const bytes = Buffer.byteLength(json);
  if (bytes > OUTPUT_LIMIT) {
    throw new RangeError(`result too large: ${bytes} bytes, the limit is ${OUTPUT_LIMIT}`);
  }
  // JSON.stringify escapes a lone surrogate as \udXXX (an odd number of
  // backslashes before the u): valid JSON that no storage keeps faithfully.
  if (/(?<!\\)(?:\\\\)*\\u[dD][89a-fA-F][0-9a-fA-F]{2}/.test(json)) {
    throw new TypeError('result holds a lone surrogate (half of a UTF-16 pair): not valid Unicode');
  }
  const depth = nesting(json);
  if (depth > MAX_DEPTH) {
    throw new RangeError(`result nested too deeply: ${depth} levels, the limit is ${MAX_DEPTH}`);
  }
  return json;
}

// How deeply the arrays and objects of JSON text nest.
function nesting(json) {
  let deepest = 0;
  let depth = 0;
  if (json.length < MAX_DEPTH * 2) return 0;
  const tokens = /"(?:[^"\\]|\\.)*"|[[\]{}]/g;
  for (let match = tokens.exec(json); match !== null; match = tokens.exec(json)) {
    const c = match[0];
    if (c === '[' || c === '{') {
      depth += 1;
      if (depth > deepest) deepest = depth;
    } else if (c === ']' || c === '}') {
      depth -= 1;
    }
  }
  return deepest;
}

// Timers and handles alive now, by kind ('Timeout', 'TCPWrap', …). Requests
// in flight ('FSReqPromise', 'CloseReq', …) are left out: an awaited one may
// still be closing when the job ends.
const REQUEST = /Req|WriteWrap|ShutdownWrap/;
function resources() {
  const counts = new Map();
  for (const kind of process.getActiveResourcesInfo()) {
    if (!REQUEST.test(kind)) counts.set(kind, (counts.get(kind) || 0) + 1);
  }
  return counts;
}

// Whether the script left something that would run later (a timer, an
// interval, a worker thread, a pending request): the process is replaced
// rather than let it run into a later job.
function leftBehind(before) {
  for (const [kind, count] of resources()) {
    if (count > (before.get(kind) || 0)) return true;
  }
  return false;
}

async function run(request) {
  const job = { id: request.id, logs: [], logBytes: 0, truncated: false, done: false };
  current = job;
  const before = resources();
  try {
    const scope = scopeFor(request.scope);
    const handler = handlerFor(scope, request.hash, request.script);
    const event = scope.parse(JSON.stringify({ params: request.params, context: request.context }));
    const result = await handler(event, event.context, scriptRequire);
    finish(job, ',"ok":true,"result":' + serialise(result), leftBehind(before));
  } catch (error) {
    fail(job, error, leftBehind(before));
  }
}

// An error that escapes the handler (a throw in a timer, a rejection nobody
// awaits) fails the job it happened during; that process may still be running
// leftovers of the script, so it asks to be replaced.
function escaped(error) {
  if (current !== null) {
    fail(current, error, true);
  } else {
    process.stderr.write('error outside a job: ' + util.inspect(error) + '\n');
  }
}
process.on('uncaughtException', escaped);
process.on('unhandledRejection', escaped);

async function main() {
  // libuv starts its thread pool on first use; started now, its threads
  // count among the process's own, not as threads a script left behind.
  await fs.promises.stat('.');
  writeLine('{"ready":true}');
  const lines = readline.createInterface({ input: process.stdin, crlfDelay: Infinity });
  for await (const line of lines) {
    await run(JSON.parse(line));
  }
}

main().then(
  () => process.exit(0),
  (error) => {
    process.stderr.write('runner failed: ' + util.inspect(error) + '\n');
    process.exit(70);
  },
);
