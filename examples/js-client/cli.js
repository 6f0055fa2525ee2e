#!/usr/bin/env node
'use strict';
/**
 * Command line for the continuum Node.js client (docs/protocol.md, version 1).
 *
 *   node cli.js --broker mqtt://127.0.0.1:1883 [--root continuum/v1] [--timeout MS] [--json] COMMAND ...
 *
 *   create CLASS [ARG ...] [--kwargs JSON] [--alias A] [--node N] [--replicas K]
 *   resolve REF
 *   call REF METHOD [ARG ...] [--args JSON] [--kwargs JSON]
 *   gateway METHOD [--kwargs JSON]                 (classes, nodes, objects, alias, delete ...)
 *   bench REF|--create CLASS [--calls N] [--inflight W] [--method M] [--args JSON]
 *
 * Each ARG is parsed as JSON when it can be (2, 0.5, true, "x", [1]) and taken
 * as text otherwise. Output: one JSON document per line on stdout; progress
 * updates as {"progress": VALUE, "seq": N}, then {"result": VALUE} or
 * {"error": {"code", "type", "message", ...}} (exit status 1). Byte strings
 * print as {"$bytes": "<hex>"}, integers beyond 2^53 as text.
 */

const { parseArgs } = require('node:util');
const { Client, ContinuumError } = require('./continuum');

const USAGE = `usage: node cli.js --broker URL [--root ROOT] [--timeout MS] [--json] [--client-id ID]
                   [--username U --password P] COMMAND ...
commands:
  create CLASS [ARG ...] [--kwargs JSON] [--alias A] [--node N] [--replicas K]
  resolve REF
  call REF METHOD [ARG ...] [--args JSON] [--kwargs JSON]
  gateway METHOD [--kwargs JSON]
  bench (REF | --create CLASS) [--calls N] [--inflight W] [--method M] [--args JSON] [--kwargs JSON]`;

function out(obj) {
  process.stdout.write(
    `${JSON.stringify(obj, (_k, v) => {
      if (typeof v === 'bigint') return Number.isSafeInteger(Number(v)) ? Number(v) : v.toString();
      if (v && typeof v === 'object' && v.type === 'Buffer' && Array.isArray(v.data)) {
        return { $bytes: Buffer.from(v.data).toString('hex') };
      }
      if (v instanceof Uint8Array) return { $bytes: Buffer.from(v).toString('hex') };
      if (v instanceof Map) return Object.fromEntries([...v].map(([k, x]) => [String(k), x]));
      if (v instanceof Set) return [...v];
      if (typeof v === 'number' && !Number.isFinite(v)) return String(v);
      return v;
    })}\n`,
  );
}

function parseValue(text) {
  try {
    return JSON.parse(text);
  } catch {
    return text;
  }
}

function parseJson(text, what, want) {
  let v;
  try {
    v = JSON.parse(text);
  } catch (err) {
    throw new UsageError(`${what}: not JSON (${err.message})`);
  }
  if (want === 'array' && !Array.isArray(v)) throw new UsageError(`${what} must be a JSON array`);
  if (want === 'object' && (!v || typeof v !== 'object' || Array.isArray(v))) {
    throw new UsageError(`${what} must be a JSON object`);
  }
  return v;
}

class UsageError extends Error {}

async function bench(client, pos, o) {
  let ref = pos[0];
  let start = 0;
  if (o.create) {
    const info = await client.create(o.create, { kwargs: o.kwargs ? parseJson(o.kwargs, '--kwargs', 'object') : {} });
    ref = info.id;
  } else if (!ref) {
    throw new UsageError('bench needs REF or --create CLASS');
  }
  const method = o.method ?? 'add';
  const args = o.args ? parseJson(o.args, '--args', 'array') : method === 'add' ? [1] : [];
  const calls = Number(o.calls ?? 1000);
  const inflight = Math.max(1, Number(o.inflight ?? 100));
  const info = await client.resolve(ref); // so that the timed part only talks to the node
  if (method === 'add' && args.length === 1 && args[0] === 1) {
    start = await client.call(info.id, 'get');
  }
  const results = new Array(calls);
  const errors = {};
  let next = 0;
  let ok = 0;
  const t0 = process.hrtime.bigint();
  async function worker() {
    while (next < calls) {
      const i = next++;
      try {
        results[i] = await client.call(info.id, method, { args });
        ok += 1;
      } catch (err) {
        const code = err instanceof ContinuumError ? err.code : String(err);
        errors[code] = (errors[code] || 0) + 1;
      }
    }
  }
  await Promise.all(Array.from({ length: Math.min(inflight, calls) }, worker));
  const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
  const report = {
    bench: method,
    object: info.id,
    node: info.node,
    calls,
    inflight,
    ok,
    errors,
    seconds: Number(seconds.toFixed(4)),
    calls_per_s: Math.round(calls / seconds),
  };
  if (method === 'add' && args.length === 1 && args[0] === 1) {
    // every add(1) on an object nobody else touches returns start+1 .. start+N, each once
    const seen = results.filter((v) => v !== undefined).map(Number).sort((a, b) => a - b);
    report.all_results = seen.length === calls && seen.every((v, i) => v === start + i + 1);
    report.in_order = results.every((v, i) => Number(v) === start + i + 1);
    report.final = start + calls;
  }
  out(report);
  return ok === calls && report.all_results !== false;
}

async function main(argv) {
  const { values: o, positionals: pos } = parseArgs({
    args: argv,
    allowPositionals: true,
    strict: true,
    options: {
      broker: { type: 'string' },
      root: { type: 'string' },
      timeout: { type: 'string' },
      json: { type: 'boolean' },
      'client-id': { type: 'string' },
      username: { type: 'string' },
      password: { type: 'string' },
      args: { type: 'string' },
      kwargs: { type: 'string' },
      alias: { type: 'string' },
      node: { type: 'string' },
      replicas: { type: 'string' },
      calls: { type: 'string' },
      inflight: { type: 'string' },
      method: { type: 'string' },
      create: { type: 'string' },
      verbose: { type: 'boolean' },
      help: { type: 'boolean', short: 'h' },
    },
  });
  if (o.help) {
    console.log(USAGE);
    return 0;
  }
  const [command, ...rest] = pos;
  if (!o.broker || !command) throw new UsageError('--broker and a command are required');
  const timeoutMs = o.timeout !== undefined ? Number(o.timeout) : undefined;
  if (timeoutMs !== undefined && !Number.isFinite(timeoutMs)) throw new UsageError('--timeout: milliseconds');
  const client = await Client.connect(o.broker, {
    root: o.root,
    clientId: o['client-id'],
    username: o.username,
    password: o.password,
    timeoutMs,
    encoding: o.json ? 'json' : 'cbor',
    log: o.verbose ? (m) => process.stderr.write(`continuum: ${m}\n`) : undefined,
  });
  try {
    switch (command) {
      case 'create': {
        const [cls, ...args] = rest;
        if (!cls) throw new UsageError('create CLASS');
        const opt = {};
        if (args.length || o.args) opt.args = o.args ? parseJson(o.args, '--args', 'array') : args.map(parseValue);
        if (o.kwargs) opt.kwargs = parseJson(o.kwargs, '--kwargs', 'object');
        if (o.alias !== undefined) opt.alias = o.alias;
        if (o.node !== undefined) opt.node = o.node;
        if (o.replicas !== undefined) opt.replicas = Number(o.replicas);
        out({ result: await client.create(cls, opt) });
        return 0;
      }
      case 'resolve': {
        if (rest.length !== 1) throw new UsageError('resolve REF');
        out({ result: await client.resolve(rest[0]) });
        return 0;
      }
      case 'call': {
        const [ref, method, ...args] = rest;
        if (!ref || !method) throw new UsageError('call REF METHOD [ARG ...]');
        const value = await client.call(ref, method, {
          args: o.args ? parseJson(o.args, '--args', 'array') : args.map(parseValue),
          kwargs: o.kwargs ? parseJson(o.kwargs, '--kwargs', 'object') : {},
          onProgress: (v, seq) => out({ progress: v, seq }),
        });
        out({ result: value });
        return 0;
      }
      case 'gateway': {
        const [method] = rest;
        if (!method) throw new UsageError('gateway METHOD');
        out({ result: await client.gateway(method, o.kwargs ? parseJson(o.kwargs, '--kwargs', 'object') : {}) });
        return 0;
      }
      case 'bench':
        return (await bench(client, rest, o)) ? 0 : 1;
      default:
        throw new UsageError(`unknown command ${command}`);
    }
  } finally {
    await client.close();
  }
}

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (err) => {
    if (err instanceof UsageError || err?.code === 'ERR_PARSE_ARGS_UNKNOWN_OPTION' || err?.code?.startsWith?.('ERR_PARSE_ARGS')) {
      process.stderr.write(`${err.message}\n${USAGE}\n`);
      process.exit(2);
    }
    if (err instanceof ContinuumError) {
      out({ error: err.toJSON() });
      process.exit(1);
    }
    process.stderr.write(`${err?.stack ?? err}\n`);
    process.exit(3);
  },
);
