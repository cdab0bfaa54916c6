// One conversation, followed live over its stream (see chat.js for the helpers it uses).
//
// The server renders a conversation as the database has it; this continues from
// exactly that state. It places text and reasoning by offset (in code points, as
// the server counts), ignoring what it already shows and asking the server to fill
// any gap, so text is never duplicated or lost across reconnects. A message's
// source text lives in its `.text` element (a plain text node, kept hidden once
// rendered); what the reader sees is that text rendered by markdown.js.
"use strict";

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
