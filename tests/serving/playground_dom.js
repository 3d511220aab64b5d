// Runs playground.js (path in argv[2]) against a stand-in DOM whose elements refuse innerHTML, outerHTML
// and insertAdjacentHTML, with /info, /v1/tasks and /v1/predict answered from argv[3] (JSON); prints the
// text the page then shows, as JSON.
const fs = require("fs");
const replies = JSON.parse(process.argv[3]);

class Element {
  constructor(tag) { this.tagName = tag; this.children = []; this.textContent = ""; this.hidden = false; }
  append(...kids) { this.children.push(...kids); }
  replaceChildren(...kids) { this.children = kids; }
  get firstChild() { return this.children[0]; }
  get value() { return this.chosen !== undefined ? this.chosen : this.children[0] && this.children[0].value; }
  set value(v) { this.chosen = v; }  // a select's value is its first option's until one is chosen
  text() { return this.textContent + this.children.map((c) => c.text()).join(" | "); }
}
for (const name of ["innerHTML", "outerHTML"]) {
  Object.defineProperty(Element.prototype, name, { set() { throw new Error(name + " was set"); } });
}
Element.prototype.insertAdjacentHTML = () => { throw new Error("insertAdjacentHTML was called"); };

const ids = {};
global.document = {
  getElementById: (id) => (ids[id] = ids[id] || new Element("div")),
  createElement: (tag) => new Element(tag),
  write: () => { throw new Error("document.write was called"); },
};
global.sessionStorage = { getItem: () => null, setItem: () => {} };
global.performance = { now: () => 0 };
global.fetch = async (path) => ({ ok: true, status: 200, json: async () => replies[path] });

eval(fs.readFileSync(process.argv[2], "utf8"));
setTimeout(async () => {
  const listed = ids.answer.text();
  for (const [id, box] of Object.entries(ids)) if (id.startsWith("field-")) box.value = "x";
  await ids.ask.onclick();
  console.log(JSON.stringify({ info: ids.info.text(), options: ids.task.text(), listed, answer: ids.answer.text() }));
}, 50);
