// Markdown for messages: markdown-it renders, DOMPurify keeps only what a message may hold.
//
// Raw HTML in a message is never interpreted: markdown-it runs with `html: false`,
// so `<script>` or `<img onerror>` arrive as text. Links go through two filters:
// markdown-it's own (it drops javascript:, vbscript:, file: and most data: URLs,
// after decoding entities) and DOMPurify's, which here allows only http(s),
// mailto and in-page links. Images become links (the page loads nothing a
// message names). Both libraries are vendored in static/vendor (see its README).
"use strict";

const Markdown = (() => {
  const md = window.markdownit({ html: false, linkify: true, breaks: true, typographer: false });
  const escape = md.utils.escapeHtml;

  // An image is shown as a link to it, labelled by its alt text.
  md.renderer.rules.image = (tokens, idx, options, env, self) => {
    const token = tokens[idx];
    const src = token.attrGet("src") || "";
    const label = self.renderInlineAsText(token.children || [], options, env) || src;
    return `<a href="${escape(src)}">${escape(label)}</a>`;
  };

  // Table alignment arrives as an inline style, which the page's policy forbids: a class instead.
  const ALIGN = /text-align:\s*(left|right|center)/i;
  md.core.ruler.push("align_class", (state) => {
    for (const token of state.tokens) {
      const align = ALIGN.exec(token.attrGet("style") || "");
      if (!align) continue;
      token.attrs = token.attrs.filter(([name]) => name !== "style");
      token.attrJoin("class", `align-${align[1].toLowerCase()}`);
    }
  });

  const SAFE_URL = /^(?:https?:|mailto:|#)/i;
  const PURIFY = {
    ALLOWED_TAGS: [
      "a", "p", "br", "hr", "h1", "h2", "h3", "h4", "h5", "h6", "strong", "em", "s", "del",
      "code", "pre", "blockquote", "ul", "ol", "li", "table", "thead", "tbody", "tr", "th", "td",
    ],
    ALLOWED_ATTR: ["href", "title", "class", "start"],
    ALLOWED_URI_REGEXP: SAFE_URL,
    ALLOW_DATA_ATTR: false,
  };

  DOMPurify.addHook("uponSanitizeAttribute", (node, data) => {
    if (data.attrName === "class") {
      data.keepAttr = /^(language-[\w+#.-]+|align-(left|right|center))$/.test(data.attrValue);
    }
  });
  DOMPurify.addHook("afterSanitizeAttributes", (node) => {
    if (node.tagName === "A") {
      if (node.hasAttribute("href")) {
        node.setAttribute("target", "_blank");
        node.setAttribute("rel", "noopener noreferrer nofollow");
      }
    }
  });

  const copyIcon = '<svg viewBox="0 0 24 24" aria-hidden="true"><rect x="9" y="9" width="11" height="11" rx="2"/><path d="M5 15V5a1 1 0 0 1 1-1h9"/></svg>';

  // A code block gets a header with its language and a Copy button; it scrolls inside itself.
  function decorateCode(root) {
    for (const pre of root.querySelectorAll("pre")) {
      const code = pre.querySelector("code");
      const language = /language-([\w+#.-]+)/.exec(code?.className || "")?.[1] || "code";
      const block = document.createElement("div");
      block.className = "code-block";
      const head = document.createElement("div");
      head.className = "code-head";
      const name = document.createElement("span");
      name.textContent = language;
      const copy = document.createElement("button");
      copy.type = "button";
      copy.className = "copy-code";
      copy.dataset.action = "copy-code";
      copy.innerHTML = copyIcon;
      copy.append("Copy code");
      head.append(name, copy);
      pre.replaceWith(block);
      block.append(head, pre);
    }
    for (const table of root.querySelectorAll("table")) {
      const wrap = document.createElement("div");
      wrap.className = "table-wrap";
      table.replaceWith(wrap);
      wrap.append(table);
    }
  }

  return {
    // Renders `source` into `target`, replacing what it held.
    render(target, source) {
      const clean = DOMPurify.sanitize(md.render(source), { ...PURIFY, RETURN_DOM_FRAGMENT: true });
      decorateCode(clean);
      target.replaceChildren(clean);
    },
  };
})();
