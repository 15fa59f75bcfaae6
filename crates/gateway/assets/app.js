// ytnotify gateway: the script behind the web page.
//
// Logs a user in through the gateway's HTTP API, manages their
// subscriptions, and shows their notifications as they arrive over
// Server-Sent Events. The feed, its read state and the stream position are
// kept in localStorage so that a reload resumes where the page left off.
// Server data only ever reaches the page through textContent.

"use strict";

const MAX_NAME_CHARS = 64;
const NAME_RULE = "use 1-64 ASCII letters, digits, '_', '-' or '.'";
const FEED_CAP = 500;
const BACKOFF_FIRST_MS = 3000;
const BACKOFF_MAX_MS = 30000;

const USER_KEY = "ytnotify.user";
const cursorKey = (user) => `ytnotify.cursor.${user}`;
const feedKey = (user) => `ytnotify.feed.${user}`;

const state = {
  mode: null, // "open" | "secure", from /api/config
  user: null, // the logged-in user, or null on the login form
  source: null, // the current EventSource
  everConnected: false, // whether this session has opened a stream before
  connectionId: null, // from the newest hello; acks must name it
  backoffMs: BACKOFF_FIRST_MS,
  retryTimer: null,
  feed: [], // newest first: {id, youtuber, video, uploadedAtMs, away, read}
  feedIds: new Set(),
  pendingAcks: new Map(), // connection id -> Set of ids rendered, not yet acked
  ackScheduled: false,
};

const byId = (id) => document.getElementById(id);

// Creates an element; text, which may come from the server, goes in only as
// text, never as markup.
function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

// Writes to localStorage; a full or disabled storage costs the page its
// memory across reloads, not its function.
function store(key, value) {
  try {
    localStorage.setItem(key, value);
  } catch (err) {
    console.warn(`could not store ${key}`, err);
  }
}

// ---------------------------------------------------------------- names

// Checks a user or YouTuber name with the server's rule, and words the
// refusal the way the server does, so the message is the same either way.
function checkName(kind, value) {
  const chars = Array.from(value); // code points, as the server counts
  let problem = null;
  if (chars.length === 0) {
    problem = `it is empty; ${NAME_RULE}`;
  } else if (chars.length > MAX_NAME_CHARS) {
    problem = `it has ${chars.length} characters; ${NAME_RULE}`;
  } else {
    const at = chars.findIndex((c) => !/^[A-Za-z0-9_.-]$/.test(c));
    if (at >= 0) {
      problem = `${describeChar(chars[at])} at position ${at + 1} is not allowed; ${NAME_RULE}`;
    }
  }
  return problem && `invalid ${kind} ${quoteValue(value)}: ${problem}`;
}

// Names a character so a person can tell which one it is, even invisible.
function describeChar(c) {
  if (c === " ") return "a space";
  if (/\p{Cc}/u.test(c)) return `control character '${escapeChar(c, "'")}'`;
  if (/\p{Cf}/u.test(c)) {
    const hex = c.codePointAt(0).toString(16).toUpperCase().padStart(4, "0");
    return `invisible formatting character U+${hex}`;
  }
  return `'${escapeChar(c, "'")}'`;
}

// Quotes a value as the server does (Rust's Debug form), cut after 100
// characters so a pasted essay does not fill the screen.
function quoteValue(value) {
  const chars = Array.from(value);
  const shown = chars.slice(0, 100).map((c) => escapeChar(c, '"')).join("");
  return `"${shown}"${chars.length > 100 ? "…" : ""}`;
}

function escapeChar(c, quote) {
  const named = { "\\": "\\\\", "\0": "\\0", "\t": "\\t", "\n": "\\n", "\r": "\\r" };
  if (c in named) return named[c];
  if (c === quote) return `\\${quote}`;
  if (c !== " " && /[\p{C}\p{Z}]/u.test(c)) return `\\u{${c.codePointAt(0).toString(16)}}`;
  return c;
}

// ---------------------------------------------------------------- HTTP

class ApiError extends Error {
  constructor(message, status) {
    super(message);
    this.status = status;
  }
}

// Sends a JSON request to the gateway. Resolves to the parsed body (null for
// 204); rejects with an ApiError carrying the server's one-line explanation.
async function api(method, path, body) {
  const options = { method, credentials: "same-origin", headers: { Accept: "application/json" } };
  if (body !== undefined) {
    options.headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, options);
  } catch (err) {
    throw new ApiError(`Could not reach the gateway (${err.message}); check that it is running and try again.`, 0);
  }
  const text = await response.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  if (!response.ok) {
    const line = data && typeof data.error === "string"
      ? data.error
      : `The gateway answered ${response.status} ${response.statusText}; try again later.`;
    throw new ApiError(line, response.status);
  }
  return data;
}

const userPath = (user) => `/api/users/${encodeURIComponent(user)}`;

// ---------------------------------------------------------------- messages

// Shows a one-line message in a message element; kind "error" or "ok".
function showMessage(element, text, kind) {
  element.textContent = text;
  if (kind) element.dataset.kind = kind;
  else delete element.dataset.kind;
}

function showNotices(lines) {
  const list = byId("notices");
  list.replaceChildren(...lines.map((line) => element("li", "", line)));
  list.hidden = lines.length === 0;
}

const noticesOf = (data) => (data && Array.isArray(data.notices) ? data.notices.map(String) : []);

// ---------------------------------------------------------------- login

async function loadConfig() {
  const config = await api("GET", "/api/config");
  state.mode = config && config.mode === "secure" ? "secure" : "open";
  const secure = state.mode === "secure";
  byId("login-password-row").hidden = !secure;
  byId("login-password").required = secure;
}

function showLogin(name) {
  byId("app").hidden = true;
  byId("login").hidden = false;
  byId("login-name").value = name || "";
  byId("login-password").value = "";
  (name && state.mode === "secure" ? byId("login-password") : byId("login-name")).focus();
}

async function handleLoginSubmit(event) {
  event.preventDefault();
  const error = byId("login-error");
  const name = byId("login-name").value.trim();
  const password = byId("login-password").value;
  const invalid = checkName("user name", name);
  if (invalid) {
    showMessage(error, invalid, "error");
    byId("login-name").focus();
    return;
  }
  const button = byId("login-submit");
  button.disabled = true;
  showMessage(error, "");
  try {
    if (!state.mode) await loadConfig();
    if (state.mode === "secure" && password === "") {
      showMessage(error, "The gateway runs in secure mode; enter your password.", "error");
      byId("login-password").focus();
      return;
    }
    const data = await api("POST", "/api/session", {
      user: name,
      password: state.mode === "secure" ? password : null,
    });
    startSession(data && data.user ? String(data.user) : name, noticesOf(data));
  } catch (err) {
    showMessage(error, err.message, "error");
  } finally {
    button.disabled = false;
  }
}

// Logs a remembered user back in after a reload. In secure mode the session
// cookie is what counts, so a successful subscriptions request is enough.
async function resumeSession(name) {
  try {
    if (state.mode === "secure") {
      await api("GET", `${userPath(name)}/subscriptions`);
      startSession(name, []);
    } else {
      const data = await api("POST", "/api/session", { user: name, password: null });
      startSession(data && data.user ? String(data.user) : name, noticesOf(data));
    }
  } catch (err) {
    showLogin(name);
    if (err.status !== 401) showMessage(byId("login-error"), err.message, "error");
  }
}

function startSession(user, notices) {
  state.user = user;
  store(USER_KEY, user);
  byId("whoami").textContent = user;
  byId("login").hidden = true;
  byId("app").hidden = false;
  showMessage(byId("login-error"), "");
  showNotices(notices);
  loadFeed(user);
  loadSubscriptions();
  openEvents();
  byId("subscribe-name").focus();
}

function handleLogout() {
  // In secure mode the gateway holds a connection for the login: end it.
  if (state.mode === "secure") {
    fetch("/api/session", { method: "DELETE" }).catch((err) => console.warn("logout", err));
  }
  closeEvents();
  state.user = null;
  state.connectionId = null;
  state.everConnected = false;
  state.pendingAcks.clear();
  state.feed = [];
  state.feedIds.clear();
  localStorage.removeItem(USER_KEY);
  byId("feed").replaceChildren();
  byId("subscriptions").replaceChildren();
  byId("recovery-notice").hidden = true;
  showMessage(byId("status-message"), "");
  showMessage(byId("subscription-message"), "");
  showNotices([]);
  updateUnread();
  showLogin("");
}

// ---------------------------------------------------------------- subscriptions

// Fetches and shows the list. Returns false when the session is no longer
// valid (401), after sending the user back to the login form.
async function loadSubscriptions() {
  const user = state.user;
  try {
    const data = await api("GET", `${userPath(user)}/subscriptions`);
    if (state.user !== user) return true;
    renderSubscriptions(data && Array.isArray(data.youtubers) ? data.youtubers.map(String) : []);
    return true;
  } catch (err) {
    if (state.user !== user) return true;
    if (err.status === 401) {
      handleLogout();
      showLogin(user);
      showMessage(byId("login-error"), err.message, "error");
      return false;
    }
    showMessage(byId("subscription-message"), err.message, "error");
    return true;
  }
}

function renderSubscriptions(youtubers) {
  const items = youtubers.map((name) => {
    const item = element("li");
    item.dataset.youtuber = name;
    const button = element("button", "unsubscribe", "Unsubscribe");
    button.type = "button";
    button.setAttribute("aria-label", `Unsubscribe from ${name}`);
    button.addEventListener("click", () => unsubscribe(name));
    item.append(element("span", "name", name), button);
    return item;
  });
  byId("subscriptions").replaceChildren(...items);
  byId("subscriptions-empty").hidden = items.length > 0;
}

// Joins a result sentence with the server's notices into one message line.
const withNotices = (sentence, data) => [sentence, ...noticesOf(data)].join(" ");

async function handleSubscribeSubmit(event) {
  event.preventDefault();
  const input = byId("subscribe-name");
  const message = byId("subscription-message");
  const button = byId("subscribe-submit");
  const name = input.value.trim();
  input.focus(); // ready for the next name, whatever happens
  if (button.disabled) return; // a request is still on its way
  const invalid = checkName("YouTuber name", name);
  if (invalid) {
    showMessage(message, invalid, "error");
    return;
  }
  button.disabled = true;
  try {
    const data = await api("POST", `${userPath(state.user)}/subscriptions`, { youtuber: name });
    showMessage(message, withNotices(`Subscribed to ${name}.`, data), "ok");
    input.value = "";
    await loadSubscriptions();
  } catch (err) {
    showMessage(message, err.message, "error");
  } finally {
    button.disabled = false;
  }
}

async function unsubscribe(name) {
  if (!window.confirm(`Unsubscribe from ${name}?`)) return;
  const message = byId("subscription-message");
  try {
    const path = `${userPath(state.user)}/subscriptions/${encodeURIComponent(name)}`;
    const data = await api("DELETE", path);
    showMessage(message, withNotices(`Unsubscribed from ${name}.`, data), "ok");
  } catch (err) {
    showMessage(message, err.message, "error");
  }
  await loadSubscriptions();
  // The button that had focus may be gone; keep the keyboard user nearby.
  if (!document.activeElement || document.activeElement === document.body) {
    byId("subscribe-name").focus();
  }
}

// ---------------------------------------------------------------- feed storage

function loadFeed(user) {
  let stored = [];
  try {
    stored = JSON.parse(localStorage.getItem(feedKey(user)) || "[]");
  } catch {
    stored = []; // a damaged entry should not keep the page from working
  }
  if (!Array.isArray(stored)) stored = [];
  state.feed = stored
    .map((raw) => feedEntry(raw, raw && raw.uploadedAtMs, Boolean(raw && raw.read)))
    .filter((entry) => entry !== null)
    .slice(0, FEED_CAP);
  state.feedIds = new Set(state.feed.map((n) => n.id));
  byId("feed").replaceChildren(...state.feed.map(renderNotification));
  updateUnread();
}

function saveFeed() {
  store(feedKey(state.user), JSON.stringify(state.feed));
}

// Builds a feed entry from stored or received data, or null if it has no id.
// Every field is forced to its type so later code need not check again.
function feedEntry(raw, uploadedAtMs, read) {
  if (!raw || typeof raw.id !== "string") return null;
  const time = new Date(typeof uploadedAtMs === "number" ? uploadedAtMs : NaN);
  return {
    id: raw.id,
    youtuber: String(raw.youtuber),
    video: String(raw.video),
    uploadedAtMs: Number.isNaN(time.getTime()) ? Date.now() : time.getTime(),
    away: raw.away === true,
    read,
  };
}

// ---------------------------------------------------------------- feed view

function renderNotification(n) {
  const item = element("li", n.away ? "notification away" : "notification");
  item.dataset.id = n.id;

  const headline = element("p", "headline");
  headline.append(element("span", "youtuber", n.youtuber), " uploaded ", element("span", "video", n.video));

  const meta = element("p", "meta");
  const time = element("time", "", describeTime(n.uploadedAtMs));
  time.dataset.ms = String(n.uploadedAtMs);
  time.dateTime = new Date(n.uploadedAtMs).toISOString();
  time.title = new Date(n.uploadedAtMs).toLocaleString();
  meta.append(time);
  if (n.away) meta.append(" ", element("span", "away-badge", "while you were away"));

  const button = element("button", "mark-read", "Mark read");
  button.type = "button";
  button.setAttribute("aria-label", `Mark read: ${n.youtuber} uploaded ${n.video}`);
  button.addEventListener("click", () => markRead(n.id));

  item.append(headline, meta, button);
  showReadState(item, Boolean(n.read));
  return item;
}

function showReadState(item, read) {
  item.classList.toggle("unread", !read);
  const button = item.querySelector("button.mark-read");
  button.hidden = read;
  button.disabled = read;
}

// "just now", "5 min ago", "3 h ago", then the date itself.
function describeTime(ms) {
  const seconds = Math.round((Date.now() - ms) / 1000);
  if (seconds < 45) return "just now";
  const minutes = Math.round(seconds / 60);
  if (minutes < 60) return `${minutes} min ago`;
  const hours = Math.round(minutes / 60);
  if (hours < 24) return `${hours} h ago`;
  return new Date(ms).toLocaleString(undefined, { dateStyle: "medium", timeStyle: "short" });
}

function refreshTimes() {
  for (const time of document.querySelectorAll("#feed time[data-ms]")) {
    time.textContent = describeTime(Number(time.dataset.ms));
  }
}

function updateUnread() {
  const unread = state.feed.filter((n) => !n.read).length;
  byId("unread-count").textContent = String(unread);
  document.title = unread > 0 ? `(${unread}) ytnotify` : "ytnotify";
  byId("feed-empty").hidden = state.feed.length > 0;
}

const feedItem = (id) => byId("feed").querySelector(`li[data-id="${CSS.escape(id)}"]`);

function markRead(id) {
  const entry = state.feed.find((n) => n.id === id);
  if (!entry || entry.read) return;
  entry.read = true;
  saveFeed();
  updateUnread();
  const item = feedItem(id);
  if (!item) return;
  const hadFocus = item.contains(document.activeElement);
  showReadState(item, true);
  // The focused button is now hidden; give the keyboard the next one to read.
  if (hadFocus) (nextUnreadButton(item) || byId("feed-heading")).focus();
}

function nextUnreadButton(item) {
  for (let next = item.nextElementSibling; next; next = next.nextElementSibling) {
    if (next.classList.contains("unread")) return next.querySelector("button.mark-read");
  }
  return byId("feed").querySelector("li.unread button.mark-read");
}

function markAllRead() {
  for (const entry of state.feed) entry.read = true;
  saveFeed();
  for (const item of byId("feed").querySelectorAll("li.notification")) showReadState(item, true);
  updateUnread();
}

// Adds a notification from the stream, unless it is already shown.
function receiveNotification(data) {
  const entry = feedEntry(data, data && data.uploaded_at_ms, false);
  if (!entry) {
    console.warn("ignoring a malformed notification", data);
    return;
  }
  if (!state.feedIds.has(entry.id)) {
    state.feed.unshift(entry);
    state.feedIds.add(entry.id);
    const list = byId("feed");
    list.prepend(renderNotification(entry));
    // Keep the newest FEED_CAP, on screen and in storage alike.
    while (state.feed.length > FEED_CAP) {
      const dropped = state.feed.pop();
      state.feedIds.delete(dropped.id);
      if (list.lastElementChild) list.lastElementChild.remove();
    }
    saveFeed();
    updateUnread();
  }
  // Acked even when already shown: the gateway needs the ack per connection.
  queueAck(entry.id);
}

// ---------------------------------------------------------------- acks

// Acks are batched: everything rendered before the next frame goes in one
// request. A timer backs up the frame because hidden tabs get no frames.
function queueAck(id) {
  const ids = state.pendingAcks.get(state.connectionId) || new Set();
  ids.add(id);
  state.pendingAcks.set(state.connectionId, ids);
  if (state.ackScheduled) return;
  state.ackScheduled = true;
  requestAnimationFrame(flushAcks);
  setTimeout(flushAcks, 250);
}

function flushAcks() {
  state.ackScheduled = false;
  if (state.pendingAcks.size === 0 || !state.user) return;
  const path = `${userPath(state.user)}/ack`;
  for (const [connection, ids] of state.pendingAcks) {
    // Failure is harmless: the gateway sends them again next time.
    api("POST", path, { connection, ids: [...ids] }).catch((err) => console.warn("ack failed:", err.message));
  }
  state.pendingAcks.clear();
}

// ---------------------------------------------------------------- events

const CONNECTION_TEXT = {
  connecting: "Connecting…",
  live: "Live",
  reconnecting: "Reconnecting…",
};

function setConnection(stateName, text) {
  const element = byId("connection");
  element.dataset.state = stateName;
  element.textContent = text || CONNECTION_TEXT[stateName];
}

function rememberCursor(event) {
  if (event.lastEventId && state.user) {
    store(cursorKey(state.user), event.lastEventId);
  }
}

// Parses an event's JSON data; a garbled event is logged and skipped.
function parseEvent(event) {
  try {
    return JSON.parse(event.data);
  } catch {
    console.warn(`ignoring a ${event.type} event that is not JSON`, event.data);
    return null;
  }
}

// Opens a new stream, starting after the newest stored cursor so nothing
// between the last page and this one is missed.
function openEvents() {
  closeEvents();
  setConnection(state.everConnected ? "reconnecting" : "connecting");
  state.everConnected = true;
  const cursor = localStorage.getItem(cursorKey(state.user));
  const query = cursor ? `?last_event_id=${encodeURIComponent(cursor)}` : "";
  const source = new EventSource(`${userPath(state.user)}/events${query}`);
  source.addEventListener("hello", handleHello);
  source.addEventListener("notification", handleNotificationEvent);
  source.addEventListener("problem", handleProblem);
  source.addEventListener("error", handleStreamError);
  state.source = source;
}

function closeEvents() {
  if (state.source) state.source.close();
  state.source = null;
  clearTimeout(state.retryTimer);
  state.retryTimer = null;
}

function handleHello(event) {
  const data = parseEvent(event);
  if (!data) return;
  state.connectionId = data.connection;
  state.backoffMs = BACKOFF_FIRST_MS;
  rememberCursor(event);
  setConnection("live");
  showMessage(byId("status-message"), "");
  // The sentence itself is in the page; it stays up until logout, since the
  // gap it reports does not close by itself.
  if (data.recovered === false) byId("recovery-notice").hidden = false;
}

function handleNotificationEvent(event) {
  const data = parseEvent(event);
  rememberCursor(event);
  receiveNotification(data);
}

// The gateway closes the stream after a problem; wait before trying again.
function handleProblem(event) {
  const data = parseEvent(event);
  const line = data && typeof data.error === "string" ? data.error : "The gateway reported a problem.";
  showMessage(byId("status-message"), line, "error");
  scheduleReconnect();
}

function handleStreamError() {
  if (!state.source) return;
  if (state.source.readyState === EventSource.CONNECTING) {
    setConnection("reconnecting"); // the browser retries by itself
  } else {
    scheduleReconnect(); // the browser gave up (e.g. an error status)
  }
}

function scheduleReconnect() {
  closeEvents();
  const delay = state.backoffMs;
  state.backoffMs = Math.min(delay * 2, BACKOFF_MAX_MS);
  setConnection("offline", `Offline — retrying in ${delay / 1000} s`);
  state.retryTimer = setTimeout(reconnect, delay);
}

async function reconnect() {
  state.retryTimer = null;
  // An expired secure session would only fail again; check it first.
  if (state.mode === "secure" && !(await loadSubscriptions())) return;
  if (state.user) openEvents();
}

// ---------------------------------------------------------------- start

async function init() {
  byId("login-form").addEventListener("submit", handleLoginSubmit);
  byId("subscribe-form").addEventListener("submit", handleSubscribeSubmit);
  byId("logout").addEventListener("click", handleLogout);
  byId("mark-all-read").addEventListener("click", markAllRead);
  setInterval(refreshTimes, 30000);

  try {
    await loadConfig();
  } catch (err) {
    showLogin("");
    showMessage(byId("login-error"), err.message, "error");
    return;
  }
  const remembered = localStorage.getItem(USER_KEY);
  if (remembered && !checkName("user name", remembered)) {
    await resumeSession(remembered);
  } else {
    showLogin("");
  }
}

// The script is deferred, but starting this way also works without that.
if (document.readyState === "loading") {
  document.addEventListener("DOMContentLoaded", init);
} else {
  init();
}
