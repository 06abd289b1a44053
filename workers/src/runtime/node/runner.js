'use strict';
// The Node.js runtime of lambda-microservice workers, started as
// `node -e <this file> <output limit in bytes>`.
//
// Protocol: one JSON request per line on stdin,
//   {"id","hash","script","params","context"}
// one JSON response per line on fd 1,
//   {"id","ok":true,"result","logs"} or {"id","ok":false,"error":{name,message,stack,line},"logs"}
// plus `"recycle":true` when the process should not be trusted with another job.
// `{"ready":true}` is written once at start. Nothing else may reach fd 1.

const fs = require('fs');
const readline = require('readline');
const util = require('util');

const OUTPUT_LIMIT = Number(process.argv[1]) || 1024 * 1024;
const CACHE_LIMIT = 256;
// `new AsyncFunction(args, body)` and `new Function(args, body)` put the body
// two lines below the top of the source they compile.
const WRAPPER_LINES = 2;
const AsyncFunction = (async () => {}).constructor;
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

function capture(...args) {
  const text = util.format(...args);
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

const cache = new Map(); // hash -> handler, oldest first.

function compile(script) {
  if (/module\.exports|exports\./.test(script)) {
    const module = { exports: {} };
    new Function('module', 'exports', 'require', script)(module, module.exports, scriptRequire);
    const exported = module.exports;
    if (exported && typeof exported.handler === 'function') return exported.handler;
    if (typeof exported === 'function') return exported;
    throw new TypeError('module does not export a handler');
  }
  return new AsyncFunction('event', 'context', 'require', script);
}

function handlerFor(hash, script) {
  let handler = cache.get(hash);
  if (handler === undefined) {
    handler = compile(script);
  } else {
    cache.delete(hash);
  }
  cache.set(hash, handler);
  if (cache.size > CACHE_LIMIT) cache.delete(cache.keys().next().value);
  return handler;
}

function describe(error) {
  if (!(error instanceof Error)) {
    return { name: 'Error', message: String(error), stack: null, line: null };
  }
  const stack = String(error.stack || '');
  const frames = stack
    .split('\n')
    .filter((l) => !/^\s+at /.test(l) || l.includes('<anonymous>'));
  const match = /<anonymous>:(\d+):\d+/.exec(stack);
  const line = match ? Number(match[1]) - WRAPPER_LINES : null;
  return {
    name: String(error.name || 'Error'),
    message: String(error.message),
    stack: frames.join('\n'),
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
  return json;
}

async function run(request) {
  const job = { id: request.id, logs: [], logBytes: 0, truncated: false, done: false };
  current = job;
  try {
    const handler = handlerFor(request.hash, request.script);
    const event = { params: request.params, context: request.context };
    const result = await handler(event, request.context, scriptRequire);
    finish(job, ',"ok":true,"result":' + serialise(result), false);
  } catch (error) {
    fail(job, error, false);
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
