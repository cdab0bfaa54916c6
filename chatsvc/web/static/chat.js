// chatsvc's pages: sign in, start a conversation, follow one live.
//
// The server renders a conversation as the database has it; this script continues
// from exactly that state over the conversation stream. It places text by offset
// (in code points, as the server counts), ignoring what it already shows and
// asking the server to fill any gap, so text is never duplicated or lost across
// reconnects. User and model text only ever goes through textContent, never HTML.
"use strict";

const $ = (selector, root = document) => root.querySelector(selector);

// --- the API ---------------------------------------------------------------------

class ApiError extends Error {
  constructor(message, status) {
    super(message);
    this.status = status;
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
    throw new ApiError(message, response.status);
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
    if (button.disabled) return;
    button.disabled = true;
    showAlert(form, null);
    try {
      await action(form);
    } catch (error) {
      showAlert(form, error);
    } finally {
      button.disabled = false;
    }
  });
}

function newId() {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// --- a conversation, live ----------------------------------------------------------

class Conversation {
  constructor(section) {
    this.id = section.dataset.conversationId;
    this.list = $(".messages", section);
    this.empty = $(".empty", section);
    this.form = $("[data-form=send]", section);
    this.template = $("#message-template");
    this.connection = $(".connection");
    this.messages = new Map(); // id -> {article, text, length}
    for (const article of this.list.querySelectorAll("article")) this.track(article);
    this.retryDelay = 1000;
    this.handlers = {
      message: (m) => this.onMessage(m),
      delta: (d) => this.onDelta(d),
      status: (s) => this.onStatus(s),
      done: (d) => this.onDone(d),
    };
    this.setUpComposer();
    this.list.addEventListener("click", (event) => {
      const button = event.target.closest("[data-action=stop]");
      if (button) this.stop(button);
    });
    this.connect(section.dataset.cursor);
  }

  track(article) {
    const entry = { article, text: $(".text", article), length: Number(article.dataset.length) };
    this.messages.set(article.dataset.id, entry);
    return entry;
  }

  // The position right after what the page shows: the last message, at its length.
  cursor(id = this.list.lastElementChild?.dataset.id) {
    return id ? `${id}:${this.messages.get(id).length}` : "";
  }

  connect(cursor) {
    const query = cursor ? `?last_event_id=${encodeURIComponent(cursor)}` : "";
    const source = new EventSource(`/api/conversations/${this.id}/stream${query}`);
    this.source = source;
    for (const [name, handle] of Object.entries(this.handlers)) {
      source.addEventListener(name, (event) => this.keepScrolled(() => handle(JSON.parse(event.data))));
    }
    source.addEventListener("open", () => {
      this.connection.textContent = "live";
      this.retryDelay = 1000;
      this.checkStreaming();
    });
    // While CONNECTING the browser retries by itself, sending Last-Event-ID. It gives
    // up (CLOSED) on an HTTP error: 404 once the conversation is deleted, 401 once
    // signed out, a proxy's 502 while the server restarts.
    source.addEventListener("error", () => {
      this.connection.textContent = "reconnecting…";
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
      this.connection.textContent = "This conversation no longer exists.";
    } else if (probe?.status === 401) {
      this.connection.textContent = "Signed out: reload the page to sign in.";
    } else {
      this.connect(this.cursor());
    }
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

  onMessage(m) {
    const entry = this.messages.get(m.id) || this.add(m);
    // The position is counted from the text itself, not taken from content_length: a
    // message read while a checkpoint commits can say more than its content holds.
    const length = Array.from(m.content).length;
    if (length > entry.length) {
      entry.text.textContent = m.content;
      entry.length = length;
    }
    this.setStatus(entry, m.status, m.error);
  }

  onDelta(d) {
    const entry = this.messages.get(d.message_id);
    if (!entry) return this.resync(this.cursor());
    const chars = Array.from(d.text); // code points, as offsets count them
    const end = d.offset + chars.length;
    if (end <= entry.length) return; // already shown
    if (d.offset > entry.length) return this.resync(this.cursor(d.message_id));
    const text = chars.slice(entry.length - d.offset).join("");
    const last = entry.text.lastChild;
    if (last && last.nodeType === Node.TEXT_NODE) last.appendData(text);
    else entry.text.append(text);
    entry.length = end;
  }

  onStatus(s) {
    const entry = this.messages.get(s.message_id);
    if (entry && s.resumed && entry.article.dataset.status === "streaming") {
      $(".status", entry.article).textContent = "streaming (resumed)";
    }
  }

  onDone(d) {
    const entry = this.messages.get(d.message_id);
    if (!entry) return;
    if (d.content_length > entry.length) return this.resync(this.cursor(d.message_id));
    this.setStatus(entry, d.status, d.error);
  }

  add(m) {
    const article = this.template.content.firstElementChild.cloneNode(true);
    article.id = `m-${m.id}`;
    article.dataset.id = m.id;
    article.classList.replace("assistant", m.role);
    $(".author", article).textContent = m.role === "user" ? "You" : "Assistant";
    this.list.append(article);
    this.empty.hidden = true;
    return this.track(article);
  }

  setStatus(entry, status, error) {
    const article = entry.article;
    if (article.dataset.status !== "streaming") return; // a finished message never changes
    article.dataset.status = status;
    if (status === "streaming") return;
    article.setAttribute("aria-busy", "false");
    $(".status", article).textContent = status === "completed" ? "" : status;
    $(".stop", article)?.remove();
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

  async stop(button) {
    button.disabled = true;
    try {
      const message = await api("POST", `/api/messages/${button.closest("article").dataset.id}/cancel`);
      if (message.status !== "streaming") this.onMessage(message); // it had already ended
    } catch (error) {
      button.disabled = false;
      showAlert(this.form, error);
    }
  }

  setUpComposer() {
    const form = this.form;
    const content = form.elements.content;
    // One id per draft: sending it again (after a lost response) cannot send it twice.
    content.addEventListener("input", () => delete form.dataset.clientMessageId);
    content.addEventListener("keydown", (event) => {
      if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
        event.preventDefault();
        form.requestSubmit();
      }
    });
    onSubmit(form, async () => {
      if (!content.value.trim()) throw new ApiError("Write a message first.", 0);
      form.dataset.clientMessageId ||= newId();
      const sent = await api("POST", `/api/conversations/${this.id}/messages`, {
        content: content.value,
        client_message_id: form.dataset.clientMessageId,
      });
      delete form.dataset.clientMessageId;
      content.value = "";
      this.keepScrolled(() => {
        this.onMessage(sent.user_message);
        this.onMessage(sent.assistant_message);
      });
    });
  }
}

// --- the other pages ----------------------------------------------------------------

function setUp() {
  const signIn = $("[data-form=sign-in]");
  if (signIn) {
    onSubmit(signIn, async () => {
      await api("POST", "/api/session", { token: signIn.elements.token.value.trim() });
      location.reload(); // the server now renders the page this URL names
    });
  }
  const start = $("[data-form=new-conversation]");
  if (start) {
    onSubmit(start, async () => {
      const created = await api("POST", "/api/conversations", { title: start.elements.title.value.trim() });
      location.assign(`/c/${created.id}`);
    });
  }
  $("[data-action=sign-out]")?.addEventListener("click", async () => {
    await api("DELETE", "/api/session").catch(() => {});
    location.assign("/");
  });
  const section = $(".conversation");
  if (section) new Conversation(section);
}

setUp();
