// chatsvc's pages: the helpers every page uses (the API, forms, times, models), the
// start page, the drawer, and setting each page up. Loaded last: list.js
// (ConversationList) and conversation.js (Conversation) come before it and use
// these helpers once the page runs them. User and model text never becomes HTML
// here: it is set as text, and rendered only by markdown.js.
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

// --- shared by the list and the conversation ------------------------------------

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
  // Every handler is attached: until now a click or Enter would do the browser's default
  // (the page is painted before its deferred scripts run). Tests wait for this mark.
  document.documentElement.dataset.ready = "true";
}

setUp();
