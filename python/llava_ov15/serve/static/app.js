// Web demo for `python -m llava_ov15.serve --ui`: the page talks to the same
// /v1/chat/completions API as any client, with stream: true, and reads the server-sent
// events from the fetch body (EventSource cannot POST a body).
"use strict";

const state = { messages: [], image: null, busy: false };
const $ = (id) => document.getElementById(id);

function showError(message) {
  $("error").textContent = message || "";
  $("error").hidden = !message;
}

function setImage(dataUrl) {
  state.image = dataUrl;
  $("image-preview").src = dataUrl || "";
  $("preview-box").hidden = !dataUrl;
  if (!dataUrl) $("image-input").value = "";
}

function readFile(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(new Error(`cannot read ${file.name || "the image"}`));
    reader.readAsDataURL(file);
  });
}

function useFile(file) {
  if (!file) return;
  readFile(file).then(setImage, (e) => showError(e.message));
}

function addMessage(role, text, image) {
  const el = document.createElement("div");
  el.className = `msg ${role}`;
  if (image) {
    const img = document.createElement("img");
    img.src = image;
    img.alt = "attached image";
    el.appendChild(img);
  }
  const span = document.createElement("span");
  span.className = "text";
  span.textContent = text;
  el.appendChild(span);
  $("history").appendChild(el);
  el.scrollIntoView({ block: "end" });
  return el;
}

// Yields the parsed JSON of each `data:` event until `data: [DONE]`.
async function* sseEvents(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      for (const line of event.split("\n")) {
        if (!line.startsWith("data:")) continue;
        const data = line.slice(5).trim();
        if (data === "[DONE]") return;
        yield JSON.parse(data);
      }
    }
  }
}

async function errorMessage(response) {
  try {
    const body = await response.json();
    if (body && body.error && body.error.message) return body.error.message;
  } catch (e) { /* not JSON: fall back to the status line */ }
  return `HTTP ${response.status} ${response.statusText}`;
}

async function send() {
  if (state.busy) return;
  const question = $("question").value.trim();
  if (!question && !state.image) {
    showError("Type a question (and optionally add an image).");
    return;
  }
  const content = [];
  if (state.image) content.push({ type: "image_url", image_url: { url: state.image } });
  if (question) content.push({ type: "text", text: question });
  const userMessage = { role: "user", content };
  const body = {
    messages: [...state.messages, userMessage],
    stream: true,
    max_tokens: Number($("max-tokens").value) || 256,
    temperature: Number($("temperature").value) || 0,
  };
  showError("");
  state.busy = true;
  $("send").disabled = true;
  const userEl = addMessage("user", question, state.image);
  const answerEl = addMessage("assistant", "");
  answerEl.classList.add("streaming");
  const textEl = answerEl.querySelector(".text");
  let answer = "";
  try {
    const response = await fetch("v1/chat/completions", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
    });
    if (!response.ok) throw new Error(await errorMessage(response));
    let finish = null;
    for await (const event of sseEvents(response)) {
      if (event.error) throw new Error(event.error.message);
      const choice = (event.choices || [])[0];
      if (!choice) continue;
      if (choice.delta && choice.delta.content) {
        answer += choice.delta.content;
        textEl.textContent = answer;
      }
      if (choice.finish_reason) finish = choice.finish_reason;
    }
    if (!finish) throw new Error("the answer was cut off (connection closed early)");
    state.messages.push(userMessage, { role: "assistant", content: answer });
    answerEl.dataset.finish = finish;
    answerEl.dataset.done = "true";
    $("question").value = "";
    setImage(null);
  } catch (e) {
    // The failed turn leaves the conversation; the question stays in the box to retry.
    userEl.remove();
    answerEl.remove();
    showError(`Error: ${e.message}`);
  } finally {
    answerEl.classList.remove("streaming");
    state.busy = false;
    $("send").disabled = false;
  }
}

$("ask").addEventListener("submit", (ev) => { ev.preventDefault(); send(); });
$("question").addEventListener("keydown", (ev) => {
  if (ev.key === "Enter" && !ev.shiftKey) { ev.preventDefault(); send(); }
});
$("image-input").addEventListener("change", (ev) => useFile(ev.target.files[0]));
$("clear-image").addEventListener("click", () => setImage(null));
$("new-chat").addEventListener("click", () => {
  state.messages = [];
  $("history").replaceChildren();
  showError("");
});
document.addEventListener("paste", (ev) => {
  for (const item of (ev.clipboardData && ev.clipboardData.items) || []) {
    if (item.type.startsWith("image/")) {
      ev.preventDefault();
      useFile(item.getAsFile());
      return;
    }
  }
});
document.addEventListener("dragover", (ev) => ev.preventDefault());
document.addEventListener("drop", (ev) => {
  const file = ev.dataTransfer && ev.dataTransfer.files[0];
  if (file && file.type.startsWith("image/")) { ev.preventDefault(); useFile(file); }
});
fetch("v1/models").then((r) => r.json()).then((m) => {
  $("model").textContent = m.data && m.data[0] ? m.data[0].id : "";
}).catch(() => {});
