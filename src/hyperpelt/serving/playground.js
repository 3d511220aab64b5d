// The playground: every text from the server (task names, labels, answers, errors) reaches the page
// through textContent only, never as HTML.
let tasks = [], readsImages = false;
const $ = (id) => document.getElementById(id);

function element(tag, className, text) {
  const made = document.createElement(tag);
  if (className) made.className = className;
  if (text !== undefined) made.textContent = text;
  return made;
}

function show(...children) { $("answer").replaceChildren(...children); }

// The API key, when the server asks for one: kept for this tab only, sent as a Bearer token.
function askServer(path, options = {}) {
  const key = sessionStorage.getItem("hyperpelt-key");
  const headers = { ...(options.headers || {}), ...(key ? { Authorization: "Bearer " + key } : {}) };
  return fetch(path, { ...options, headers });
}

function showFields() {
  const task = tasks.find((t) => t.name === $("task").value);
  $("fields").replaceChildren();
  task.fields.forEach((field, i) => {
    const label = element("label", "", task.shown_as[i] === field ? field : task.shown_as[i] + " (" + field + ")");
    const box = element("textarea");
    box.id = "field-" + field;
    label.htmlFor = box.id;
    $("fields").append(label, box);
  });
  const labels = task.labels ? "labels: " + task.labels.join(", ") : task.kind;
  show(element("span", "meta", labels + "; metrics: " + task.metrics.join(", ")));
}

function readImage() {
  const file = $("image").files[0];
  if (!file) return Promise.resolve(null);
  return new Promise((resolve) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result.split(",")[1]);
    reader.readAsDataURL(file);
  });
}

async function ask() {
  const task = tasks.find((t) => t.name === $("task").value);
  const instance = { task: task.name };
  task.fields.forEach((field) => { instance[field] = $("field-" + field).value; });
  if (readsImages) { const image = await readImage(); if (image) instance.image = image; }
  const started = performance.now();
  const response = await askServer("/v1/predict", {
    method: "POST", headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ instances: [instance] }),
  });
  const body = await response.json();
  const ms = (performance.now() - started).toFixed(0);
  if (!response.ok) {
    show(element("span", "error", response.status + " " + body.error_type + ": " + body.error));
    return;
  }
  const p = body.predictions[0];
  show(element("div", "label", p.label === null ? "(no valid label)" : String(p.label)),
       element("div", "meta", "task " + p.task + ", value " + JSON.stringify(p.value) + ", " + ms + " ms"));
}

async function start() {
  const asked = await askServer("/info");
  if (asked.status === 401) {
    $("key-row").hidden = false;
    $("info").textContent = "this server needs an API key";
    return;
  }
  const info = await asked.json();
  const listed = await askServer("/v1/tasks");
  if (!listed.ok) { $("info").textContent = "the server is " + info.status + "; reload in a moment"; return; }
  tasks = (await listed.json()).tasks;
  readsImages = info.reads_images === true;
  $("image-row").hidden = !readsImages;
  $("info").textContent = info.model + " · " + info.method + " · " + tasks.length + " tasks · batching "
    + info.batching.batching;
  $("task").replaceChildren(...tasks.map((t) => { const o = element("option", "", t.name); o.value = t.name; return o; }));
  $("task").onchange = showFields;
  $("ask").onclick = ask;
  showFields();
}

$("use-key").onclick = () => {
  sessionStorage.setItem("hyperpelt-key", $("key").value.trim());
  $("key-row").hidden = true;
  start();
};
start();
