// Drives the Vercel AI SDK's real chat client against a chatsvc instance, for tests/e2e/test_aisdk.py.
//
//   node harness.mjs '<JSON command>'   → prints one JSON result on stdout
//
// Commands (every one has `base`, the server's URL, and `token`):
//   {"do": "send", chatId, messages, trigger, messageId?, dropAfter?, resumeBase?}
//       DefaultChatTransport.sendMessages + readUIMessageStream, as useChat sends. With
//       `dropAfter` (a number of text-delta chunks) the connection is dropped there and the
//       transport's reconnectToStream (on `resumeBase` if given) reads the rest.
//   {"do": "reload", chatId, messages}
//       A reloaded page: `new Chat({id, transport, messages})` from @ai-sdk/react, then
//       resumeStream(), which is what useChat({resume: true}) does on mount.
//   {"do": "chat", chatId, messages?, actions: [{send: text} | {regenerate: true} |
//                                                {edit: index of a user message, text}]}
//       useChat's own calls on one `new Chat(...)`: sendMessage, regenerate, sendMessage with
//       a messageId (an edit); the chat's state after each.
//   {"do": "cancel", chatId, messages}
//       Sends, and once text arrives asks chatsvc to cancel the answer (the stop button of
//       docs/ai-sdk.md), then reads the stream to its end.
//
// Printed: the UIMessage(s) the SDK built, the chunk types it received, and what ended them.
import { Chat } from "@ai-sdk/react";
import { DefaultChatTransport, readUIMessageStream } from "ai";

const command = JSON.parse(process.argv[2]);

function transport(base) {
  return new DefaultChatTransport({
    api: `${base}/api/chat`,
    headers: { Authorization: `Bearer ${command.token}` },
  });
}

// Records each chunk's type (and the chunks themselves) as the SDK reads them.
function recording(stream, seen, onChunk) {
  return stream.pipeThrough(
    new TransformStream({
      transform(chunk, controller) {
        seen.push(chunk);
        controller.enqueue(chunk);
        onChunk?.(chunk);
      },
    }),
  );
}

// Reads a chunk stream into the last UIMessage the SDK built; `error` is what stopped it.
async function read(stream) {
  const chunks = [];
  const errors = [];
  let message = null;
  let error = null;
  try {
    for await (const snapshot of readUIMessageStream({
      stream: recording(stream, chunks),
      onError: (e) => errors.push(String(e?.message ?? e)),
    })) {
      message = snapshot;
    }
  } catch (e) {
    error = String(e?.name ?? e);
  }
  return { message, chunks, errors, error };
}

async function send() {
  const abort = new AbortController();
  let deltas = 0;
  const stream = await transport(command.base).sendMessages({
    chatId: command.chatId,
    messages: command.messages,
    trigger: command.trigger ?? "submit-message",
    messageId: command.messageId,
    abortSignal: abort.signal,
  });
  const first = await read(
    recording(stream, [], (chunk) => {
      if (chunk.type === "text-delta" && ++deltas === command.dropAfter) abort.abort();
    }),
  );
  if (command.dropAfter === undefined) return { first };
  const again = await transport(command.resumeBase ?? command.base).reconnectToStream({
    chatId: command.chatId,
  });
  return { first, resumed: again === null ? null : await read(again) };
}

async function cancel() {
  const stream = await transport(command.base).sendMessages({
    chatId: command.chatId,
    messages: command.messages,
    trigger: "submit-message",
    abortSignal: undefined,
  });
  let asked = null;
  const first = await read(
    recording(stream, [], (chunk) => {
      if (chunk.type === "start") asked = chunk.messageId;
      if (chunk.type === "text-delta" && asked !== null) {
        const id = asked;
        asked = null;
        fetch(`${command.base}/api/messages/${id}/cancel`, {
          method: "POST",
          headers: { Authorization: `Bearer ${command.token}` },
        });
      }
    }),
  );
  return { first };
}

function snapshot(chat, finished) {
  return {
    status: chat.status,
    error: chat.error ? String(chat.error.message) : null,
    messages: structuredClone(chat.messages),
    finished,
  };
}

async function chat() {
  let finished = null;
  const chat = new Chat({
    id: command.chatId,
    transport: transport(command.base),
    messages: command.messages ?? [],
    onFinish: ({ message, finishReason, isError }) => {
      finished = { messageId: message.id, finishReason: finishReason ?? null, isError };
    },
  });
  const states = [];
  for (const action of command.actions) {
    finished = null;
    if (action.regenerate) await chat.regenerate();
    else if (action.edit !== undefined) {
      // `edit` is the index of the user message in the chat's messages.
      const messageId = chat.messages[action.edit].id;
      await chat.sendMessage({ text: action.text, messageId });
    }
    else await chat.sendMessage({ text: action.send });
    states.push(snapshot(chat, finished));
  }
  return { states };
}

async function reload() {
  const data = [];
  let finished = null;
  const chat = new Chat({
    id: command.chatId,
    transport: transport(command.base),
    messages: command.messages ?? [],
    onData: (part) => data.push(part),
    onFinish: ({ message, finishReason, isError }) => {
      finished = { messageId: message.id, finishReason: finishReason ?? null, isError };
    },
  });
  await chat.resumeStream();
  return { ...snapshot(chat, finished), data };
}

const actions = { send, reload, cancel, chat };
const result = await actions[command.do]();
process.stdout.write(JSON.stringify(result));
