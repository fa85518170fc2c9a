// The game screen: renders the server's view (GameView of app/protocol.py) for either seat and
// turns the player's clicks and messages into protocol frames.
//
// The server is authoritative: every frame we get carries the whole view, and we re-render from
// the newest one. Actions are sent one at a time, each against the version it was made on; a
// stale action (the game moved on meanwhile) is retried on the newer view, never shown as an
// error. Everything people typed is put on the page with textContent, never as HTML.

const $ = (id) => document.getElementById(id);

const EXPECTED_CAUSE = {
  click: ["selection_toggled"],
  submit: ["selection_submitted", "turn_started", "game_ended"],
  send_utterance: ["utterance_sent"],
};
const INFLIGHT_LIMIT_MS = 6000;
const DOUBLE_CLICK_MS = 300; // a second click on the same picture this soon is the same click
/** The one-column layout of phones (app.css): the side column comes below the pictures. */
const narrow = () => window.matchMedia("(max-width: 900px)").matches;

export function formatClock(seconds) {
  const s = Math.max(0, Math.ceil(seconds));
  return `${Math.floor(s / 60)}:${String(s % 60).padStart(2, "0")}`;
}

export function dollars(cents) {
  return `$${(cents / 100).toFixed(2)}`;
}

const END_TEXT = {
  success: () => "The listener selected exactly the target pictures.",
  max_turns: (v) => `All ${v.max_turns} turns were used without selecting exactly the targets.`,
  speaker_idle: (v) =>
    v.seat === "speaker"
      ? "The game ended because no message was sent for too long."
      : "The game ended because the speaker was inactive.",
  listener_idle: (v) =>
    v.seat === "listener"
      ? "The game ended because no pictures were selected for too long."
      : "The game ended because your partner was inactive.",
  speaker_disconnected: (v) =>
    v.seat === "speaker"
      ? "The game ended because your connection was lost for too long."
      : "Your partner's connection was lost and they did not come back, so the game ended.",
  listener_disconnected: (v) =>
    v.seat === "listener"
      ? "The game ended because your connection was lost for too long."
      : "Your partner's connection was lost and they did not come back, so the game ended.",
  speaker_left: (v) => (v.seat === "speaker" ? "You left the game." : "Your partner left the game."),
  listener_left: (v) => (v.seat === "listener" ? "You left the game." : "Your partner left the game."),
  join_timeout: () => "Your partner did not join the game in time.",
  model_unavailable: () => "The game ended because of a technical problem on our side.",
  admin_ended: () => "The game was ended by the researchers.",
};

function endTitle(view) {
  if (view.outcome === "successful") return "Success!";
  if (view.outcome === "unsuccessful") return "Game over";
  return "The game has ended";
}

export function endReasonText(view) {
  const f = END_TEXT[view.end_reason];
  return f ? f(view) : "The game has ended.";
}

/** The pay breakdown and completion code, shared by the game's end and the released screen. */
export function buildEndCard(container, { title, tone, message, pay, code, prolificUrl, mturkSubmit, showBonuses, forfeited }) {
  container.replaceChildren();
  container.classList.remove("good", "bad");
  if (tone) container.classList.add(tone);
  const h = document.createElement("h2");
  h.textContent = title;
  h.dataset.testid = "end-title";
  container.append(h);
  if (message) {
    const p = document.createElement("p");
    p.textContent = message;
    p.dataset.testid = "end-message";
    container.append(p);
  }
  if (pay) {
    const table = document.createElement("table");
    table.className = "pay-table";
    table.dataset.testid = "pay-breakdown";
    const caption = document.createElement("caption");
    caption.className = "muted";
    caption.textContent = "Your pay";
    table.append(caption);
    const rows = [["Base pay for your time", pay.base_cents, "pay-base"]];
    if (showBonuses) {
      const net = Math.max(0, (pay.correct || 0) - (pay.wrong || 0));
      rows.push([`Bonus: ${net} net correct picture${net === 1 ? "" : "s"}`, pay.bonus_cents, "pay-bonus"]);
      rows.push(["Success bonus", pay.success_cents, "pay-success"]);
    }
    rows.push(["Total", pay.total_cents, "pay-total"]);
    for (const [label, cents, testid] of rows) {
      const tr = document.createElement("tr");
      if (testid === "pay-total") tr.className = "total";
      const th = document.createElement("th");
      th.scope = "row";
      th.textContent = label;
      const td = document.createElement("td");
      td.textContent = dollars(cents);
      td.dataset.testid = testid;
      tr.append(th, td);
      table.append(tr);
    }
    container.append(table);
  }
  if (forfeited) {
    // The server gives no code to a seat that walked away; the page only says so.
    const none = document.createElement("p");
    none.dataset.testid = "no-code";
    none.textContent = "You left this game before it ended, so there is no completion code for it.";
    container.append(none);
    return;
  }
  const label = document.createElement("p");
  label.className = "code-label";
  label.textContent = "Your completion code:";
  const box = document.createElement("div");
  box.className = "code-box";
  const codeEl = document.createElement("span");
  codeEl.className = "code";
  codeEl.dataset.testid = "completion-code";
  codeEl.textContent = code || "…";
  box.append(codeEl);
  if (code) {
    const copy = document.createElement("button");
    copy.type = "button";
    copy.className = "button quiet small";
    copy.textContent = "Copy";
    copy.addEventListener("click", async () => {
      try {
        await navigator.clipboard.writeText(code);
        copy.textContent = "Copied";
      } catch {
        const range = document.createRange();
        range.selectNodeContents(codeEl);
        const sel = getSelection();
        sel.removeAllRanges();
        sel.addRange(range);
        copy.textContent = "Selected: press Ctrl+C";
      }
    });
    box.append(copy);
  }
  container.append(label, box);
  const next = document.createElement("p");
  if (mturkSubmit && code) {
    container.append(mturkSubmitForm(mturkSubmit, code));
    next.className = "muted";
    next.textContent = "Submitting sends your completion code to MTurk with the HIT.";
  } else if (prolificUrl) {
    const a = document.createElement("a");
    a.className = "button primary";
    a.href = prolificUrl;
    a.dataset.testid = "prolific-link";
    a.textContent = "Return to Prolific to finish";
    next.append(a);
  } else {
    next.className = "muted";
    next.textContent = code
      ? "Enter this code on the study page to get paid. You can then close this tab."
      : "Your code is being prepared…";
  }
  container.append(next);
}

/** MTurk's ExternalQuestion hand-in: a POST of the assignment id (and the code) to MTurk. */
function mturkSubmitForm({ action, assignmentId }, code) {
  const form = document.createElement("form");
  form.method = "post";
  form.action = action;
  form.dataset.testid = "mturk-submit";
  for (const [name, value] of [["assignmentId", assignmentId], ["completion_code", code]]) {
    const input = document.createElement("input");
    input.type = "hidden";
    input.name = name;
    input.value = value;
    form.append(input);
  }
  const button = document.createElement("button");
  button.type = "submit";
  button.className = "button primary";
  button.textContent = "Submit the HIT";
  form.append(button);
  return form;
}

export class GameScreen {
  /**
   * @param {{config: object, socket: import("./connection.js").GameSocket,
   *          onEnded: (view: object) => void, fetchCode: () => Promise<object|null>}} options
   */
  constructor({ config, socket, onEnded, fetchCode }) {
    this.config = config;
    this.socket = socket;
    this.onEnded = onEnded;
    this.fetchCode = fetchCode;
    this.view = null;
    this.gameId = null;
    this.tiles = new Map(); // tangram id -> element
    this.queue = [];
    this.inflight = null;
    this.minVersion = 0;
    this.connected = true;
    this.flash = null;
    this.draftTimer = null;
    this.lastDraftSent = "";
    this.lastDraftAt = 0;
    this.renderedMessages = "";
    this.endRendered = null;
    this.lastClick = null; // {id, at}: a double click must not toggle a picture twice
    this.submittedTurn = 0; // the last turn this listener pressed Submit in
    this.autoSubmittedTurn = 0; // the last turn whose selection went in when time ran out
    this.cutNotice = ""; // shown under the composer after a paste longer than the limit
    this.codeRequested = false;

    this.board = $("board");
    this.input = $("utterance-input");
    this.sendButton = $("send-utterance");
    this.submitButton = $("submit-selection");

    $("composer").addEventListener("submit", (e) => {
      e.preventDefault();
      this.sendUtterance();
    });
    this.input.addEventListener("keydown", (e) => {
      if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
        e.preventDefault();
        this.sendUtterance();
      }
    });
    this.input.addEventListener("paste", (e) => {
      // The textarea's maxLength cuts a long paste silently: say so.
      const v = this.view;
      const pasted = e.clipboardData ? e.clipboardData.getData("text") : "";
      if (!v || !pasted) return;
      const kept = this.input.value.length - (this.input.selectionEnd - this.input.selectionStart);
      if (kept + pasted.length > v.max_utterance_chars) {
        this.cutNotice =
          `Your text was cut to ${v.max_utterance_chars} characters, the limit for one message. ` +
          "Check the end before you send it.";
      }
    });
    this.input.addEventListener("input", () => {
      this.saveDraft();
      this.scheduleDraft();
      this.renderComposer();
    });
    this.submitButton.addEventListener("click", () => this.submit());
    $("leave-open").addEventListener("click", () => {
      $("leave-confirm").hidden = false;
      $("leave-open").hidden = true;
      $("leave-no").focus();
    });
    $("leave-no").addEventListener("click", () => {
      $("leave-confirm").hidden = true;
      $("leave-open").hidden = false;
      $("leave-open").focus();
    });
    $("leave-yes").addEventListener("click", () => {
      this.socket.send({ type: "leave" });
      $("leave-confirm").hidden = true;
      $("leave-open").hidden = false;
    });
    this.timer = setInterval(() => this.renderClock(), 250);
  }

  // ------------------------------------------------------------ server input

  update(view) {
    if (this.view && this.view.game_id === view.game_id && view.version < this.view.version) return;
    const before = this.view;
    if (
      before && before.game_id === view.game_id && view.seat === "listener" &&
      before.phase === "selecting" && (view.turn > before.turn || view.phase === "ended") &&
      this.submittedTurn !== before.turn && view.last_submitted !== null
    ) {
      this.autoSubmittedTurn = before.turn; // the turn ran out before this listener pressed Submit
    }
    if (view.phase !== "speaking") this.cutNotice = "";
    this.view = view;
    if (view.game_id !== this.gameId) {
      this.gameId = view.game_id;
      this.queue = [];
      this.inflight = null;
      this.minVersion = 0;
      this.buildBoard(view);
    }
    if (this.inflight) {
      const expected = EXPECTED_CAUSE[this.inflight.action.type] || [];
      if (view.version > this.inflight.version && expected.includes(view.cause)) this.inflight = null;
    }
    if (view.phase === "ended") {
      this.queue = [];
      this.inflight = null;
    }
    // Out of the speaking phase (sent, or sent automatically): the composer starts empty.
    if (view.phase !== "speaking" && (this.input.value || this.lastDraftSent)) {
      this.input.value = "";
      this.lastDraftSent = "";
      try {
        sessionStorage.removeItem(`multiref.draft.${view.game_id}.${view.turn}`);
      } catch {
        /* storage disabled */
      }
    }
    if (view.seat === "speaker" && view.phase === "speaking" && !this.input.value) {
      try {
        const kept = sessionStorage.getItem(this.draftKey()); // typed before a reload
        if (kept) this.input.value = kept;
      } catch {
        /* storage disabled */
      }
    }
    this.render();
    this.pump();
    if (view.phase === "ended" && this.onEnded) this.onEnded(view);
    if (view.phase === "ended" && !view.completion_code && !view.forfeited && !this.codeRequested && this.fetchCode) {
      this.codeRequested = true;
      setTimeout(async () => {
        const got = await this.fetchCode();
        if (got && got.completion_code && this.view && !this.view.completion_code) {
          this.view = { ...this.view, completion_code: got.completion_code, redirect_url: got.redirect_url };
          this.endRendered = null;
          this.render();
        }
      }, 1500);
    }
  }

  onError(error) {
    if (!this.inflight) return;
    const action = this.inflight.action;
    this.inflight = null;
    if (error.code === "stale_version" && (action.retries || 0) < 3) {
      // The game changed before the action arrived: it was not applied. Try again on the
      // newer view (which the server sends), unless the action no longer makes sense there.
      action.retries = (action.retries || 0) + 1;
      this.queue.unshift(action);
      if (typeof error.version === "number") this.minVersion = error.version;
    } else if (error.code === "rate_limited") {
      this.queue.unshift(action);
      setTimeout(() => this.pump(), 1000);
      this.render();
      return;
    } else if (error.code === "not_your_turn" || error.code === "game_ended") {
      this.queue = [];
      this.setFlash("That came too late for this turn.");
    } else if (error.code === "empty_utterance" || error.code === "utterance_too_long") {
      this.setFlash(error.message);
    }
    this.render();
    this.pump();
  }

  setConnected(connected) {
    this.connected = connected;
    if (!connected) {
      // Whatever was on its way may or may not have arrived: the next view tells.
      this.inflight = null;
      this.queue = [];
    }
    if (this.view) this.render();
  }

  // ------------------------------------------------------------ actions

  canSelect() {
    const v = this.view;
    return (
      v && v.seat === "listener" && v.phase === "selecting" && this.connected && !this.submitPending()
    );
  }

  clickTile(tangramId) {
    const v = this.view;
    if (!v || v.seat !== "listener" || v.phase === "ended") return;
    if (v.phase !== "selecting") {
      this.setFlash("Wait for the speaker's message before selecting.");
      this.render();
      return;
    }
    if (!this.canSelect()) return;
    const now = Date.now();
    const last = this.lastClick;
    this.lastClick = { id: tangramId, at: now };
    if (last && last.id === tangramId && now - last.at < DOUBLE_CLICK_MS) return; // a double click
    this.queue.push({ type: "click", tangram_id: tangramId });
    this.render();
    this.pump();
  }

  submit() {
    if (!this.canSelect()) return;
    this.submittedTurn = this.view.turn;
    this.queue.push({ type: "submit" });
    this.render();
    this.pump();
  }

  sendUtterance() {
    const v = this.view;
    if (!v || v.seat !== "speaker" || v.phase !== "speaking" || !this.connected) return;
    if (this.sendPending()) return;
    const text = this.input.value.replace(/\s+/g, " ").trim();
    if (!text) return;
    if (text.length > v.max_utterance_chars) {
      this.setFlash(`Messages are limited to ${v.max_utterance_chars} characters.`);
      this.render();
      return;
    }
    clearTimeout(this.draftTimer); // no draft may follow the message
    this.draftTimer = null;
    this.queue.push({ type: "send_utterance", text });
    this.render();
    this.pump();
  }

  submitPending() {
    return (
      this.queue.some((a) => a.type === "submit") ||
      (this.inflight !== null && this.inflight.action.type === "submit")
    );
  }

  sendPending() {
    return (
      this.queue.some((a) => a.type === "send_utterance") ||
      (this.inflight !== null && this.inflight.action.type === "send_utterance")
    );
  }

  stillValid(action, view) {
    if (view.phase === "ended") return false;
    if (action.type === "send_utterance") return view.seat === "speaker" && view.phase === "speaking";
    return view.seat === "listener" && view.phase === "selecting";
  }

  pump() {
    let changed = false;
    if (this.inflight && Date.now() - this.inflight.sentAt > INFLIGHT_LIMIT_MS) {
      this.inflight = null; // no answer: the newest view tells what happened
      changed = true;
    }
    const v = this.view;
    if (this.inflight || !v || !this.connected || v.version < this.minVersion) {
      if (changed && v) this.render();
      return;
    }
    while (this.queue.length) {
      const action = this.queue[0];
      changed = true;
      if (!this.stillValid(action, v)) {
        this.queue.shift();
        continue;
      }
      const frame = { ...action, version: v.version };
      delete frame.retries;
      if (!this.socket.send(frame)) return;
      this.queue.shift();
      this.inflight = { action, version: v.version, sentAt: Date.now() };
      setTimeout(() => this.pump(), INFLIGHT_LIMIT_MS + 100);
      break;
    }
    if (changed) this.render();
  }

  // ------------------------------------------------------------ drafts

  draftKey() {
    return `multiref.draft.${this.gameId}.${this.view ? this.view.turn : 0}`;
  }

  saveDraft() {
    if (!this.view) return;
    try {
      if (this.input.value) sessionStorage.setItem(this.draftKey(), this.input.value);
      else sessionStorage.removeItem(this.draftKey());
    } catch {
      /* storage full or disabled: the draft still goes to the server */
    }
  }

  /** Send what the speaker typed so far, at most about once a second (trailing edge). */
  scheduleDraft() {
    if (this.draftTimer) return;
    const wait = Math.max(0, 1000 - (Date.now() - this.lastDraftAt));
    this.draftTimer = setTimeout(() => {
      this.draftTimer = null;
      const v = this.view;
      if (!v || v.seat !== "speaker" || v.phase !== "speaking" || this.sendPending()) return;
      const text = this.input.value.slice(0, v.max_utterance_chars);
      if (text === this.lastDraftSent) return;
      if (this.socket.send({ type: "draft", text })) {
        this.lastDraftSent = text;
        this.lastDraftAt = Date.now();
      }
    }, wait);
  }

  setFlash(text) {
    this.flash = { text, until: Date.now() + 4000 };
    setTimeout(() => this.view && this.render(), 4100);
  }

  // ------------------------------------------------------------ rendering

  buildBoard(view) {
    this.board.replaceChildren();
    this.tiles.clear();
    const listener = view.seat === "listener";
    view.tiles.forEach((tile, i) => {
      const el = document.createElement(listener ? "button" : "div");
      if (listener) {
        el.type = "button";
        el.addEventListener("click", () => this.clickTile(tile.tangram_id));
      } else {
        el.setAttribute("role", "img");
      }
      el.className = "tile";
      el.dataset.testid = `tangram-${i}`;
      el.dataset.tangramId = tile.tangram_id;
      const img = document.createElement("img");
      img.src = `/tangrams/${encodeURIComponent(tile.tangram_id)}.svg`;
      img.alt = "";
      img.draggable = false;
      img.decoding = "async";
      const badge = document.createElement("span");
      badge.className = "badge";
      badge.setAttribute("aria-hidden", "true");
      el.append(img, badge);
      this.board.append(el);
      this.tiles.set(tile.tangram_id, el);
    });
  }

  /** The selection as the player should see it: the server's, plus clicks still on their way. */
  displayedSelection() {
    const selected = new Set(this.view.tiles.filter((t) => t.selected).map((t) => t.tangram_id));
    const pending = [...this.queue];
    if (this.inflight) pending.unshift(this.inflight.action);
    for (const a of pending) {
      if (a.type !== "click") continue;
      if (selected.has(a.tangram_id)) selected.delete(a.tangram_id);
      else selected.add(a.tangram_id);
    }
    return selected;
  }

  render() {
    const v = this.view;
    if (!v) return;
    const screen = $("screen-game");
    screen.dataset.role = v.seat;
    screen.dataset.phase = v.phase;
    const speaker = v.seat === "speaker";
    const ended = v.phase === "ended";
    $("role-label").textContent = speaker ? "You are the Speaker" : "You are the Listener";
    $("turn-counter").textContent =
      v.turn > 0 ? `Turn ${v.turn} of ${v.max_turns}` : `${v.max_turns} turns at most`;
    this.renderTiles(v);
    this.renderStatus(v);
    this.renderMessages(v);
    $("history-title").textContent = speaker ? "Your messages" : "Speaker's messages";
    $("board-caption").textContent = speaker
      ? ended
        ? "Dark frame = target. Green = correctly selected, red = wrongly selected."
        : "The pictures in a dark frame are the targets. Your partner sees them in another order."
      : ended
        ? "The targets are now shown in a dark frame. Green = correct, red = wrong."
        : v.phase === "selecting"
          ? "Click a picture to select it, click again to deselect. Only the speaker knows the targets."
          : "Wait for the speaker's message, then select the pictures it describes.";
    $("board-legend").textContent = speaker && !ended
      ? "Blue = your partner's selection (live). After they submit: green = correct, red = wrong."
      : "";
    $("composer").hidden = !speaker || ended;
    $("listener-controls").hidden = speaker || ended;
    $("leave-box").hidden = ended;
    if (speaker && !ended) this.renderComposer();
    if (!speaker && !ended) this.renderListenerControls(v);
    this.renderEnd(v);
    this.renderClock();
  }

  renderTiles(v) {
    const speaker = v.seat === "speaker";
    const ended = v.phase === "ended";
    const shown = speaker ? null : this.displayedSelection();
    const feedback = ended || (speaker && v.phase === "speaking" && v.last_submitted !== null);
    const submitted = new Set(ended ? v.tiles.filter((t) => t.selected).map((t) => t.tangram_id) : v.last_submitted || []);
    const interactive = this.canSelect();
    this.board.classList.toggle("is-idle", !speaker && !interactive);
    v.tiles.forEach((tile, i) => {
      const el = this.tiles.get(tile.tangram_id);
      if (!el) return;
      const selected = speaker ? tile.selected : shown.has(tile.tangram_id);
      const isTarget = tile.target === true;
      let fb = "";
      if (feedback && submitted.has(tile.tangram_id) && tile.target !== null && tile.target !== undefined) {
        fb = isTarget ? "correct" : "wrong";
      }
      el.classList.toggle("is-target", isTarget);
      el.classList.toggle("is-selected", selected && !fb);
      el.classList.toggle("fb-correct", fb === "correct");
      el.classList.toggle("fb-wrong", fb === "wrong");
      el.classList.toggle("is-pending", !speaker && selected !== tile.selected);
      el.dataset.selected = String(selected);
      el.dataset.feedback = fb;
      if (tile.target !== null && tile.target !== undefined) el.dataset.target = String(isTarget);
      else delete el.dataset.target;
      el.querySelector(".badge").textContent = fb === "wrong" ? "✗" : selected || fb ? "✓" : "";
      const parts = [`Tangram ${i + 1}`];
      if (isTarget) parts.push("target");
      if (fb === "correct") parts.push("selected, correct");
      else if (fb === "wrong") parts.push("selected, wrong");
      else if (speaker && selected) parts.push("selected by your partner");
      el.setAttribute("aria-label", parts.join(", "));
      if (!speaker) {
        el.setAttribute("aria-pressed", String(selected));
        el.setAttribute("aria-disabled", String(!interactive));
      }
    });
  }

  renderStatus(v) {
    let tone = "wait";
    let main = "";
    let note = "";
    const speaker = v.seat === "speaker";
    if (v.phase === "ended") {
      tone = v.outcome === "successful" ? "good" : v.outcome === "unsuccessful" ? "bad" : "warn";
      main =
        v.outcome === "successful"
          ? `Success! ${endReasonText(v)}`
          : v.outcome === "unsuccessful"
            ? `Game over. ${endReasonText(v)}`
            : endReasonText(v);
      note = v.forfeited
        ? "You left before the game ended, so there is no completion code for this game."
        : `Your completion code and pay are shown ${narrow() ? "below" : "on the right"}.`;
    } else if (v.phase === "waiting") {
      main = "Waiting for your partner to open the game…";
      note = "This usually takes a few seconds.";
    } else if (speaker) {
      if (v.phase === "speaking") {
        tone = "action";
        main = this.sendPending()
          ? "Sending your message…"
          : "Your turn: write one message about the pictures in a dark frame.";
        note =
          v.last_submitted !== null
            ? "Your partner's last selection: green = correct, red = wrong. Tell them what to change."
            : "Describe what the targets look like: your partner sees the pictures in a different order.";
      } else {
        main = "Your partner is selecting pictures…";
        note = "You see their clicks live in blue. You can write again in the next turn.";
      }
    } else if (v.phase === "speaking") {
      main = "Waiting for the speaker's message…";
      note =
        v.last_submitted !== null
          ? "Not all targets are selected yet. The speaker will tell you more."
          : `The message will appear ${narrow() ? "below the pictures" : "on the right"}. Then select the pictures it describes.`;
      if (this.autoSubmittedTurn && this.autoSubmittedTurn === v.turn - 1) {
        note = `Time ran out, so your selection was submitted automatically. ${note}`;
      }
    } else {
      tone = "action";
      main = this.submitPending()
        ? "Submitting your selection…"
        : "Select the pictures the speaker describes, then press Submit.";
      const last = v.messages.length ? v.messages[v.messages.length - 1] : null;
      note =
        last && last.turn === v.turn
          ? `The speaker says: “${last.text}”`
          : "Click a picture to select it, click it again to deselect.";
    }
    if (v.phase !== "ended") {
      if (v.idle_warning) {
        tone = "warn";
        main = speaker
          ? "Are you still there? Please send a message now, or the game will end."
          : "Are you still there? Please select pictures and press Submit now, or the game will end.";
      }
      if (!v.partner_connected) {
        tone = "warn";
        main = "Your partner lost their connection.";
        note = "Waiting for them to come back. If they do not return soon, the game ends and you get your completion code.";
      }
      if (!this.connected) {
        tone = "warn";
        main = "Reconnecting…";
        note = "Your game is kept. It continues as soon as the connection is back.";
      }
    }
    if (this.flash && this.flash.until > Date.now() && v.phase !== "ended") note = this.flash.text;
    const status = $("game-status");
    status.className = `status tone-${tone}`;
    status.dataset.tone = tone;
    if ($("status-main").textContent !== main) $("status-main").textContent = main;
    if ($("status-note").textContent !== note) $("status-note").textContent = note;
  }

  renderMessages(v) {
    // the phase is part of the key: the end screen changes the list's size, so scroll again then
    const key = JSON.stringify([v.phase === "ended", v.messages]);
    if (key === this.renderedMessages) return;
    this.renderedMessages = key;
    const list = $("message-history");
    list.replaceChildren();
    if (!v.messages.length) {
      const li = document.createElement("li");
      li.className = "empty";
      li.textContent = "No messages yet.";
      list.append(li);
    }
    for (const m of v.messages) {
      const li = document.createElement("li");
      li.dataset.turn = String(m.turn);
      const meta = document.createElement("span");
      meta.className = "meta";
      meta.textContent = m.auto ? `Turn ${m.turn} · sent automatically when time ran out` : `Turn ${m.turn}`;
      const text = document.createElement("span");
      text.className = "text";
      text.dataset.testid = "message-text";
      text.textContent = m.text; // never innerHTML: messages are typed by people
      li.append(meta, text);
      list.append(li);
    }
    // the newest message in view, once the layout around the list has settled
    list.scrollTop = list.scrollHeight;
    requestAnimationFrame(() => {
      list.scrollTop = list.scrollHeight;
    });
  }

  renderComposer() {
    const v = this.view;
    if (!v) return;
    const max = v.max_utterance_chars;
    this.input.maxLength = max;
    const open = v.phase === "speaking" && this.connected;
    const sending = this.sendPending();
    this.input.disabled = !open || sending;
    this.input.placeholder = open
      ? "Describe the pictures in a dark frame…"
      : v.phase === "selecting"
        ? "Your partner is selecting. You can write in the next turn."
        : "";
    const cut = $("composer-note");
    if (cut && cut.textContent !== this.cutNotice) cut.textContent = this.cutNotice;
    const len = this.input.value.length;
    const counter = $("char-counter");
    counter.textContent = `${len} / ${max}`;
    counter.classList.toggle("over", len > max);
    this.sendButton.disabled = !open || sending || !this.input.value.trim() || len > max;
    this.sendButton.textContent = sending ? "Sending…" : "Send";
  }

  renderListenerControls(v) {
    const n = this.displayedSelection().size;
    $("selection-count").textContent = `${n} picture${n === 1 ? "" : "s"} selected`;
    const pending = this.submitPending();
    this.submitButton.disabled = !this.canSelect();
    this.submitButton.textContent = pending ? "Submitting…" : "Submit selection";
  }

  renderEnd(v) {
    const card = $("end-card");
    if (v.phase !== "ended") {
      card.hidden = true;
      if (this.endRendered !== null) {
        card.replaceChildren();
        this.endRendered = null;
      }
      return;
    }
    const key = JSON.stringify([v.end_reason, v.pay, v.completion_code, v.redirect_url, v.forfeited]);
    card.hidden = false;
    if (key === this.endRendered) return;
    const first = this.endRendered === null;
    this.endRendered = key;
    // on a phone the end card moves to the top (app.css): show it, wherever the page was scrolled
    if (first && narrow()) requestAnimationFrame(() => window.scrollTo({ top: 0 }));
    buildEndCard(card, {
      title: endTitle(v),
      tone: v.outcome === "successful" ? "good" : v.outcome === "unsuccessful" ? "bad" : "",
      message: endReasonText(v),
      pay: v.pay,
      code: v.completion_code,
      prolificUrl: v.redirect_url,
      forfeited: v.forfeited,
      mturkSubmit: this.config.mturk_submit,
      showBonuses: true,
    });
  }

  renderClock() {
    const v = this.view;
    if (!v) return;
    const now = this.socket.serverNow();
    const timer = $("turn-timer");
    let label = "Time left";
    let value = "–:––";
    let low = false;
    if (v.phase === "ended") {
      label = "Game over";
      value = "";
    } else if (v.deadline) {
      const left = v.deadline - now;
      const mine = (v.phase === "speaking") === (v.seat === "speaker");
      if (v.phase === "speaking") label = mine ? "Time to write" : "Speaker's time";
      else if (v.phase === "selecting") label = mine ? "Time to select" : "Listener's time";
      value = formatClock(left);
      low = left <= 10;
    }
    if ($("timer-label").textContent !== label) $("timer-label").textContent = label;
    if ($("timer-value").textContent !== value) $("timer-value").textContent = value;
    timer.classList.toggle("low", low);
    timer.classList.toggle("ended", v.phase === "ended");
    timer.setAttribute("aria-label", `${label} ${value}`.trim());
    const typing = $("typing-time");
    if (v.seat === "speaker" && v.phase === "speaking") {
      const end = Math.max(v.speaker_deadline || 0, v.deadline || 0);
      const left = Math.max(0, Math.ceil(end - now));
      typing.textContent = `${left} s left to type`;
      typing.classList.toggle("low", left <= 10);
    } else {
      typing.textContent = "";
      typing.classList.remove("low");
    }
    if (this.flash && this.flash.until <= Date.now()) {
      this.flash = null;
      this.renderStatus(v);
    }
  }
}
