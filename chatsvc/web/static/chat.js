// chatsvc's pages: sign in, the live conversation list, and a conversation followed live.
//
// The server renders a conversation as the database has it; this script continues
// from exactly that state over the conversation stream. It places text by offset
// (in code points, as the server counts), ignoring what it already shows and
// asking the server to fill any gap, so text is never duplicated or lost across
// reconnects. A message's source text lives in its `.text` element (a plain text
// node, kept hidden once rendered); what the reader sees is that text rendered as
// Markdown by markdown.js, which never lets HTML from a message through.
"use strict";

const $ = (selector, root = document) => root.querySelector(selector);
const $$ = (selector, root = document) => Array.from(root.querySelectorAll(selector));
const codePoints = (text) => Array.from(text).length;

// --- the API ---------------------------------------------------------------------

class ApiError extends Error {
  constructor(message, status, code) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

async function api(method, path, body) {
  let response;
  try {
    response = await fetch(path, {
      method,
      headers: body === undefined ? {} : { "Content-Type": "application/json" },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch {
    throw new ApiError("Could not reach the server; check the connection and try again.", 0);
  }
  const data = response.status === 204 ? null : await response.json().catch(() => null);
  if (!response.ok) {
    const error = data && data.error;
    const message = error ? `${error.message} (${error.code})` : `The server answered ${response.status}.`;
    throw new ApiError(message, response.status, error?.code);
  }
  return data;
}

function showAlert(form, error) {
  const alert = $(".alert", form);
  alert.textContent = error ? error.message : "";
  alert.hidden = !error;
}

// Submitting runs `action`; the button stays disabled meanwhile, so a double click sends once.
function onSubmit(form, action) {
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const button = $("button[type=submit]", form);
    if (button.disabled || form.dataset.busy) return;
    form.dataset.busy = "1";
    button.disabled = true;
    showAlert(form, null);
    try {
      await action(form);
    } catch (error) {
      showAlert(form, error);
    } finally {
      delete form.dataset.busy;
      button.disabled = false;
      form.dispatchEvent(new Event("settled"));
    }
  });
}

// Enter sends, Shift+Enter (or an input method composing) makes a new line.
function enterSends(textarea, form) {
  textarea.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      form.requestSubmit();
    }
  });
  // The box grows with its text, up to a limit (then it scrolls).
  const fit = () => {
    textarea.style.height = "auto";
    textarea.style.height = `${Math.min(textarea.scrollHeight + 2, 240)}px`;
  };
  textarea.addEventListener("input", fit);
  return fit;
}

function newId() {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// Times as the browser's time zone has them (the server writes UTC).
const TIME = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit" });
const FULL = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "long" });

function localTime(element, iso) {
  if (iso) element.setAttribute("datetime", iso);
  const value = element.getAttribute("datetime");
  if (!value) return;
  const date = new Date(value);
  element.textContent = TIME.format(date);
  element.title = FULL.format(date);
}

async function copyText(text, button) {
  try {
    await navigator.clipboard.writeText(text);
  } catch {
    const area = Object.assign(document.createElement("textarea"), { value: text });
    document.body.append(area);
    area.select();
    document.execCommand("copy");
    area.remove();
  }
  const label = button.lastChild;
  const was = label.textContent;
  label.textContent = "Copied";
  setTimeout(() => (label.textContent = was), 1500);
}

// --- models ------------------------------------------------------------------------

const MODEL_KEY = "chatsvc.model";

async function setUpModelPicker() {
  const select = $("#model");
  if (!select) return null;
  try {
    const { items } = await api("GET", "/api/models");
    const saved = localStorage.getItem(MODEL_KEY);
    select.replaceChildren(
      ...items.map((m) => {
        const option = new Option(m.id, m.id, false, saved ? m.id === saved : m.default);
        if (m.default) option.dataset.default = "true";
        return option;
      }),
    );
    if (!items.some((m) => m.id === select.value)) select.value = items.find((m) => m.default)?.id;
    select.disabled = false;
    select.addEventListener("change", () => localStorage.setItem(MODEL_KEY, select.value));
  } catch {
    // The default model answers; the picker stays as it is.
  }
  return select;
}

function chosenModel() {
  const value = $("#model")?.value;
  return value ? value : undefined;
}

// --- the conversation list, live -----------------------------------------------------

const ICONS = {
  rename: '<svg viewBox="0 0 24 24" aria-hidden="true"><path d="M4 20h4L19 9l-4-4L4 16v4zM14 6l4 4"/></svg>',
  delete: '<svg viewBox="0 0 24 24" aria-hidden="true"><path d="M5 7h14M10 7V4h4v3M7 7l1 13h8l1-13"/></svg>',
  copy: '<svg viewBox="0 0 24 24" aria-hidden="true"><rect x="9" y="9" width="11" height="11" rx="2"/><path d="M5 15V5a1 1 0 0 1 1-1h9"/></svg>',
  regenerate: '<svg viewBox="0 0 24 24" aria-hidden="true"><path d="M20 11a8 8 0 1 0-2.3 5.7M20 5v6h-6"/></svg>',
  edit: '<svg viewBox="0 0 24 24" aria-hidden="true"><path d="M4 20h4L19 9l-4-4L4 16v4zM14 6l4 4"/></svg>',
  continue: '<svg viewBox="0 0 24 24" aria-hidden="true"><path d="M8 5v14l11-7z"/></svg>',
  prev: '<svg viewBox="0 0 24 24" aria-hidden="true"><path d="M15 6l-6 6 6 6"/></svg>',
  next: '<svg viewBox="0 0 24 24" aria-hidden="true"><path d="M9 6l6 6-6 6"/></svg>',
};

const untitled = (title) => title || "New conversation";

class ConversationList {
  constructor(list, currentId) {
    this.list = list;
    this.empty = $(".list-empty");
    this.currentId = currentId;
    this.template = list.querySelector("li")?.cloneNode(true) || null;
    this.onTitle = () => {};
    this.onDeleted = () => {};
    list.addEventListener("click", (event) => this.onClick(event));
    this.connect();
  }

  item(id) {
    return this.list.querySelector(`li[data-id="${CSS.escape(id)}"]`);
  }

  // The caller's room: every conversation they can see. On each (re)connect the
  // list is read again, so what happened while away is never missing.
  connect() {
    const source = new EventSource("/api/events");
    const on = (name, handle) => source.addEventListener(name, (e) => handle(JSON.parse(e.data)));
    on("conversation.created", (c) => this.upsert(c.conversation_id, c.title, this.item(c.conversation_id)?.dataset.streaming === "true", true));
    on("conversation.updated", (c) => this.rename(c.conversation_id, c.title));
    on("conversation.deleted", (c) => this.remove(c.conversation_id));
    on("stream.started", (c) => this.setStreaming(c.conversation_id, true));
    on("stream.finished", (c) => this.setStreaming(c.conversation_id, false));
    source.addEventListener("open", () => this.reload());
    source.addEventListener("error", async () => {
      if (source.readyState !== EventSource.CLOSED) return;
      await sleep(2000);
      this.connect();
    });
  }

  async reload() {
    try {
      const { items } = await api("GET", "/api/conversations?limit=50");
      const seen = new Set(items.map((c) => c.id));
      // A page of older conversations (?before=) keeps its own entries.
      const newest = !new URLSearchParams(location.search).has("before");
      if (newest) for (const li of $$("li", this.list)) if (!seen.has(li.dataset.id)) li.remove();
      for (const c of items.slice().reverse()) this.upsert(c.id, c.title, c.is_streaming, true);
    } catch {
      // The room keeps what it has; the next (re)connect reads again.
    }
  }

  build(id) {
    const li = this.template ? this.template.cloneNode(true) : document.createElement("li");
    if (!this.template) {
      li.className = "conv";
      li.innerHTML =
        '<a class="conv-link"><span class="conv-title"></span><span class="live-dot" title="An answer is being written"><span class="visually-hidden">streaming</span></span></a>' +
        '<span class="conv-actions">' +
        `<button type="button" class="icon-button" data-action="rename" aria-label="Rename" title="Rename">${ICONS.rename}</button>` +
        `<button type="button" class="icon-button danger" data-action="delete" aria-label="Delete" title="Delete">${ICONS.delete}</button>` +
        "</span>";
    }
    li.dataset.id = id;
    li.removeAttribute("aria-current");
    const link = $(".conv-link", li);
    link.href = `/c/${id}`;
    link.removeAttribute("aria-current");
    if (id === this.currentId) {
      li.setAttribute("aria-current", "page");
      link.setAttribute("aria-current", "page");
    }
    return li;
  }

  // Adds a conversation (newest first) or updates it; `atTop` moves a new one first.
  upsert(id, title, streaming, atTop) {
    let li = this.item(id);
    if (!li) {
      li = this.build(id);
      if (atTop) this.list.prepend(li);
      else this.list.append(li);
    }
    $(".conv-title", li).textContent = untitled(title);
    li.dataset.streaming = String(Boolean(streaming));
    this.empty.hidden = true;
  }

  rename(id, title) {
    const li = this.item(id);
    if (li) $(".conv-title", li).textContent = untitled(title);
    if (id === this.currentId) this.onTitle(title);
  }

  remove(id) {
    this.item(id)?.remove();
    this.empty.hidden = this.list.children.length > 0;
    if (id === this.currentId) this.onDeleted();
  }

  setStreaming(id, streaming) {
    const li = this.item(id);
    if (li) li.dataset.streaming = String(streaming);
  }

  onClick(event) {
    const button = event.target.closest("button[data-action]");
    if (!button) return;
    const li = button.closest("li");
    if (button.dataset.action === "delete") this.delete(li, button);
    if (button.dataset.action === "rename") this.startRename(li);
  }

  async delete(li, button) {
    button.disabled = true;
    try {
      await api("DELETE", `/api/conversations/${li.dataset.id}`);
      if (li.dataset.id === this.currentId) return location.assign("/");
      this.remove(li.dataset.id);
    } catch (error) {
      button.disabled = false;
      button.title = error.message;
    }
  }

  // The title becomes an input: Enter (or leaving it) saves, Escape cancels.
  startRename(li) {
    const title = $(".conv-title", li);
    const input = Object.assign(document.createElement("input"), {
      className: "conv-rename",
      value: title.textContent,
      maxLength: 200,
    });
    input.setAttribute("aria-label", "Title");
    li.classList.add("renaming");
    li.prepend(input);
    input.focus();
    input.select();
    let done = false;
    const finish = async (save) => {
      if (done) return;
      done = true;
      const value = input.value.trim();
      input.remove();
      li.classList.remove("renaming");
      $("[data-action=rename]", li).focus();
      if (!save || !value || value === title.textContent) return;
      const was = title.textContent;
      title.textContent = value;
      try {
        const renamed = await api("PATCH", `/api/conversations/${li.dataset.id}`, { title: value });
        this.rename(renamed.id, renamed.title);
      } catch (error) {
        title.textContent = was;
        li.title = error.message;
      }
    };
    input.addEventListener("keydown", (event) => {
      if (event.key === "Enter") {
        event.preventDefault();
        finish(true);
      } else if (event.key === "Escape") {
        finish(false);
      }
    });
    input.addEventListener("blur", () => finish(true));
  }
}

// --- a conversation, live ----------------------------------------------------------

const STOPPED = new Set(["cancelled", "interrupted", "failed"]);

class Conversation {
  constructor(section) {
    this.id = section.dataset.conversationId;
    this.list = $(".messages", section);
    this.empty = $(".empty", section);
    this.form = $("[data-form=send]", section);
    this.stopButton = $("[data-action=stop]", this.form);
    this.sendButton = $("button[type=submit]", this.form);
    this.note = $("#composer-note");
    this.template = $("#message-template");
    this.connection = $(".connection");
    this.messages = new Map(); // id -> entry (see track)
    this.renderQueue = new Set();
    for (const article of this.list.querySelectorAll("article")) this.track(article);
    for (const entry of this.messages.values()) this.render(entry);
    this.retryDelay = 1000;
    this.handlers = {
      message: (m, id) => this.onMessage(m, id),
      delta: (d, id) => this.onDelta(d, id),
      reasoning: (r, id) => this.onReasoning(r, id),
      tool: (t, id) => this.onTool(t, id),
      status: (s) => this.onStatus(s),
      done: (d, id) => this.onDone(d, id),
      branch: (b) => this.onBranch(b),
    };
    this.setUpComposer();
    this.list.addEventListener("click", (event) => this.onClick(event));
    this.stopButton.addEventListener("click", () => this.stop());
    this.updateActions();
    this.connect(section.dataset.cursor);
  }

  // --- what the page holds for each message

  track(article) {
    const entry = {
      article,
      text: $(".text", article),
      markdown: $(".markdown", article),
      steps: $(".steps", article),
      length: Number(article.dataset.length),
      reasoning: Number(article.dataset.reasoning || 0),
      tools: Number(article.dataset.tools || 0),
      composite: article.dataset.composite === "true",
    };
    // What the server rendered is the source so far (its length is counted from the text).
    entry.length = codePoints(entry.text.textContent);
    this.messages.set(article.dataset.id, entry);
    const time = $("time", article);
    if (time) localTime(time);
    return entry;
  }

  // Renders the Markdown of an entry at the next frame (once per frame however many deltas).
  render(entry) {
    this.renderQueue.add(entry);
    if (this.renderQueue.size > 1) return;
    requestAnimationFrame(() => {
      this.keepScrolled(() => {
        for (const one of this.renderQueue) {
          Markdown.render(one.markdown, one.text.textContent);
          one.markdown.hidden = false;
          one.text.hidden = true;
        }
      });
      this.renderQueue.clear();
    });
  }

  // The position right after what the page shows of a message (the last one by default).
  cursor(id = this.list.lastElementChild?.dataset.id) {
    if (!id) return "";
    const e = this.messages.get(id);
    return e.composite ? `${id}:${e.length}.${e.reasoning}.${e.tools}` : `${id}:${e.length}`;
  }

  // An event's id says where the stream is in that message; the tool version is read from it.
  notePosition(entry, lastEventId) {
    const position = lastEventId?.split(":")[1];
    if (!position || !position.includes(".")) return;
    entry.composite = true;
    entry.tools = Math.max(entry.tools, Number(position.split(".")[2]));
  }

  // --- the stream

  connect(cursor) {
    const query = cursor ? `?last_event_id=${encodeURIComponent(cursor)}` : "";
    const source = new EventSource(`/api/conversations/${this.id}/stream${query}`);
    this.source = source;
    for (const [name, handle] of Object.entries(this.handlers)) {
      source.addEventListener(name, (event) =>
        this.keepScrolled(() => handle(JSON.parse(event.data), event.lastEventId)),
      );
    }
    source.addEventListener("open", () => {
      this.connection.textContent = "live";
      this.connection.dataset.state = "live";
      this.retryDelay = 1000;
      this.checkStreaming();
    });
    // While CONNECTING the browser retries by itself, sending Last-Event-ID. It gives
    // up (CLOSED) on an HTTP error: 404 once the conversation is deleted, 401 once
    // signed out, a proxy's 502 while the server restarts.
    source.addEventListener("error", () => {
      this.connection.textContent = "reconnecting…";
      this.connection.dataset.state = "away";
      if (source.readyState === EventSource.CLOSED) this.reconnectLater();
    });
  }

  // Asks the server to send again from where the page is (it fills any gap from the database).
  resync(cursor) {
    this.source.close();
    this.connect(cursor);
  }

  async reconnectLater() {
    await sleep(this.retryDelay);
    this.retryDelay = Math.min(this.retryDelay * 2, 15000);
    const probe = await fetch(`/api/conversations/${this.id}/status`).catch(() => null);
    if (probe?.status === 404) {
      this.gone();
    } else if (probe?.status === 401) {
      this.connection.textContent = "Signed out: reload the page to sign in.";
    } else {
      this.connect(this.cursor());
    }
  }

  gone() {
    this.source.close();
    this.connection.textContent = "This conversation no longer exists.";
    this.connection.dataset.state = "away";
    this.sendButton.disabled = true;
    this.note.textContent = "This conversation was deleted.";
  }

  // A stream resumed at `<id>:<length>` of an answer that ended exactly there has
  // nothing to send, not even `done` (the position cannot tell whether `done` was
  // seen). So on every (re)connect, ask for the true state of what still shows as
  // streaming; a `done` that also arrives changes nothing.
  async checkStreaming() {
    for (const [id, entry] of this.messages) {
      if (entry.article.dataset.status !== "streaming") continue;
      try {
        const message = await api("GET", `/api/messages/${id}`);
        if (message.status !== "streaming") this.keepScrolled(() => this.onMessage(message));
      } catch {
        // The stream reports what this could not.
      }
    }
  }

  onMessage(m, lastEventId) {
    const entry = this.messages.get(m.id) || this.add(m);
    this.notePosition(entry, lastEventId);
    // The position is counted from the text itself, not taken from content_length: a
    // message read while a checkpoint commits can say more than its content holds.
    const length = codePoints(m.content);
    if (length > entry.length) {
      entry.text.textContent = m.content;
      entry.length = length;
      this.render(entry);
    }
    if (m.parts) this.showParts(entry, m.parts);
    if (m.sibling_ids) entry.article.dataset.siblings = JSON.stringify(m.sibling_ids);
    if (m.epoch > Number(entry.article.dataset.epoch) && m.status === "streaming") {
      this.restart(entry, m.epoch);
    }
    this.setStatus(entry, m.status, m.error);
    this.updateActions();
  }

  // A message's reasoning and tool parts as the API lists them (those the page lacks).
  showParts(entry, parts) {
    if (!entry.steps) return;
    const reasoning = parts.filter((p) => p.type === "reasoning").map((p) => p.text).join("");
    if (codePoints(reasoning) > entry.reasoning) {
      this.appendReasoning(entry, Array.from(reasoning).slice(entry.reasoning).join(""));
      entry.reasoning = codePoints(reasoning);
    }
    for (const part of parts) if (part.type === "tool") this.showTool(entry, part);
  }

  onDelta(d, lastEventId) {
    const entry = this.messages.get(d.message_id);
    if (!entry) return this.resync(this.cursor());
    const chars = Array.from(d.text); // code points, as offsets count them
    const end = d.offset + chars.length;
    if (end <= entry.length) return; // already shown
    if (d.offset > entry.length) return this.resync(this.cursor(d.message_id));
    entry.text.append(chars.slice(entry.length - d.offset).join(""));
    entry.text.normalize();
    entry.length = end;
    this.notePosition(entry, lastEventId);
    this.render(entry);
  }

  onReasoning(r, lastEventId) {
    const entry = this.messages.get(r.message_id);
    if (!entry) return this.resync(this.cursor());
    const chars = Array.from(r.text);
    const end = r.offset + chars.length;
    if (end <= entry.reasoning) return;
    if (r.offset > entry.reasoning) return this.resync(this.cursor(r.message_id));
    this.appendReasoning(entry, chars.slice(entry.reasoning - r.offset).join(""));
    entry.reasoning = end;
    this.notePosition(entry, lastEventId);
  }

  // Reasoning goes on the last reasoning block, or a new one after a tool call.
  appendReasoning(entry, text) {
    let block = entry.steps.lastElementChild;
    if (!block || !block.matches("details.reasoning")) {
      block = $("#reasoning-template").content.firstElementChild.cloneNode(true);
      entry.steps.append(block);
    }
    const target = $(".reasoning-text", block);
    target.append(text);
    target.normalize();
  }

  onTool(t, lastEventId) {
    const entry = this.messages.get(t.message_id);
    if (!entry) return this.resync(this.cursor());
    this.notePosition(entry, lastEventId);
    this.showTool(entry, t);
  }

  // A tool card shows the call's latest state: name, input, and its output or error.
  showTool(entry, part) {
    let card = $$(".tool", entry.steps).find((c) => c.dataset.callId === part.tool_call_id);
    if (!card) {
      card = $("#tool-template").content.firstElementChild.cloneNode(true);
      card.dataset.callId = part.tool_call_id;
      entry.steps.append(card);
    }
    card.dataset.state = part.state;
    $(".tool-name", card).textContent = part.name;
    $(".tool-state", card).textContent = TOOL_STATES[part.state] || part.state;
    if (part.input !== undefined && part.input !== null) $(".tool-input", card).textContent = pretty(part.input);
    const output = part.state === "output-error" ? part.error || "" : part.state === "output-available" ? pretty(part.output) : "";
    $(".tool-output", card).textContent = output;
  }

  onStatus(s) {
    const entry = this.messages.get(s.message_id);
    if (!entry) return;
    if (s.status === "streaming" && s.epoch > Number(entry.article.dataset.epoch)) this.restart(entry, s.epoch);
    if (s.resumed && entry.article.dataset.status === "streaming") {
      $(".status", entry.article).textContent = "streaming (resumed)";
    }
  }

  onDone(d, lastEventId) {
    const entry = this.messages.get(d.message_id);
    if (!entry) return;
    if (d.content_length > entry.length) return this.resync(this.cursor(d.message_id));
    this.notePosition(entry, lastEventId);
    this.setStatus(entry, d.status, d.error);
    this.updateActions();
  }

  // The current branch changed (regenerate, edit, switch elsewhere): keep the listed
  // messages, drop the others; the `message` events that follow bring the rest.
  onBranch(b) {
    const keep = new Set(b.message_ids);
    for (const [id, entry] of this.messages) {
      if (!keep.has(id)) {
        entry.article.remove();
        this.messages.delete(id);
      }
    }
    this.empty.hidden = this.messages.size > 0;
    this.updateActions();
  }

  add(m) {
    const article = this.template.content.firstElementChild.cloneNode(true);
    article.id = `m-${m.id}`;
    article.dataset.id = m.id;
    article.dataset.epoch = m.epoch ?? 1;
    article.classList.replace("assistant", m.role);
    $(".author", article).textContent = m.role === "user" ? "You" : "Assistant";
    if (m.role === "assistant") {
      article.dataset.model = m.model || "";
      $(".model", article).textContent = m.model || "";
    } else {
      $(".steps", article).remove();
    }
    if (m.created_at) localTime($("time", article), m.created_at);
    this.list.append(article);
    this.empty.hidden = true;
    return this.track(article);
  }

  // A stopped answer streams again (Continue, here or in another tab).
  restart(entry, epoch) {
    const article = entry.article;
    article.dataset.epoch = epoch;
    article.dataset.status = "streaming";
    article.setAttribute("aria-busy", "true");
    $(".status", article).textContent = "streaming";
    const line = $(".error", article);
    line.textContent = "";
    line.hidden = true;
    this.updateActions();
  }

  setStatus(entry, status, error) {
    const article = entry.article;
    if (article.dataset.status !== "streaming") return; // a finished message changes only by Continue
    article.dataset.status = status;
    if (status === "streaming") {
      $(".status", article).textContent ||= "streaming";
      return;
    }
    article.setAttribute("aria-busy", "false");
    $(".status", article).textContent = status === "completed" ? "" : status;
    const line = $(".error", article);
    line.textContent = error || "";
    line.hidden = !error;
  }

  // Follows new text to the bottom of the page, unless the reader scrolled up.
  keepScrolled(change) {
    const root = document.documentElement;
    const atBottom = root.scrollHeight - (window.scrollY + window.innerHeight) < 48;
    change();
    if (atBottom) window.scrollTo(0, root.scrollHeight);
  }

  // --- actions

  streamingEntry() {
    for (const entry of this.messages.values()) {
      if (entry.article.dataset.status === "streaming") return entry;
    }
    return null;
  }

  // Buttons follow the state: Stop while an answer streams (Send disabled, saying why);
  // Regenerate on answers, Continue on the last one when it stopped, Edit on user
  // messages, and "n / m" between versions.
  updateActions() {
    const streaming = this.streamingEntry();
    this.stopButton.hidden = !streaming;
    this.stopButton.disabled = false;
    this.sendButton.disabled = Boolean(streaming) || this.form.dataset.busy === "1";
    this.note.textContent = streaming ? "An answer is being written: Stop it, or wait for it to finish." : "";
    const articles = $$("article", this.list);
    const last = articles[articles.length - 1];
    for (const article of articles) {
      const actions = $(".actions", article);
      if (actions.dataset.editing) continue;
      const role = article.classList.contains("user") ? "user" : "assistant";
      const status = article.dataset.status;
      const wanted = [];
      const siblings = JSON.parse(article.dataset.siblings || "[]");
      if (siblings.length > 1) wanted.push(`versions:${siblings.indexOf(article.dataset.id) + 1}/${siblings.length}`);
      if (status !== "streaming") wanted.push("copy");
      if (role === "user") wanted.push("edit");
      if (role === "assistant" && status !== "streaming") wanted.push("regenerate");
      if (role === "assistant" && article === last && STOPPED.has(status)) wanted.push("continue");
      const key = `${wanted.join(",")}|${streaming ? 1 : 0}`;
      if (actions.dataset.key === key) continue;
      actions.dataset.key = key;
      actions.replaceChildren(...wanted.map((name) => this.actionButton(name, siblings, article)));
      for (const button of $$("button[data-action]:not([data-action=copy]):not([data-action=prev]):not([data-action=next])", actions)) {
        button.disabled = Boolean(streaming);
      }
      for (const button of $$("[data-action=prev], [data-action=next]", actions)) {
        if (streaming) button.disabled = true;
      }
    }
  }

  actionButton(name, siblings, article) {
    if (name.startsWith("versions:")) {
      const [index, count] = name.slice(9).split("/").map(Number);
      const box = document.createElement("span");
      box.className = "versions";
      const prev = this.button("prev", "Previous version", ICONS.prev, true);
      const next = this.button("next", "Next version", ICONS.next, true);
      prev.disabled = index <= 1;
      next.disabled = index >= count;
      const label = Object.assign(document.createElement("span"), { className: "version-label", textContent: `${index} / ${count}` });
      box.append(prev, label, next);
      return box;
    }
    const labels = {
      copy: ["Copy", ICONS.copy, true],
      edit: ["Edit", ICONS.edit, true],
      regenerate: ["Regenerate", ICONS.regenerate, true],
      continue: ["Continue", ICONS.continue, false],
    };
    const [label, icon, iconOnly] = labels[name];
    const button = this.button(name, label, icon, iconOnly);
    if (name === "continue") button.title = "Continue this answer from where it stopped";
    return button;
  }

  button(action, label, icon, iconOnly) {
    const button = document.createElement("button");
    button.type = "button";
    button.dataset.action = action;
    button.className = iconOnly ? "icon-button" : "pill";
    button.innerHTML = icon;
    if (iconOnly) {
      button.setAttribute("aria-label", label);
      button.title = label;
    } else {
      button.append(label);
    }
    return button;
  }

  async onClick(event) {
    const button = event.target.closest("button[data-action]");
    if (!button || button.disabled) return;
    const article = button.closest("article");
    const id = article?.dataset.id;
    const action = button.dataset.action;
    if (action === "copy-code") return copyText(button.closest(".code-block").querySelector("pre").textContent, button);
    if (action === "copy") return copyText(this.messages.get(id).text.textContent, button);
    if (action === "edit") return this.startEdit(article);
    button.disabled = true;
    try {
      if (action === "regenerate") {
        const made = await api("POST", `/api/messages/${id}/regenerate`, { model: chosenModel() });
        this.keepScrolled(() => {
          this.dropFrom(article);
          this.onMessage(made.assistant_message);
        });
      } else if (action === "continue") {
        const message = await api("POST", `/api/messages/${id}/continue`, { model: chosenModel() });
        this.keepScrolled(() => this.onMessage(message));
      } else if (action === "prev" || action === "next") {
        const siblings = JSON.parse(article.dataset.siblings);
        const target = siblings[siblings.indexOf(id) + (action === "prev" ? -1 : 1)];
        const conversation = await api("PUT", `/api/conversations/${this.id}/branch`, { message_id: target });
        this.showBranch(conversation.messages);
      }
    } catch (error) {
      showAlert(this.form, error);
      button.disabled = false;
    }
  }

  // Removes a message and everything after it (a new version replaces them).
  dropFrom(article) {
    let node = article;
    while (node) {
      const next = node.nextElementSibling;
      this.messages.delete(node.dataset.id);
      node.remove();
      node = next;
    }
  }

  showBranch(messages) {
    this.onBranch({ message_ids: messages.map((m) => m.id) });
    for (const m of messages) this.onMessage(m);
  }

  // An inline editor in place of the message: submitting makes the edit (a new version).
  startEdit(article) {
    const entry = this.messages.get(article.dataset.id);
    const actions = $(".actions", article);
    const form = document.createElement("form");
    form.className = "editor";
    form.innerHTML =
      '<textarea name="content" rows="3" aria-label="Edited message"></textarea>' +
      '<p class="alert" role="alert" hidden></p>' +
      '<div class="editor-row"><button type="button" class="secondary" data-action="cancel-edit">Cancel</button>' +
      '<button type="submit" title="Save this version and get its answer">Save</button></div>';
    const area = form.elements.content;
    area.value = entry.text.textContent;
    entry.markdown.hidden = true;
    actions.dataset.editing = "1";
    actions.hidden = true;
    article.classList.add("editing");
    article.append(form);
    const fit = enterSends(area, form);
    fit();
    area.focus();
    const close = () => {
      form.remove();
      article.classList.remove("editing");
      entry.markdown.hidden = false;
      delete actions.dataset.editing;
      actions.hidden = false;
      this.updateActions();
    };
    $("[data-action=cancel-edit]", form).addEventListener("click", close);
    form.addEventListener("keydown", (event) => {
      if (event.key === "Escape") close();
    });
    const clientMessageId = newId();
    onSubmit(form, async () => {
      if (!area.value.trim()) throw new ApiError("Write a message first.", 0);
      const made = await api("POST", `/api/messages/${article.dataset.id}/edit`, {
        content: area.value,
        model: chosenModel(),
        client_message_id: clientMessageId,
      });
      close();
      this.keepScrolled(() => {
        this.dropFrom(article);
        this.onMessage(made.user_message);
        this.onMessage(made.assistant_message);
      });
    });
  }

  async stop() {
    const entry = this.streamingEntry();
    if (!entry) return;
    this.stopButton.disabled = true;
    try {
      const message = await api("POST", `/api/messages/${entry.article.dataset.id}/cancel`);
      if (message.status !== "streaming") this.onMessage(message); // it had already ended
    } catch (error) {
      this.stopButton.disabled = false;
      showAlert(this.form, error);
    }
  }

  setUpComposer() {
    const form = this.form;
    const content = form.elements.content;
    // One id per draft: sending it again (after a lost response) cannot send it twice.
    content.addEventListener("input", () => delete form.dataset.clientMessageId);
    enterSends(content, form);
    form.addEventListener("settled", () => this.updateActions());
    onSubmit(form, async () => {
      if (!content.value.trim()) throw new ApiError("Write a message first.", 0);
      form.dataset.clientMessageId ||= newId();
      const sent = await api("POST", `/api/conversations/${this.id}/messages`, {
        content: content.value,
        model: chosenModel(),
        client_message_id: form.dataset.clientMessageId,
      });
      delete form.dataset.clientMessageId;
      content.value = "";
      content.dispatchEvent(new Event("input"));
      this.keepScrolled(() => {
        this.onMessage(sent.user_message);
        this.onMessage(sent.assistant_message);
      });
    });
  }
}

const TOOL_STATES = {
  "input-streaming": "preparing",
  "input-available": "running",
  "output-available": "done",
  "output-error": "failed",
};

function pretty(value) {
  if (value === undefined || value === null) return "";
  return typeof value === "string" ? value : JSON.stringify(value, null, 2);
}

// --- the start page ----------------------------------------------------------------

function setUpStart(form) {
  const content = form.elements.content;
  enterSends(content, form);
  onSubmit(form, async () => {
    const title = form.elements.title.value.trim();
    const created = await api("POST", "/api/conversations", title ? { title } : {});
    if (content.value.trim()) {
      await api("POST", `/api/conversations/${created.id}/messages`, {
        content: content.value,
        model: chosenModel(),
        client_message_id: newId(),
      });
    }
    location.assign(`/c/${created.id}`);
  });
}

// --- the drawer (phone widths) -------------------------------------------------------

function setUpDrawer() {
  const shell = $(".shell");
  if (!shell) return;
  const opener = $("[data-action=open-drawer]");
  const backdrop = $(".backdrop");
  const setOpen = (open) => {
    shell.classList.toggle("drawer-shown", open);
    opener.setAttribute("aria-expanded", String(open));
    backdrop.hidden = !open;
    // Focus moves into the drawer and back; never scroll for it (the drawer slides in).
    (open ? $(".new-chat") : opener).focus({ preventScroll: true });
  };
  opener.addEventListener("click", () => setOpen(true));
  for (const closer of $$("[data-action=close-drawer]")) closer.addEventListener("click", () => setOpen(false));
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && shell.classList.contains("drawer-shown")) setOpen(false);
  });
}

// --- the pages ----------------------------------------------------------------------

function setUp() {
  const signIn = $("[data-form=sign-in]");
  if (signIn) {
    onSubmit(signIn, async () => {
      await api("POST", "/api/session", { token: signIn.elements.token.value.trim() });
      location.reload(); // the server now renders the page this URL names
    });
  }
  $("[data-action=sign-out]")?.addEventListener("click", async () => {
    await api("DELETE", "/api/session").catch(() => {});
    location.assign("/");
  });
  setUpDrawer();
  setUpModelPicker();
  const start = $("[data-form=new-conversation]");
  if (start) setUpStart(start);
  const section = $(".conversation");
  const conversation = section ? new Conversation(section) : null;
  const listElement = $("[data-live-list]");
  if (listElement) {
    const list = new ConversationList(listElement, conversation?.id);
    if (conversation) {
      const heading = $("[data-conversation-title]");
      list.onTitle = (title) => {
        heading.textContent = untitled(title);
        document.title = `${untitled(title)} · chatsvc`;
      };
      list.onDeleted = () => conversation.gone();
    }
  }
}

setUp();
