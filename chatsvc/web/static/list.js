// The conversation list beside the page, kept live from the caller's room (GET /api/events).
//
// Loaded before chat.js, which defines the helpers it uses ($, api, ICONS, ...) and starts it.
"use strict";

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
      // Only entries the list had before the read may go: one an event added while the
      // read was in flight is newer than what the read saw.
      const before = new Set();
      for (const li of $$("li", this.list)) before.add(li.dataset.id);
      const { items } = await api("GET", "/api/conversations?limit=50");
      const seen = new Set(items.map((c) => c.id));
      // A page of older conversations (?before=) keeps its own entries.
      const newest = !new URLSearchParams(location.search).has("before");
      if (newest) {
        for (const li of $$("li", this.list)) {
          if (before.has(li.dataset.id) && !seen.has(li.dataset.id)) li.remove();
        }
      }
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
