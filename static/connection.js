// The player's websocket (/ws): hello with the token on every (re)connect, automatic
// reconnection with backoff, keep-alive pings, and the offset between our clock and the
// server's. Frames are those of app/protocol.py; this module does not interpret them.

const PING_EVERY_MS = 10000;
const SILENCE_LIMIT_MS = 25000; // no frame for this long: the connection is dead, reconnect
const CONNECT_TIMEOUT_MS = 10000;
const MAX_BACKOFF_MS = 8000;

export function socketUrl() {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${location.host}/ws`;
}

export class GameSocket {
  /**
   * @param {{token: string, onFrame: (frame: object) => void,
   *          onStatus: (status: "connecting"|"open"|"closed", attempt: number) => void}} options
   */
  constructor({ token, onFrame, onStatus }) {
    this.token = token;
    this.onFrame = onFrame;
    this.onStatus = onStatus;
    this.ws = null;
    this.attempt = 0;
    this.stopped = true;
    this.retryTimer = null;
    this.lastFrameAt = 0;
    this.heartbeat = null;
    this.nonce = 0;
    this.clockOffset = 0; // server seconds minus local seconds
    this.wakeUp = () => {
      if (!this.stopped && !this.isOpen() && !this.connecting()) this.connectNow();
    };
  }

  start() {
    this.stopped = false;
    window.addEventListener("online", this.wakeUp);
    document.addEventListener("visibilitychange", this.wakeUp);
    this.heartbeat = setInterval(() => this.beat(), PING_EVERY_MS / 2);
    this.connect();
  }

  stop() {
    this.stopped = true;
    clearTimeout(this.retryTimer);
    clearInterval(this.heartbeat);
    window.removeEventListener("online", this.wakeUp);
    document.removeEventListener("visibilitychange", this.wakeUp);
    if (this.ws) {
      const ws = this.ws;
      this.ws = null;
      ws.onclose = ws.onmessage = ws.onerror = ws.onopen = null;
      ws.close();
    }
  }

  isOpen() {
    return this.ws !== null && this.ws.readyState === WebSocket.OPEN;
  }

  connecting() {
    return this.ws !== null && this.ws.readyState === WebSocket.CONNECTING;
  }

  /** Seconds since the epoch on the server's clock. */
  serverNow() {
    return Date.now() / 1000 + this.clockOffset;
  }

  noteServerTime(serverTime) {
    if (typeof serverTime === "number") this.clockOffset = serverTime - Date.now() / 1000;
  }

  send(frame) {
    if (!this.isOpen()) return false;
    this.ws.send(JSON.stringify(frame));
    return true;
  }

  connectNow() {
    clearTimeout(this.retryTimer);
    this.attempt = 0;
    this.connect();
  }

  connect() {
    if (this.stopped) return;
    this.onStatus("connecting", this.attempt);
    let ws;
    try {
      ws = new WebSocket(socketUrl());
    } catch (err) {
      this.dropped();
      return;
    }
    this.ws = ws;
    const openTimer = setTimeout(() => {
      if (ws.readyState !== WebSocket.OPEN) this.abandon(ws);
    }, CONNECT_TIMEOUT_MS);
    ws.onopen = () => {
      clearTimeout(openTimer);
      this.lastFrameAt = Date.now();
      ws.send(JSON.stringify({ type: "hello", token: this.token }));
    };
    ws.onmessage = (event) => {
      this.lastFrameAt = Date.now();
      let frame;
      try {
        frame = JSON.parse(event.data);
      } catch {
        return;
      }
      if (frame.type === "welcome") {
        this.attempt = 0;
        this.onStatus("open", 0);
      } else if (frame.type === "pong") {
        this.noteServerTime(frame.server_time);
      } else if (frame.type === "state" && frame.view) {
        this.noteServerTime(frame.view.server_time);
      }
      this.onFrame(frame);
    };
    ws.onerror = () => {}; // a close event follows
    ws.onclose = () => {
      clearTimeout(openTimer);
      if (this.ws === ws) this.dropped();
    };
  }

  /** Give up on a socket that hangs, without waiting for its close handshake. */
  abandon(ws) {
    ws.onclose = ws.onmessage = ws.onerror = ws.onopen = null;
    try {
      ws.close();
    } catch {
      /* already closed */
    }
    if (this.ws === ws) this.dropped();
  }

  dropped() {
    this.ws = null;
    if (this.stopped) return;
    this.onStatus("closed", this.attempt);
    const base = Math.min(MAX_BACKOFF_MS, 400 * 2 ** this.attempt);
    const delay = base * (0.75 + Math.random() * 0.5);
    this.attempt += 1;
    clearTimeout(this.retryTimer);
    this.retryTimer = setTimeout(() => this.connect(), delay);
  }

  beat() {
    if (!this.isOpen()) return;
    if (Date.now() - this.lastFrameAt > SILENCE_LIMIT_MS) {
      this.abandon(this.ws);
      return;
    }
    if (Date.now() - this.lastFrameAt > PING_EVERY_MS / 2) {
      this.nonce += 1;
      this.send({ type: "ping", nonce: String(this.nonce) });
    }
  }
}
