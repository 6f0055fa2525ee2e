'use strict';
/**
 * A continuum client for Node.js, written from docs/protocol.md alone
 * (version 1 of the topic API). Section numbers (§n) refer to that page.
 *
 *   const { Client } = require('./continuum');
 *   const c = await Client.connect('mqtt://127.0.0.1:1883', { root: 'continuum/v1' });
 *   const info = await c.create('examples.counter.Counter', { kwargs: { start: 1 }, alias: 'x' });
 *   await c.call('x', 'add', { args: [2] });                       // 3
 *   await c.call('x', 'count_to', { args: [3], onProgress: (v, seq) => console.log(seq, v) });
 *   await c.close();
 */

const crypto = require('node:crypto');
const net = require('node:net');
const { performance } = require('node:perf_hooks');
const mqtt = require('mqtt');
const cbor = require('cbor');

const DEFAULT_ROOT = 'continuum/v1';
const DEFAULT_TIMEOUT_MS = 30000; // §5: the Python client's default call timeout
const OFFLINE_GRACE_MS = 3000; // §20.6
const MAX_PAYLOAD = 8 * 1024 * 1024; // §8 payload_too_large: the client's own limit
const GATEWAY_MAX_PAYLOAD = 1024 * 1024; // §16
const STATUS_MAX = 256 * 1024; // §15: larger statuses are ignored
const RESOLVE_RETRY_MS = 100; // §20.5
const RESOLVE_RETRY_MAX = 100;
const MAX_REROUTES = 5; // not in the spec: a guard against endless ping-pong

// ---------------------------------------------------------------- encoding (§10)

/**
 * What goes into CBOR: undefined becomes null (cbor2 would see CBOR `undefined`),
 * Uint8Array a plain byte string (node-cbor would tag it 64, a typed array).
 */
function toWire(v) {
  if (v === undefined) return null;
  if (Array.isArray(v)) return v.map(toWire);
  if (v === null || typeof v !== 'object' || Buffer.isBuffer(v)) return v;
  if (v instanceof Uint8Array) return Buffer.from(v.buffer, v.byteOffset, v.byteLength);
  if (v instanceof Map) return new Map([...v].map(([k, x]) => [k, toWire(x)]));
  if (Object.getPrototypeOf(v) !== Object.prototype && Object.getPrototypeOf(v) !== null) {
    return v; // Date, Set, BigInt wrappers, cbor.Tagged ...: node-cbor knows them
  }
  const out = {};
  for (const [k, x] of Object.entries(v)) out[k] = toWire(x);
  return out;
}

/** CBOR (RFC 8949), preferred (shortest) heads: a map of 5 is `a5` (§22's example bytes). */
function encodeCbor(obj) {
  return cbor.encodeOne(toWire(obj));
}

/** Maps with text keys become objects, others Maps; byte strings Buffers; unknown tags cbor.Tagged. */
function decodeCbor(buf) {
  return cbor.decodeFirstSync(buf, { required: true, extendedResults: false });
}

function encodeJson(obj) {
  return Buffer.from(
    JSON.stringify(obj, (_k, v) => {
      if (typeof v === 'bigint') return Number(v); // JSON has no bigints; precision is lost above 2^53
      if (v && (Buffer.isBuffer(v) || v instanceof Uint8Array || v?.type === 'Buffer')) {
        throw localError(UnencodableResult, 'unencodable_result', 'JSON cannot carry byte strings; use CBOR');
      }
      if (typeof v === 'number' && !Number.isFinite(v)) {
        throw localError(UnencodableResult, 'unencodable_result', 'JSON cannot carry NaN or infinities; use CBOR');
      }
      return v;
    }),
    'utf8',
  );
}

/** Decode a reply: JSON when the Content Type says so or, without one, when the first byte is `{` (§10). */
function decodePayload(payload, contentType) {
  let json;
  if (typeof contentType === 'string' && contentType.length) {
    json = contentType.split(';')[0].trim().toLowerCase() === 'application/json';
  } else {
    json = payload.length > 0 && payload[0] === 0x7b;
  }
  if (json) {
    // The Python JSON decoder also accepts NaN/Infinity (§10): the services never send them.
    return JSON.parse(payload.toString('utf8'));
  }
  return decodeCbor(payload);
}

// ---------------------------------------------------------------- errors (§8)

/** Every failure of a call: `code` (the wire code), `type`, `message`, plus the extra fields in `data`. */
class ContinuumError extends Error {
  constructor(envelope, { remote = true } = {}) {
    const env = envelope && typeof envelope === 'object' ? envelope : {};
    super(typeof env.message === 'string' ? env.message : String(env.message ?? ''));
    this.name = this.constructor.name;
    this.code = typeof env.code === 'string' ? env.code : 'internal';
    this.type = typeof env.type === 'string' ? env.type : this.constructor.name;
    this.remote = remote; // false: raised by this client itself (deadline, not connected ...)
    if (typeof env.traceback === 'string') this.traceback = env.traceback;
    this.data = {};
    for (const [k, v] of Object.entries(env)) {
      if (!['code', 'type', 'message', 'traceback'].includes(k)) this.data[k] = v;
    }
  }

  toJSON() {
    const out = { code: this.code, type: this.type, message: this.message, ...this.data };
    if (this.traceback !== undefined) out.traceback = this.traceback;
    if (!this.remote) out.local = true;
    return out;
  }
}

/** An error code this client does not know (§8: "a generic remote error"). */
class RemoteError extends ContinuumError {}
/** An application's own namespaced code (`ns.name`, §8 "Application errors"). */
class ApplicationError extends ContinuumError {}

const CODES = {
  bad_request: 'BadRequest',
  payload_too_large: 'PayloadTooLarge',
  unknown_object: 'UnknownObject',
  object_not_here: 'ObjectNotHere',
  unknown_class: 'UnknownClass',
  unknown_method: 'UnknownMethod',
  method_not_active: 'MethodNotActive',
  bad_arguments: 'BadArguments',
  method_error: 'MethodError',
  unencodable_result: 'UnencodableResult',
  deadline_expired: 'DeadlineExpired',
  busy: 'Busy',
  unavailable: 'Unavailable',
  storage: 'StorageError',
  no_node: 'NoNodeAvailable',
  alias_taken: 'AliasTaken',
  not_connected: 'NotConnected',
  cancelled: 'Cancelled',
  forbidden: 'Forbidden',
  quota_exceeded: 'QuotaExceeded',
};
const ERROR_CLASSES = {};
for (const [code, name] of Object.entries(CODES)) {
  // A named subclass per protocol code, so that `err instanceof errors.Busy` works.
  ERROR_CLASSES[code] = { [name]: class extends ContinuumError {} }[name];
}
const { UnencodableResult, DeadlineExpired, NotConnected, Unavailable, PayloadTooLarge } =
  Object.fromEntries(Object.entries(ERROR_CLASSES).map(([c, k]) => [CODES[c], k]));

/** Map an error envelope to an error, by `code` only (never by message). */
function errorFromEnvelope(envelope) {
  const code = envelope && typeof envelope.code === 'string' ? envelope.code : '';
  if (ERROR_CLASSES[code]) return new ERROR_CLASSES[code](envelope);
  if (code.includes('.')) return new ApplicationError(envelope);
  return new RemoteError(envelope);
}

function localError(Cls, code, message, extra = {}) {
  return new Cls({ code, type: CODES[code], message, ...extra }, { remote: false });
}

// ---------------------------------------------------------------- topics (§3, §4, §6)

const BAD_LEVEL = /[/+#\u0000-\u001f\u007f-\u009f]/u;

function checkLevel(name, what) {
  if (typeof name !== 'string' || !name.length || BAD_LEVEL.test(name)) {
    throw new TypeError(`${what} ${JSON.stringify(name)} cannot be a topic level`);
  }
  return name;
}

function randomHex(n) {
  return crypto.randomBytes(Math.ceil(n / 2)).toString('hex').slice(0, n);
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// ---------------------------------------------------------------- the client

/**
 * One MQTT 5 connection to the broker, and the calls made on it.
 *
 * Options: root, clientId (default `js-<12 hex>`), username, password,
 * timeoutMs (default per call, 30 s), encoding ('cbor' | 'json'),
 * keepalive (s, default 10), maxPayload (bytes, default 8 MiB).
 */
class Client {
  static async connect(url, options = {}) {
    const c = new Client(url, options);
    await c.open();
    return c;
  }

  constructor(url, options = {}) {
    this.url = url;
    this.root = options.root ?? DEFAULT_ROOT;
    if (/[+#]/.test(this.root) || this.root.endsWith('/') || this.root.startsWith('$')) {
      throw new TypeError(`bad topic root ${JSON.stringify(this.root)} (§1)`);
    }
    this.clientId = checkLevel(options.clientId ?? `js-${randomHex(12)}`, 'client id');
    this.username = options.username;
    this.password = options.password;
    this.timeoutMs = options.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    this.encoding = options.encoding ?? 'cbor';
    this.keepalive = options.keepalive ?? 10;
    this.maxPayload = options.maxPayload ?? MAX_PAYLOAD;
    this.log = options.log ?? (() => {});
    // §11: <cid>:<nonce>:<n>, nonce drawn once per client object, n from 1.
    this.nonce = randomHex(8);
    this.counter = 0;
    // §6: <root>/reply/<user>/<cid>, or <root>/reply/<cid> without a username.
    this.replyTopic = this.username
      ? `${this.root}/reply/${checkLevel(this.username, 'username')}/${this.clientId}`
      : `${this.root}/reply/${this.clientId}`;
    this.pending = new Map(); // request id -> call record
    this.nodes = new Map(); // node id -> { online: bool, manifest }
    this.gatewayOnline = undefined; // undefined: no status seen yet
    this.cache = new Map(); // ref (id or alias) -> object info (§20.2)
    this.connected = false;
    this.closed = false;
    this.mqtt = null;
  }

  nextId() {
    this.counter += 1;
    return `${this.clientId}:${this.nonce}:${this.counter}`;
  }

  // ------------------------------------------------------------ connection (§2, §20.1)

  open() {
    const u = new URL(this.url);
    const options = {
      protocolVersion: 5,
      clientId: this.clientId,
      clean: true, // Clean Start 1, no Session Expiry Interval: nothing kept (§2)
      keepalive: this.keepalive,
      reconnectPeriod: 0, // our own reconnect loop below: back-off 0.25 s .. 15 s (§2)
      connectTimeout: 10000,
      resubscribe: false, // we subscribe again ourselves on every connect
      username: this.username ?? (u.username ? decodeURIComponent(u.username) : undefined),
      password: this.password ?? (u.password ? decodeURIComponent(u.password) : undefined),
      will: {
        topic: `${this.root}/client/${this.clientId}/status`,
        payload: encodeCbor({ state: 'offline', client: this.clientId }),
        qos: 1,
        retain: false,
      },
    };
    if (u.protocol === 'mqtt:' || u.protocol === 'tcp:') {
      // TCP_NODELAY as soon as the socket is opened (§2): mqtt.js's own TCP
      // builder leaves Nagle on, which costs tens of ms per round trip.
      const host = u.hostname || 'localhost';
      const port = Number(u.port || 1883);
      this.mqtt = new mqtt.MqttClient(
        () => net.createConnection({ host, port, noDelay: true }),
        { ...options, host, port, protocol: 'mqtt' },
      );
    } else {
      this.mqtt = mqtt.connect(this.url, options);
    }
    const m = this.mqtt;
    let first = true;
    m.on('message', (topic, payload, packet) => this.onMessage(topic, payload, packet));
    this.backoff = 250;
    m.on('close', () => {
      this.connected = false;
      if (this.closed || first || this.reconnectTimer) return;
      this.reconnectTimer = setTimeout(() => {
        this.reconnectTimer = null;
        if (!this.closed) m.reconnect(); // fresh stores: we resend pending calls ourselves
      }, this.backoff);
      this.backoff = Math.min(15000, this.backoff * 2);
    });
    m.on('error', (err) => this.log(`mqtt error: ${err.message}`));
    return new Promise((resolve, reject) => {
      const failFirst = (err) => {
        if (!first) return;
        first = false;
        this.closed = true;
        m.end(true);
        reject(localError(NotConnected, 'not_connected', `cannot connect to ${this.url}: ${err.message}`));
      };
      const timer = setTimeout(() => failFirst(new Error('timed out')), 15000);
      m.on('error', failFirst);
      m.on('connect', async () => {
        if (typeof m.stream?.setNoDelay === 'function') m.stream.setNoDelay(true);
        this.backoff = 250;
        try {
          await this.subscribeAll();
        } catch (err) {
          this.log(`subscribe failed: ${err.message}`);
          return; // the broker will drop us; the next connect tries again
        }
        this.connected = true;
        if (first) {
          first = false;
          clearTimeout(timer);
          m.removeListener('error', failFirst);
          resolve(this);
        } else {
          // §20.7: resend every call still waiting (same id, time left)
          for (const p of this.pending.values()) if (p.inFlight) this.send(p);
        }
      });
    });
  }

  subscribeAll() {
    // Without Retain As Published: the retain flag of a status then means
    // "stored, came with my subscription" (§2, §20.7).
    const subs = {
      [this.replyTopic]: { qos: 1 },
      [`${this.root}/node/+/status`]: { qos: 1 },
      [`${this.root}/gateway/status`]: { qos: 1 },
    };
    return new Promise((resolve, reject) => {
      this.mqtt.subscribe(subs, (err, granted) => {
        if (err) return reject(err);
        const bad = (granted || []).find((g) => g.qos > 2);
        if (bad) return reject(new Error(`subscription to ${bad.topic} refused (0x${bad.qos.toString(16)})`));
        resolve();
      });
    });
  }

  /** Close; calls still waiting fail with `not_connected`. `withWill`: ask the broker to publish our will. */
  async close({ withWill = false } = {}) {
    if (this.closed) return;
    this.closed = true;
    clearTimeout(this.reconnectTimer);
    for (const p of [...this.pending.values()]) {
      this.settle(p, localError(NotConnected, 'not_connected', 'client closed with the call pending'));
    }
    await new Promise((resolve) => {
      if (!this.mqtt) return resolve();
      this.mqtt.end(false, withWill ? { reasonCode: 0x04 } : {}, () => resolve());
    });
  }

  // ------------------------------------------------------------ statuses (§15, §20)

  nodeOnline(node) {
    const s = this.nodes.get(node);
    return s ? s.online : undefined; // undefined: unknown
  }

  onStatus(topic, payload, retained) {
    let online = false;
    let manifest = null;
    if (payload.length) {
      if (payload.length > STATUS_MAX) return; // not a status: ignored (§15)
      let st;
      try {
        st = decodeCbor(payload); // statuses are always CBOR (§4)
      } catch {
        return;
      }
      if (!st || typeof st !== 'object' || Array.isArray(st)) return;
      online = st.state === 'online';
      manifest = st;
    } // an empty retained message means offline (§15)
    const gw = topic === `${this.root}/gateway/status`;
    const prev = gw ? this.gatewayOnline : this.nodeOnline(topic.split('/').at(-2));
    // §20.7: a comeback is an online after an offline, or a first online delivered live.
    const comeback = online && (prev === false || (prev === undefined && !retained));
    const wentOffline = !online && prev === true;
    if (gw) {
      this.gatewayOnline = online;
      if (comeback) {
        for (const p of this.pending.values()) if (p.gateway && p.inFlight) this.send(p);
      }
      return;
    }
    const node = topic.slice(`${this.root}/node/`.length, -'/status'.length);
    this.nodes.set(node, { online, manifest: online ? manifest : this.nodes.get(node)?.manifest });
    if (comeback) {
      for (const p of this.pending.values()) {
        if (!p.gateway && p.node === node && (p.inFlight || p.graceTimer)) {
          this.clearGrace(p);
          p.inFlight = true;
          this.send(p);
        }
      }
    } else if (wentOffline) {
      for (const p of [...this.pending.values()]) {
        if (!p.gateway && p.node === node && p.inFlight) this.reroute(p, null);
      }
    }
  }

  // ------------------------------------------------------------ replies (§7)

  onMessage(topic, payload, packet) {
    if (topic.endsWith('/status') && topic.startsWith(`${this.root}/`)) {
      if (topic === `${this.root}/gateway/status` || topic.startsWith(`${this.root}/node/`)) {
        return this.onStatus(topic, payload, packet.retain);
      }
    }
    if (topic !== this.replyTopic) return;
    const props = packet.properties || {};
    let reply;
    try {
      reply = decodePayload(payload, props.contentType);
    } catch (err) {
      this.log(`undecodable reply: ${err.message}`);
      return;
    }
    if (!reply || typeof reply !== 'object') return;
    let p = typeof reply.id === 'string' ? this.pending.get(reply.id) : undefined;
    if (!p && (reply.id === null || reply.id === undefined) && props.correlationData) {
      // §20.4: when id is null, match by Correlation Data (we set it to the id).
      p = this.pending.get(Buffer.from(props.correlationData).toString('utf8'));
    }
    if (!p) return; // not waiting for it (late, duplicate): ignore (§7)
    if (reply.kind === 'progress') {
      const seq = Number(reply.seq);
      if (!(seq > p.lastSeq)) return; // duplicate after a resend
      p.lastSeq = seq;
      if (p.onProgress) {
        try {
          p.onProgress(reply.value, seq);
        } catch (err) {
          this.log(`progress callback raised: ${err.message}`);
        }
      }
    } else if (reply.kind === 'result') {
      this.settle(p, null, reply.value);
    } else if (reply.kind === 'error') {
      const err = errorFromEnvelope(reply.error);
      if (err.code === 'object_not_here' && !p.gateway && p.ref !== undefined) {
        this.reroute(p, err);
      } else {
        this.settle(p, err);
      }
    } else {
      // §1: version 1 clients fail a call on a reply kind they do not know
      this.settle(p, new RemoteError({ code: 'bad_reply', type: 'BadReply', message: `unknown reply kind ${reply.kind}` }));
    }
  }

  // ------------------------------------------------------------ requests (§5, §9)

  /**
   * Register a request. `target`: { gateway: true } or { ref } for an object
   * call (routed later). Returns the record; `record.promise` settles with the result.
   */
  makeRecord(method, args, kwargs, opts, target) {
    if (typeof method !== 'string' || !method.length) throw new TypeError('method must be non-empty text');
    if (!this.connected) {
      const p = { promise: Promise.reject(localError(NotConnected, 'not_connected', 'no broker connection')) };
      return p;
    }
    const timeoutMs = opts.timeoutMs ?? this.timeoutMs;
    const p = {
      id: this.nextId(),
      method,
      args: args ?? [],
      kwargs: kwargs ?? {},
      timeoutMs,
      deadline: performance.now() + timeoutMs,
      onProgress: opts.onProgress,
      encoding: opts.encoding ?? this.encoding,
      lastSeq: 0,
      sends: 0,
      reroutes: 0,
      inFlight: false, // published and waiting for its reply
      done: false,
      ...target,
    };
    p.promise = new Promise((resolve, reject) => {
      p.resolve = resolve;
      p.reject = reject;
    });
    // §9: the client enforces the deadline on its own clock.
    p.timer = setTimeout(() => {
      this.settle(p, localError(DeadlineExpired, 'deadline_expired', `no final reply within ${timeoutMs} ms (outcome unknown)`));
    }, Math.max(0, timeoutMs));
    this.pending.set(p.id, p);
    return p;
  }

  settle(p, err, value) {
    if (p.done) return;
    p.done = true;
    p.inFlight = false;
    clearTimeout(p.timer);
    this.clearGrace(p);
    this.pending.delete(p.id);
    if (err) p.reject(err);
    else p.resolve(value);
  }

  clearGrace(p) {
    if (p.graceTimer) {
      clearTimeout(p.graceTimer);
      p.graceTimer = null;
    }
  }

  /** Publish (or resend) a request: same id, timeout_ms the time left (§9, §11). */
  send(p) {
    if (p.done || !this.connected) return; // a reconnect resends it
    const left = p.deadline - performance.now();
    const body = { method: p.method, id: p.id };
    if (p.args.length) body.args = p.args;
    if (Object.keys(p.kwargs).length) body.kwargs = p.kwargs;
    if (!p.gateway) body.obj = p.obj;
    // The time left, in whole ms: on a first send straight to the service this is the
    // call's timeout (§9); after a resolve, or on a resend, what remains of it.
    body.timeout_ms = Math.max(0, Math.round(left));
    let payload;
    try {
      payload = p.encoding === 'json' ? encodeJson(body) : encodeCbor(body);
    } catch (err) {
      return this.settle(
        p,
        err instanceof ContinuumError
          ? err
          : localError(UnencodableResult, 'unencodable_result', `cannot encode the arguments: ${err.message}`),
      );
    }
    let limit = p.gateway ? GATEWAY_MAX_PAYLOAD : this.maxPayload;
    const nodeLimit = p.gateway ? undefined : this.nodes.get(p.node)?.manifest?.max_payload;
    if (typeof nodeLimit === 'number') limit = Math.min(limit, nodeLimit);
    if (payload.length > limit) {
      return this.settle(
        p,
        localError(PayloadTooLarge, 'payload_too_large', `request of ${payload.length} bytes over the limit of ${limit}`, {
          limit,
          size: payload.length,
        }),
      );
    }
    const properties = {
      responseTopic: this.replyTopic,
      correlationData: Buffer.from(p.id, 'utf8'),
      // §5, §9: the remaining deadline in whole seconds, rounded up, at least 1
      messageExpiryInterval: Math.max(1, Math.ceil(left / 1000)),
    };
    if (p.encoding === 'json') properties.contentType = 'application/json';
    // §4, §21: a client with a username adds it as the caller level
    const base = p.gateway ? `${this.root}/gateway/call` : `${this.root}/node/${p.node}/call`;
    const topic = this.username ? `${base}/${this.username}` : base;
    p.sends += 1;
    p.inFlight = true;
    this.mqtt.publish(topic, payload, { qos: 1, retain: false, properties }, (err) => {
      if (err) this.log(`publish of ${p.id} failed: ${err.message}`);
    });
  }

  // ------------------------------------------------------------ gateway (§16)

  /** Call a gateway method, arguments by name. */
  gateway(method, kwargs = {}, opts = {}) {
    const p = this.makeRecord(method, opts.args, kwargs, opts, { gateway: true });
    if (p.id) this.send(p);
    return p.promise;
  }

  async create(cls, { args, kwargs, alias, node, replicas, ...opts } = {}) {
    const kw = { cls };
    if (args !== undefined) kw.args = args;
    if (kwargs !== undefined) kw.kwargs = kwargs;
    if (alias !== undefined) kw.alias = alias;
    if (node !== undefined) kw.node = node;
    if (replicas !== undefined) kw.replicas = replicas;
    const info = await this.gateway('create', kw, opts);
    this.remember(info, alias);
    return info;
  }

  async resolve(ref, opts = {}) {
    const info = await this.gateway('resolve', { ref }, opts);
    this.remember(info, ref);
    return info;
  }

  remember(info, ref) {
    if (!info || typeof info.id !== 'string') return;
    this.cache.set(info.id, info);
    if (typeof ref === 'string') this.cache.set(ref, info);
  }

  forget(ref, info) {
    this.cache.delete(ref);
    if (info) {
      this.cache.delete(info.id);
      for (const [k, v] of this.cache) if (v.id === info.id) this.cache.delete(k);
    }
  }

  // ------------------------------------------------------------ object calls (§20)

  /**
   * Call an active method on an object (id or alias), directly on its node.
   * opts: args, kwargs, timeoutMs, onProgress(value, seq), encoding.
   */
  call(ref, method, opts = {}) {
    const p = this.makeRecord(method, opts.args, opts.kwargs, opts, { ref });
    if (!p.id) return p.promise;
    this.route(p).catch((err) => this.settle(p, err));
    return p.promise;
  }

  timeLeft(p) {
    return p.deadline - performance.now();
  }

  /** Find the node for a call and send it there (§20.3). */
  async route(p) {
    let info = this.cache.get(p.ref);
    if (!info) info = await this.resolve(p.ref, { timeoutMs: Math.max(1, this.timeLeft(p)) });
    if (p.done) return;
    if (this.nodeOnline(info.node) === false) {
      // cached node known to be offline: resolve at once
      this.forget(p.ref, info);
      info = await this.resolve(p.ref, { timeoutMs: Math.max(1, this.timeLeft(p)) });
      if (p.done) return;
      if (this.nodeOnline(info.node) === false) {
        return this.settle(
          p,
          localError(Unavailable, 'unavailable', `node ${info.node} of object ${info.id} is offline`, { node: info.node }),
        );
      }
    }
    p.obj = info.id;
    p.node = info.node;
    this.send(p);
  }

  /**
   * §20.5 / §20.6: the node refused the call (`err`, object_not_here) or went
   * offline (`err` null). Resolve again; resend the same request to the new node.
   */
  async reroute(p, err) {
    const oldNode = p.node;
    p.inFlight = false;
    p.reroutes += 1;
    try {
      if (p.reroutes > MAX_REROUTES) throw err ?? localError(Unavailable, 'unavailable', 'too many re-routes');
      this.forget(p.ref, this.cache.get(p.ref));
      for (let attempt = 0; !p.done; attempt++) {
        const info = await this.resolve(p.ref, { timeoutMs: Math.max(1, this.timeLeft(p)) });
        if (p.done) return;
        if (info.node !== oldNode && this.nodeOnline(info.node) !== false) {
          p.obj = info.id;
          p.node = info.node;
          this.send(p);
          return;
        }
        const replicaUp = (info.replicas || []).some((n) => this.nodeOnline(n) === true);
        if (info.node === oldNode && replicaUp && attempt < RESOLVE_RETRY_MAX && this.timeLeft(p) > 0) {
          // the gateway has not promoted the live replica yet
          this.forget(p.ref, info);
          await sleep(RESOLVE_RETRY_MS);
          continue;
        }
        break;
      }
      if (p.done) return;
      if (err) throw err;
      if (this.nodeOnline(oldNode) === true) {
        // it came back while we resolved
        p.inFlight = true;
        this.send(p);
        return;
      }
      // no live replica: wait offline_grace for the node to return (its online status resends)
      p.graceTimer = setTimeout(() => {
        p.graceTimer = null;
        this.settle(
          p,
          localError(Unavailable, 'unavailable', `node ${oldNode} went offline with the call in flight`, { node: oldNode }),
        );
      }, OFFLINE_GRACE_MS);
    } catch (e) {
      this.settle(p, e);
    }
  }
}

module.exports = {
  Client,
  ContinuumError,
  RemoteError,
  ApplicationError,
  errors: Object.fromEntries(Object.entries(ERROR_CLASSES).map(([c, k]) => [CODES[c], k])),
  errorFromEnvelope,
  encodeCbor,
  encodeJson,
  decodePayload,
  DEFAULT_ROOT,
};
