// MultiRef Live admin dashboard. Plain JavaScript, no dependencies.
// Everything that comes from the server is written with textContent (never innerHTML):
// utterances and ids are untrusted.
"use strict";

(function () {
  const body = document.body;
  const page = body.dataset.page;
  const csrf = body.dataset.csrf || "";
  const gameId = body.dataset.gameId || "";

  function el(tag, props, children) {
    const node = document.createElement(tag);
    if (props) {
      for (const [k, v] of Object.entries(props)) {
        if (v === undefined || v === null) continue;
        if (k === "text") node.textContent = String(v);
        else if (k === "className") node.className = v;
        else if (k === "dataset") Object.assign(node.dataset, v);
        else node.setAttribute(k, String(v));
      }
    }
    for (const c of children || []) {
      if (c === null || c === undefined) continue;
      node.appendChild(typeof c === "string" ? document.createTextNode(c) : c);
    }
    return node;
  }

  function replaceRows(tbody, rows, emptyText, columns) {
    tbody.replaceChildren();
    if (!rows.length) {
      tbody.appendChild(el("tr", { className: "empty" }, [el("td", { colspan: columns, text: emptyText })]));
      return;
    }
    for (const r of rows) tbody.appendChild(r);
  }

  async function getJSON(url) {
    const r = await fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } });
    if (r.status === 401) {
      window.location.assign("/admin/login");
      throw new Error("logged out");
    }
    if (!r.ok) throw new Error(url + ": " + r.status);
    return r.json();
  }

  function time(epoch) {
    if (epoch === null || epoch === undefined) return "";
    return new Date(epoch * 1000).toLocaleString();
  }

  function td(text) {
    return el("td", { text: text === null || text === undefined ? "" : text });
  }

  function endForm(id, next) {
    const select = el("select", { name: "reason", "aria-label": "reason" });
    const reasons = document.getElementById("end-reasons");
    if (reasons) select.appendChild(reasons.content.cloneNode(true));
    const children = [
      el("input", { type: "hidden", name: "csrf", value: csrf }),
      select,
      el("input", { type: "text", name: "note", placeholder: "note (shown in the audit log)", maxlength: 500, "aria-label": "note" }),
      el("button", { type: "submit", text: "End" }),
    ];
    if (next) children.splice(1, 0, el("input", { type: "hidden", name: "next", value: next }));
    return el("form", { method: "post", action: "/admin/games/" + encodeURIComponent(id) + "/end", className: "inline end-game" }, children);
  }

  // ------------------------------------------------------------ overview

  function liveRow(g) {
    const link = el("a", { href: "/admin/games/" + encodeURIComponent(g.game_id), text: g.game_id.slice(0, 12) });
    return el("tr", { dataset: { gameId: g.game_id } }, [
      el("td", null, [link]),
      td(g.system),
      td(g.checkpoint),
      td(g.turn),
      td(g.phase),
      td(Math.floor(g.elapsed_seconds) + " s"),
      el("td", null, [el("code", { text: g.speaker_id || "" })]),
      el("td", null, [el("code", { text: g.listener_id || (g.listener_kind === "model" ? "model" : "") })]),
      el("td", null, [endForm(g.game_id)]),
    ]);
  }

  function pct(x) {
    return x === null || x === undefined ? "–" : (100 * x).toFixed(1) + " %";
  }

  function renderOverview(o) {
    document.getElementById("round").textContent = o.round === null ? "none" : String(o.round);
    document.getElementById("lobby-size").textContent = String(o.lobby_size);
    document.getElementById("live-count").textContent = String(o.live_games.length);
    document.getElementById("refreshed").textContent = new Date().toLocaleTimeString();
    // Do not rebuild the live table while someone types a note into one of its forms.
    const live = document.getElementById("live-games");
    if (!live.contains(document.activeElement)) {
      replaceRows(live, o.live_games.map(liveRow), "No live game.", 9);
    }
    replaceRows(
      document.getElementById("stats"),
      o.stats.map((x) => el("tr", null, [td(x.system), td(x.started), td(x.live), td(x.completed), td(x.aborted),
        td(pct(x.success_rate)), td(x.mean_turns === null ? "–" : x.mean_turns.toFixed(1))])),
      "No game this round yet.", 7);
    replaceRows(
      document.getElementById("workers"),
      o.workers.map((w) => el("tr", { className: w.healthy ? "ok" : "bad" }, [td(w.worker_id), td(w.host), td(w.status),
        td(w.seconds_since_beat + " s ago"), td(w.systems.join(", ")), td(w.loaded_checkpoints.join(", ")),
        td(w.served === null || w.served === undefined ? "" : w.served)])),
      "No worker has reported.", 7);
    replaceRows(
      document.getElementById("audit"),
      o.audit.map((e) => el("tr", null, [td(time(e.at)), el("td", null, [el("code", { text: e.actor })]), td(e.action),
        td(e.target), el("td", { className: "details", text: JSON.stringify(e.details) })])),
      "Nothing yet.", 5);
  }

  function localTimes() {
    for (const cell of document.querySelectorAll("[data-time]")) {
      cell.textContent = time(Number(cell.dataset.time));
    }
  }

  async function pollOverview() {
    try {
      renderOverview(await getJSON("/admin/api/overview"));
    } catch (e) {
      /* keep the last view; try again */
    }
    setTimeout(pollOverview, 2000);
  }

  // ------------------------------------------------------------ screens

  function tile(t, seat) {
    const classes = ["tile"];
    if (t.target === true) classes.push("target");
    if (t.selected) {
      classes.push("selected");
      if (t.target === true) classes.push("good");
      else if (t.target === false) classes.push("wrong");
    }
    const img = el("img", { src: "/tangrams/" + encodeURIComponent(t.tangram_id), alt: t.tangram_id, loading: "lazy" });
    return el("figure", { className: classes.join(" "), dataset: { tangram: t.tangram_id, seat: seat } }, [
      img,
      el("figcaption", { text: t.tangram_id }),
    ]);
  }

  function renderBoard(id, view, seat) {
    const board = document.getElementById(id);
    board.replaceChildren(...view.tiles.map((t) => tile(t, seat)));
  }

  function renderMessages(view) {
    const list = document.getElementById("messages");
    list.replaceChildren(
      ...view.messages.map((m) =>
        el("li", { className: "message" }, [
          el("span", { className: "turn", text: "turn " + m.turn + (m.auto ? " (auto-sent)" : "") }),
          el("span", { className: "text", text: m.text }),
        ])
      )
    );
  }

  /** "select G I J" with a thumbnail of the picture each letter names (the listener's order). */
  function actionCell(action, letters) {
    const cell = el("td", { className: "action" });
    if (!action) return cell;
    for (const word of String(action).split(/\s+/)) {
      const i = /^[A-J]$/.test(word) ? word.charCodeAt(0) - 65 : -1;
      if (i >= 0 && i < letters.length) {
        cell.appendChild(el("span", { className: "letter", title: letters[i], dataset: { tangram: letters[i] } }, [
          el("img", { src: "/tangrams/" + encodeURIComponent(letters[i]), alt: word + ": " + letters[i] }),
          el("b", { text: word }),
        ]));
      } else {
        cell.appendChild(el("span", { className: "word", text: word }));
      }
    }
    return cell;
  }

  function renderGame(d) {
    document.getElementById("g-turn").textContent = String(d.turn);
    document.getElementById("g-phase").textContent = d.phase;
    document.getElementById("g-outcome").textContent = d.game.outcome || "";
    document.getElementById("g-reason").textContent = d.game.end_reason || "";
    renderBoard("speaker-board", d.screens.speaker, "speaker");
    renderBoard("listener-board", d.screens.listener, "listener");
    renderMessages(d.screens.speaker);
    const letters = d.screens.listener.tiles.map((t) => t.tangram_id); // A-J: the listener's order
    replaceRows(
      document.getElementById("model-turns"),
      d.model_turns.map((r) => el("tr", null, [td(r.turn), td(r.status), actionCell(r.action, letters),
        td(r.prob_action === null ? "" : r.prob_action.toFixed(3)), td(r.latency_s === null ? "" : r.latency_s.toFixed(2) + " s")])),
      "–", 5);
    const end = document.getElementById("end-section");
    if (end) end.hidden = d.game.status !== "live";
  }

  async function pollGame() {
    let again = true;
    try {
      const d = await getJSON("/admin/api/games/" + encodeURIComponent(gameId));
      renderGame(d);
      again = d.game.status === "live";
    } catch (e) {
      /* try again */
    }
    setTimeout(pollGame, again ? 1000 : 5000);
  }

  // ------------------------------------------------------------ replay

  async function startReplay() {
    const data = await getJSON("/admin/api/games/" + encodeURIComponent(gameId) + "/replay");
    document.getElementById("r-system").textContent = data.game.system || "";
    document.getElementById("r-outcome").textContent = (data.game.outcome || "") + " " + (data.game.end_reason || "");
    const steps = data.steps;
    const slider = document.getElementById("slider");
    slider.max = String(steps.length - 1);
    let i = 0;
    function show(k) {
      i = Math.max(0, Math.min(steps.length - 1, k));
      slider.value = String(i);
      const step = steps[i];
      document.getElementById("position").textContent = (i + 1) + " / " + steps.length + " · " + time(step.at);
      document.getElementById("step-type").textContent = step.type;
      const detail = Object.assign({}, step.event);
      delete detail.type;
      delete detail.at;
      document.getElementById("step-detail").textContent = JSON.stringify(detail);
      renderBoard("speaker-board", step.screens.speaker, "speaker");
      renderBoard("listener-board", step.screens.listener, "listener");
      renderMessages(step.screens.speaker);
    }
    document.getElementById("first").addEventListener("click", () => show(0));
    document.getElementById("prev").addEventListener("click", () => show(i - 1));
    document.getElementById("next").addEventListener("click", () => show(i + 1));
    document.getElementById("last").addEventListener("click", () => show(steps.length - 1));
    slider.addEventListener("input", () => show(Number(slider.value)));
    document.addEventListener("keydown", (ev) => {
      if (ev.key === "ArrowRight") show(i + 1);
      if (ev.key === "ArrowLeft") show(i - 1);
    });
    show(0);
  }

  // ------------------------------------------------------------ start

  localTimes();
  for (const form of document.querySelectorAll("form.end-game")) {
    form.dataset.ready = "1";
  }
  if (page === "overview") setTimeout(pollOverview, 2000);
  if (page === "game") pollGame();
  if (page === "replay") startReplay();
})();
