// The annotator's page: one turn at a time, answers by click or key. The server decides what
// is shown (the targets come only after the feedback answer); this script only renders it.
"use strict";
(() => {
  // The link is /annotate#TOKEN: the fragment never reaches the server (nor its logs).
  const token = decodeURIComponent(location.hash.slice(1));
  const $ = (id) => document.getElementById(id);
  let state = null;
  let busy = false;

  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "class") e.className = v;
      else if (k === "text") e.textContent = v;
      else e.setAttribute(k, v);
    }
    for (const c of children) if (c) e.append(c);
    return e;
  }

  async function call(method, path, body) {
    if (busy) return;
    busy = true;
    document.body.classList.add("busy");
    try {
      const r = await fetch("/annotate/api/" + path, {
        method,
        headers: { Authorization: "Bearer " + token, "Content-Type": "application/json" },
        body: body ? JSON.stringify(body) : undefined,
      });
      const data = await r.json().catch(() => ({}));
      if (!r.ok) {
        showError(typeof data.detail === "string" ? data.detail : "The server refused (" + r.status + ").");
        if (r.status === 409) await refresh(true);
        return;
      }
      showError("");
      render(data);
    } catch (e) {
      showError("No connection to the server; your answers so far are saved. Try again.");
    } finally {
      busy = false;
      document.body.classList.remove("busy");
    }
  }

  async function refresh(force) {
    if (force) busy = false;
    await call("GET", "current");
  }

  function showError(text) {
    $("error").textContent = text;
    $("error").hidden = !text;
  }

  function tile(t) {
    const classes = ["tile"];
    if (t.change === "selected") classes.push("sel");
    else if (t.change === "deselected") classes.push("desel");
    else if (t.before && t.after) classes.push("kept");
    if (t.target === true) classes.push("target");
    const mark = t.change === "selected" ? "+ selected" : t.change === "deselected" ? "− deselected" : t.after ? "selected" : "";
    const fig = el("figure", {
      class: classes.join(" "),
      "data-testid": "tile-" + t.letter,
      "data-change": t.change || "none",
      "data-selected": String(t.after),
      "data-target": t.target === null ? "hidden" : String(t.target),
    },
      el("img", { src: t.image, alt: "picture " + t.letter }),
      el("figcaption", {}, el("span", { class: "letter", text: t.letter }), el("span", { class: "mark", text: mark }),
        t.target === true ? el("span", { class: "tgt-mark", text: "target" }) : null));
    return fig;
  }

  function render(data) {
    state = data;
    $("who").textContent = data.annotator;
    $("done").textContent = String(data.progress.done);
    $("remaining").textContent = String(data.progress.remaining);
    $("undo").disabled = !data.can_undo;
    const cur = data.current;
    $("finished").hidden = !!cur;
    $("work").hidden = !cur;
    $("skip").disabled = !cur;
    if (!cur) return;
    $("board").replaceChildren(...cur.tiles.map(tile));
    $("target-legend").hidden = !cur.targets_shown;
    $("dialogue").replaceChildren(...cur.dialogue.map((d) =>
      el("li", { class: d.current ? "current" : "" },
        el("div", { class: "msg speaker" }, el("span", { class: "who", text: "Speaker" }), el("span", { class: "text", text: d.speaker })),
        d.listener === null ? null : el("div", { class: "msg listener", "data-testid": d.current ? "current-action" : "past-action" },
          el("span", { class: "who", text: d.current ? "Listener (this action)" : "Listener" }), el("span", { class: "text", text: d.listener })))));
    $("dialogue").scrollTop = $("dialogue").scrollHeight;  // the turn being judged is the last one
    $("next-message").textContent = cur.next_message || "";
    const feedbackStep = cur.step === "feedback";
    $("q-feedback").hidden = !feedbackStep;
    $("q-action").hidden = feedbackStep;
    $("feedback-given").textContent = cur.feedback || "";
    $("revised-note").hidden = !(feedbackStep && cur.feedback_revised);
    document.body.dataset.step = cur.step;
    document.body.dataset.item = String(cur.item);
  }

  function answer(question, value) {
    if (!state || !state.current || state.current.step !== question) return;
    call("POST", "answer", { item: state.current.item, [question]: value });
  }

  const KEYS = { feedback: ["positive", "neutral", "negative"], action: ["correct", "partly", "wrong"] };

  document.addEventListener("click", (e) => {
    const b = e.target.closest("button[data-answer]");
    if (b) answer(b.dataset.answer, b.dataset.value);
  });
  $("skip").addEventListener("click", () => state && state.current && call("POST", "skip", { item: state.current.item }));
  $("undo").addEventListener("click", () => call("POST", "undo"));
  document.addEventListener("keydown", (e) => {
    if (e.ctrlKey || e.metaKey || e.altKey || e.repeat) return;
    const k = e.key.toLowerCase();
    if (["1", "2", "3"].includes(k) && state && state.current) {
      answer(state.current.step, KEYS[state.current.step][Number(k) - 1]);
    } else if (k === "s") {
      $("skip").click();
    } else if (k === "u" || k === "z") {
      if (!$("undo").disabled) $("undo").click();
    } else {
      return;
    }
    e.preventDefault();
  });
  refresh();
})();
