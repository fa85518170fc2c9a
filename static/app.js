// The crowdworker's way through the study: study link -> join -> consent -> instructions
// (-> quiz) -> lobby -> game -> end. One page; the participant token is kept in sessionStorage
// so that a reload (or a dropped connection) resumes exactly where the worker was.

const version = new URL(import.meta.url).search; // the same ?v= for every module of this page
const { GameSocket } = await import(`./connection.js${version}`);
const { GameScreen, buildEndCard, formatClock } = await import(`./game.js${version}`);

const $ = (id) => document.getElementById(id);
const config = JSON.parse($("page-config").textContent);

// Only the crowd platforms' parameters are passed on (plus the local test mode's).
const STUDY_KEYS = ["PROLIFIC_PID", "STUDY_ID", "SESSION_ID", "workerId", "assignmentId", "hitId", "worker", "platform"];
const query = new URLSearchParams(location.search);
const studyParams = {};
for (const key of STUDY_KEYS) if (query.get(key)) studyParams[key] = query.get(key);
const linkKey = JSON.stringify(studyParams);
config.mturk_submit = mturkSubmitTarget();

/** Where an MTurk worker's end screen posts the HIT (ExternalQuestion): only to MTurk itself. */
function mturkSubmitTarget() {
  const assignmentId = query.get("assignmentId");
  const submitTo = query.get("turkSubmitTo");
  if (!assignmentId || assignmentId === "ASSIGNMENT_ID_NOT_AVAILABLE" || !submitTo) return null;
  let origin;
  try {
    origin = new URL(submitTo).origin;
  } catch {
    return null;
  }
  if (!config.mturk_submit_origins.includes(origin)) return null;
  return { action: `${origin}/mturk/externalSubmit`, assignmentId };
}
const STORE = "multiref.session";

const QUIZ = config.quiz; // questions, options and hints; the server checks the answers

let session = null; // {link, token, participant_id, status, ready}
let socket = null;
let game = null;
let current = "loading";
let rejoined = false;
let lobbyTimer = null;
let startedAlert = false;

// ------------------------------------------------------------ screens

const TITLES = {
  loading: "Picture game",
  notice: "Picture game",
  consent: "Consent · Picture game",
  instructions: "How to play · Picture game",
  quiz: "Quiz · Picture game",
  lobby: "Waiting for a partner · Picture game",
  game: "Playing · Picture game",
  released: "Thank you · Picture game",
};

function showScreen(name) {
  for (const section of document.querySelectorAll("main > .screen")) {
    section.hidden = section.id !== `screen-${name}`;
  }
  if (name !== "lobby") clearInterval(lobbyTimer);
  const changed = current !== name;
  current = name;
  document.body.dataset.screen = name;
  if (!startedAlert) document.title = TITLES[name] || TITLES.loading;
  if (changed && name !== "game" && name !== "loading") {
    const heading = document.querySelector(`#screen-${name} h1, #screen-${name} h2`);
    if (heading) {
      heading.tabIndex = -1;
      heading.focus({ preventScroll: true });
    }
    window.scrollTo(0, 0);
  }
}

function showNotice(title, message, retry) {
  if (socket) {
    socket.stop();
    socket = null;
  }
  $("connection-banner").hidden = true;
  $("notice-title").textContent = title;
  $("notice-message").textContent = message;
  $("notice-action").hidden = !retry;
  $("notice-retry").onclick = retry || null;
  $("notice-retry").textContent = "Try again";
  showScreen("notice");
}

function networkTrouble(retry) {
  showNotice(
    "Cannot reach the study server",
    "Please check your internet connection and try again. Your progress is kept.",
    retry,
  );
}

// ------------------------------------------------------------ session and HTTP

function loadSession() {
  try {
    const s = JSON.parse(sessionStorage.getItem(STORE) || "null");
    if (s && s.link === linkKey && s.token) return s;
  } catch {
    /* unreadable: start again */
  }
  return null;
}

function saveSession() {
  try {
    sessionStorage.setItem(STORE, JSON.stringify(session));
  } catch {
    /* storage disabled: a reload joins again, which resumes the same worker on the server */
  }
}

function forgetSession() {
  session = null;
  try {
    sessionStorage.removeItem(STORE);
  } catch {
    /* ignore */
  }
}

async function api(method, path, body) {
  const headers = {};
  if (session && session.token) headers.Authorization = `Bearer ${session.token}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const res = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  let data = null;
  try {
    data = await res.json();
  } catch {
    /* not JSON */
  }
  return { status: res.status, ok: res.ok, data };
}

const REFUSAL_TITLES = {
  preview: "Preview",
  blocked: "You cannot take part in this study",
  game_limit: "Thank you for playing!",
  bad_request: "This study link is incomplete",
};

async function join() {
  let res;
  try {
    res = await api("POST", "/api/join", { params: studyParams });
  } catch {
    networkTrouble(boot);
    return false;
  }
  if (res.status === 403 && res.data) {
    showNotice(REFUSAL_TITLES[res.data.code] || "You cannot take part right now", res.data.message || "");
    return false;
  }
  if (!res.ok || !res.data) {
    showNotice("Something went wrong", "The study server could not register you. Please try again in a minute.", boot);
    return false;
  }
  session = {
    link: linkKey,
    token: res.data.token,
    participant_id: res.data.participant_id,
    status: res.data.status,
    ready: false,
  };
  saveSession();
  return true;
}

async function boot() {
  showScreen("loading");
  if (studyParams.assignmentId === "ASSIGNMENT_ID_NOT_AVAILABLE") {
    showNotice(
      "Preview",
      "This is a preview of a two-player picture game. Accept the HIT to start: you will read " +
        "a consent form and short instructions, then play with a partner for up to about 10 minutes. " +
        "How the game works is shown below.",
    );
    // the rules and the worked example, to read only
    $("screen-instructions").hidden = false;
    $("instructions-continue").hidden = true;
    for (const step of document.querySelectorAll("#screen-instructions .step")) step.hidden = true;
    return;
  }
  session = loadSession();
  if (session) {
    let res;
    try {
      res = await api("GET", "/api/participant");
    } catch {
      networkTrouble(boot);
      return;
    }
    if (res.ok && res.data) {
      session.status = res.data.status;
      saveSession();
    } else if (res.status === 401 || res.status === 404) {
      forgetSession();
    } else {
      networkTrouble(boot);
      return;
    }
  }
  if (!session && !(await join())) return;
  route();
}

function route() {
  const status = session.status;
  if (status === "arrived") showConsent();
  else if (status === "consented" && !session.ready) showInstructions();
  else connect();
}

// ------------------------------------------------------------ consent, instructions, quiz

function showConsent() {
  $("consent-error").hidden = true;
  $("consent-accept").disabled = false;
  showScreen("consent");
}

$("consent-accept").addEventListener("click", async () => {
  const button = $("consent-accept");
  button.disabled = true;
  let res;
  try {
    res = await api("POST", "/api/consent");
  } catch {
    $("consent-error").textContent = "Could not reach the server. Please try again.";
    $("consent-error").hidden = false;
    button.disabled = false;
    return;
  }
  if (res.status === 401 || res.status === 404) {
    forgetSession();
    boot();
    return;
  }
  if (!res.ok) {
    $("consent-error").textContent = "Something went wrong. Please try again.";
    $("consent-error").hidden = false;
    button.disabled = false;
    return;
  }
  session.status = (res.data && res.data.status) || "consented";
  saveSession();
  route();
});

$("consent-decline").addEventListener("click", () => {
  showNotice(
    "You chose not to take part",
    "Thank you for your interest. You can close this tab now. If you came from Prolific, please " +
      "return the study there; on MTurk, return the HIT.",
  );
});

function showInstructions() {
  showScreen("instructions");
}

$("instructions-continue").addEventListener("click", () => {
  if (config.require_quiz) showQuiz();
  else becomeReady();
});

function buildQuiz() {
  const form = $("quiz-form");
  form.replaceChildren();
  QUIZ.forEach((item, qi) => {
    const fs = document.createElement("fieldset");
    fs.className = "question";
    fs.dataset.testid = `quiz-question-${qi}`;
    const legend = document.createElement("legend");
    legend.textContent = `${qi + 1}. ${item.q}`;
    fs.append(legend);
    item.options.forEach((text, oi) => {
      const label = document.createElement("label");
      const input = document.createElement("input");
      input.type = "radio";
      input.name = `q${qi}`;
      input.value = String(oi);
      label.append(input, document.createTextNode(text));
      fs.append(label);
    });
    const why = document.createElement("p");
    why.className = "why";
    why.hidden = true;
    why.textContent = item.why;
    fs.append(why);
    form.append(fs);
  });
}

function showQuiz() {
  if (!$("quiz-form").children.length) buildQuiz();
  $("quiz-result").hidden = true;
  showScreen("quiz");
}

$("quiz-back").addEventListener("click", showInstructions);

$("quiz-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const form = $("quiz-form");
  const result = $("quiz-result");
  const submit = $("quiz-submit");
  const answers = QUIZ.map((_, qi) => {
    const chosen = form.querySelector(`input[name="q${qi}"]:checked`);
    return chosen === null ? null : Number(chosen.value);
  });
  submit.disabled = true;
  let res;
  try {
    res = await api("POST", "/api/quiz", { answers });
  } catch {
    res = null;
  } finally {
    submit.disabled = false;
  }
  if (res && (res.status === 401 || res.status === 404)) {
    forgetSession();
    boot();
    return;
  }
  if (res && res.status === 409) {
    showConsent();
    return;
  }
  if (!res || !res.ok || !res.data) {
    result.textContent = "Could not reach the server. Please try again.";
    result.hidden = false;
    return;
  }
  const wrong = new Set(res.data.wrong);
  QUIZ.forEach((_, qi) => {
    const fs = form.children[qi];
    fs.classList.toggle("wrong", wrong.has(qi));
    fs.querySelector(".why").hidden = !wrong.has(qi);
  });
  if (wrong.size) {
    result.textContent =
      wrong.size === 1 ? "One answer is not right yet. Read the hint and try again." : `${wrong.size} answers are not right yet. Read the hints and try again.`;
    result.hidden = false;
    form.querySelector(".question.wrong input").focus();
    return;
  }
  result.hidden = true;
  becomeReady();
});

function becomeReady() {
  session.ready = true;
  saveSession();
  connect();
}

// ------------------------------------------------------------ live connection

// ------------------------------------------------------------ one tab per worker

// Two tabs of the same worker would both play the same seat. The newest tab takes over; the
// others stop and say so (with a button to take the game back).
const TAB_ID = `${Date.now()}-${Math.random().toString(36).slice(2)}`;
const tabs = "BroadcastChannel" in window ? new BroadcastChannel("multiref.tabs") : null;

function claimThisTab() {
  if (tabs && session && session.participant_id) {
    tabs.postMessage({ participant: session.participant_id, tab: TAB_ID });
  }
}

if (tabs) {
  tabs.onmessage = (event) => {
    const { participant, tab } = event.data || {};
    if (!session || participant !== session.participant_id || tab === TAB_ID) return;
    if (current === "released" || current === "notice") return;
    showNotice(
      "This study is open in another tab",
      "You opened the study again in another tab or window, and the game continues there. " +
        "Please use that tab and close this one, so that your moves are not sent twice.",
      () => {
        showScreen("loading");
        claimThisTab();
        connect();
      },
    );
    $("notice-retry").textContent = "Continue in this tab instead";
    document.body.dataset.tab = "replaced";
  };
}

function connect() {
  if (socket) return;
  claimThisTab();
  if (current !== "game" && current !== "lobby") showScreen("loading");
  socket = new GameSocket({ token: session.token, onFrame, onStatus });
  if (!game) {
    game = new GameScreen({ config, socket, onEnded, fetchCode });
  } else {
    game.socket = socket;
  }
  socket.start();
}

function onStatus(status, attempt) {
  const banner = $("connection-banner");
  if (status === "open") {
    banner.hidden = true;
    if (game) game.setConnected(true);
  } else if (status === "closed") {
    $("connection-text").textContent =
      attempt > 3 ? "Still reconnecting… Check your internet connection." : "Connection lost. Reconnecting…";
    banner.hidden = false;
    if (game) game.setConnected(false);
  }
}

function onFrame(frame) {
  switch (frame.type) {
    case "welcome":
      session.status = frame.status;
      session.participant_id = frame.participant_id;
      saveSession();
      break;
    case "lobby":
      showLobby(frame);
      break;
    case "state":
      if (current !== "game") {
        showScreen("game");
        if (frame.view.phase !== "ended") alertGameStarted();
      }
      game.update(frame.view);
      break;
    case "released":
      showReleased(frame);
      break;
    case "error":
      onServerError(frame);
      break;
    default:
      break; // pong: handled by the socket
  }
}

function onServerError(frame) {
  if (frame.code === "bad_token") {
    forgetSession();
    if (socket) socket.stop();
    socket = null;
    if (!rejoined) {
      rejoined = true; // the server forgot us (a new database?): join once more
      boot();
    } else {
      showNotice("This link is not valid", frame.message);
    }
    return;
  }
  if (frame.code === "consent_required") {
    socket.stop();
    socket = null;
    session.status = "arrived";
    saveSession();
    showConsent();
    return;
  }
  if (frame.code === "quiz_required") {
    socket.stop();
    socket = null;
    session.ready = false;
    saveSession();
    showQuiz();
    return;
  }
  if (frame.code === "too_many_connections") {
    $("connection-text").textContent = "Too many open connections from your network. Retrying…";
    return;
  }
  if (game) game.onError(frame);
}

function onEnded(view) {
  if (session.status !== "completed") {
    session.status = "completed";
    saveSession();
  }
  if (view.completion_code && socket) {
    // Nothing changes after the end: let the connection go, so no "reconnecting" can show.
    const s = socket;
    setTimeout(() => s.stop(), 2000);
  }
}

async function fetchCode() {
  try {
    const res = await api("GET", "/api/participant");
    return res.ok && res.data ? res.data : null;
  } catch {
    return null;
  }
}

function alertGameStarted() {
  if (!document.hidden) return;
  startedAlert = true;
  document.title = "▶ Your game has started!";
  const restore = () => {
    if (document.hidden) return;
    startedAlert = false;
    document.title = TITLES[current];
    document.removeEventListener("visibilitychange", restore);
  };
  document.addEventListener("visibilitychange", restore);
}

// ------------------------------------------------------------ lobby and release

function showLobby(frame) {
  const since = performance.now() - frame.waiting_seconds * 1000;
  const timeout = frame.timeout_seconds;
  const after =
    frame.on_timeout === "model"
      ? "you will play with a computer partner instead."
      : "you are paid for your waiting time and get a completion code.";
  const others = Math.max(0, (frame.waiting_players || 1) - 1);
  $("lobby-others").textContent =
    others > 0 ? `${others} other worker${others === 1 ? " is" : "s are"} waiting too.` : "";
  const update = () => {
    const waited = (performance.now() - since) / 1000;
    $("lobby-waited").textContent = formatClock(waited);
    const left = timeout - waited;
    $("lobby-timeout").textContent =
      left > 0
        ? `If no partner is found within ${formatClock(left)}, ${after}`
        : `No partner yet: ${frame.on_timeout === "model" ? "starting a game with a computer partner" : "preparing your completion code"}…`;
  };
  update();
  showScreen("lobby");
  clearInterval(lobbyTimer);
  lobbyTimer = setInterval(update, 1000);
}

function showReleased(frame) {
  $("end-card").replaceChildren(); // one completion code on the page
  $("end-card").hidden = true;
  buildEndCard($("released-card"), {
    title: frame.reason === "lobby_timeout" ? "No partner was available" : "Thank you!",
    tone: "",
    message: frame.message,
    pay: frame.pay,
    code: frame.completion_code,
    prolificUrl: frame.redirect_url,
    mturkSubmit: config.mturk_submit,
    showBonuses: false,
  });
  session.status = "released";
  saveSession();
  if (socket) {
    socket.stop();
    socket = null;
  }
  $("connection-banner").hidden = true;
  showScreen("released");
}

boot();
