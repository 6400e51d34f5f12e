// qstar inspect: the page. Plain DOM, no framework, nothing fetched but
// this server's own JSON. Text from the files is always set as text,
// never parsed as HTML.
"use strict";

const SVG_NS = "http://www.w3.org/2000/svg";
const COLORS = ["#2459c4", "#d1495b", "#2a9d8f", "#e9a03b", "#7b4fb0", "#5d6873", "#8c564b", "#17becf"];

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  setAttrs(node, attrs);
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

function svg(tag, attrs, ...children) {
  const node = document.createElementNS(SVG_NS, tag);
  setAttrs(node, attrs);
  for (const c of children.flat()) {
    if (c === null || c === undefined) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

function setAttrs(node, attrs) {
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on") && typeof v === "function") node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : String(v));
  }
}

async function api(path) {
  const r = await fetch(path);
  const body = await r.json();
  if (!r.ok) throw new Error(body.error || r.statusText);
  return body;
}

function fmt(x, digits = 3) {
  if (x === null || x === undefined || !Number.isFinite(Number(x))) return "—";
  return Number(x).toFixed(digits);
}

function fmtSci(x) {
  if (x === null || x === undefined || !Number.isFinite(Number(x))) return "unknown";
  return Number(x).toExponential(3);
}

function fmtInt(x) {
  if (x === null || x === undefined) return "—";
  return Number(x).toLocaleString("en-US");
}

const view = () => document.getElementById("view");
let files = [];
let current = null;

async function main() {
  try {
    files = (await api("api/files")).files;
  } catch (e) {
    view().replaceChildren(el("p", { class: "error" }, "cannot list the files: " + e.message));
    return;
  }
  const nav = document.getElementById("files");
  nav.replaceChildren(
    ...files.map((f) =>
      el(
        "button",
        { id: "file-" + f.id, "data-kind": f.kind, title: f.name, onclick: () => (location.hash = "file=" + f.id) },
        shortName(f.name),
        el("span", { class: "kind" }, f.kind),
      ),
    ),
  );
  window.addEventListener("hashchange", route);
  route();
}

function shortName(name) {
  const parts = name.split(/[\\/]/);
  return parts.slice(-2).join("/");
}

function route() {
  const m = /file=(\d+)/.exec(location.hash);
  const id = m ? Number(m[1]) : 0;
  const f = files.find((x) => x.id === id) || files[0];
  if (!f) return;
  current = f.id;
  for (const b of document.querySelectorAll("nav button")) b.classList.toggle("active", b.id === "file-" + f.id);
  const show = { labels: showPairs, ratings: showPairs, search: showSearch, metrics: showMetrics, sweep: showSweep }[f.kind];
  view().replaceChildren(el("h2", {}, f.name), el("p", { class: "note" }, "Loading…"));
  show(f).catch((e) => {
    if (current === f.id) view().append(el("p", { class: "error" }, e.message));
  });
}

// ---------------------------------------------------------------- pairs

const PAIRS_PAGE = 20;

async function showPairs(f) {
  const state = { offset: 0, disagree: false, bias: false, q: "" };
  const list = el("div", { id: "pairs" });
  const shown = el("span", { id: "shown" });
  const pager = el("div", { class: "pager" });
  const search = el("input", { id: "search", type: "search", placeholder: "search the text" });
  const disagree = el("input", { id: "only-disagree", type: "checkbox" });
  const sort = el(
    "select",
    { id: "sort" },
    el("option", { value: "file" }, "file order"),
    el("option", { value: "bias", disabled: f.kind !== "labels" }, "most position-biased first"),
  );
  let timer = null;
  search.addEventListener("input", () => {
    clearTimeout(timer);
    timer = setTimeout(() => {
      state.q = search.value;
      state.offset = 0;
      load();
    }, 200);
  });
  disagree.addEventListener("change", () => {
    state.disagree = disagree.checked;
    state.offset = 0;
    load();
  });
  sort.addEventListener("change", () => {
    state.bias = sort.value === "bias";
    state.offset = 0;
    load();
  });
  const what = f.kind === "labels" ? "labeled" : "rated";
  view().replaceChildren(
    el("h2", {}, f.name),
    el(
      "p",
      {},
      el("span", { id: "pair-count" }, String(f.count)),
      ` pairs ${what}. `,
      f.kind === "labels"
        ? "Each pair's soft label is the labeler's probability for the reply it prefers; the source's choice is the reply the file's source marked as chosen."
        : "Each reply's reward is the model's expected rating (1–10) mapped to [−1, 1] as (rating − 5.5) / 4.5; the bars are P(1) … P(10); the source's choice is the reply the file marked as chosen.",
    ),
    el(
      "div",
      { class: "controls" },
      search,
      el("label", {}, disagree, " only disagreements with the source"),
      el("label", {}, "order: ", sort),
    ),
    shown,
    list,
    pager,
  );
  let seq = 0;
  async function load() {
    const mine = ++seq;
    const params = new URLSearchParams({ offset: state.offset, limit: PAIRS_PAGE });
    if (state.disagree) params.set("filter", "disagree");
    if (state.bias) params.set("sort", "bias");
    if (state.q.trim()) params.set("q", state.q.trim());
    const page = await api(`api/files/${f.id}/records?${params}`);
    if (mine !== seq || current !== f.id) return;
    list.replaceChildren(...page.items.map((item) => (f.kind === "labels" ? labelCard(item, f.principles || []) : ratingCard(item))));
    shown.replaceChildren(
      el("span", { id: "matched" }, String(page.matched)),
      page.matched === page.total ? " pairs" : ` of ${page.total} pairs match`,
      page.items.length ? `; showing ${page.offset + 1}–${page.offset + page.items.length}` : "",
    );
    renderPager(pager, page, PAIRS_PAGE, (offset) => {
      state.offset = offset;
      load();
    });
  }
  await load();
}

function renderPager(pager, page, size, go) {
  const pages = Math.max(1, Math.ceil(page.matched / size));
  const at = Math.floor(page.offset / size) + 1;
  pager.replaceChildren(
    el("button", { class: "prev", disabled: at <= 1, onclick: () => go(page.offset - size) }, "‹ previous"),
    el("span", {}, `page ${at} of ${pages}`),
    el("button", { class: "next", disabled: at >= pages, onclick: () => go(page.offset + size) }, "next ›"),
  );
}

function messages(value) {
  if (value === null || value === undefined) return [];
  if (typeof value === "string") return [{ role: "", content: value }];
  if (Array.isArray(value)) return value.map((m) => ({ role: m.role || "", content: String(m.content ?? "") }));
  return [{ role: "", content: JSON.stringify(value) }];
}

// The conversation and the two replies, whatever the key layout: TRL rows
// (prompt + chosen/rejected, strings or messages) or OpenRLHF's whole
// conversations in chosen/rejected.
function splitPair(record) {
  const chosen = messages(record.chosen);
  const rejected = messages(record.rejected);
  let conversation = messages(record.prompt);
  if (record.prompt === undefined && chosen.length > 1) conversation = chosen.slice(0, -1);
  const last = (ms) => (ms.length ? ms[ms.length - 1].content : "");
  return { conversation, chosen: last(chosen), rejected: last(rejected) };
}

function conversationView(conversation) {
  return el(
    "div",
    { class: "conversation" },
    conversation.map((m) => el("div", { class: "msg" }, m.role ? el("span", { class: "role" }, m.role + ":") : null, m.content)),
  );
}

function probBar(p, title) {
  const pct = Math.max(0, Math.min(1, Number(p))) * 100;
  return el(
    "span",
    { class: "bar", title },
    el("span", { class: "fill", style: `width:${pct}%` }),
    el("span", { class: "mid" }),
  );
}

function labelCard(item, principleTexts) {
  const r = item.record;
  const pair = splitPair(r);
  // The record's chosen reply is the one the labeler prefers; the source's
  // choice is chosen when P(source's choice) ≥ 1/2, else rejected.
  const sourceFirst = r.p_human_chosen >= 0.5;
  const sourceReply = sourceFirst ? pair.chosen : pair.rejected;
  const otherReply = sourceFirst ? pair.rejected : pair.chosen;
  const agrees = r.agrees_with_human === true;
  const card = el(
    "div",
    { class: "card pair " + (agrees ? "agree" : "disagree"), "data-index": item.index, "data-line": r.line ?? item.line },
    el(
      "div",
      { class: "card-head" },
      el("strong", {}, `pair at input line ${r.line ?? item.line}`),
      el("span", { class: "badge " + (agrees ? "good" : "bad") }, agrees ? "agrees with the source" : "disagrees with the source"),
      el("span", {}, "soft label ", el("strong", { class: "soft-label num", "data-value": String(r.soft_label) }, fmt(r.soft_label))),
      el("span", {}, "P(source's choice) ", el("strong", { class: "p-source num", "data-value": String(r.p_human_chosen) }, fmt(r.p_human_chosen)), " ", probBar(r.p_human_chosen, "P(source's choice is better); the dashed line is 1/2")),
      item.position_bias !== null && item.position_bias !== undefined
        ? el("span", { class: "badge", title: "mean over principles of |P(A) in one order + P(A) in the other − 1|" }, "position bias ", el("span", { class: "bias num" }, fmt(item.position_bias)))
        : null,
    ),
    conversationView(pair.conversation),
    el(
      "div",
      { class: "replies" },
      el("div", { class: "reply source" }, el("span", { class: "title" }, "the source's choice" + (agrees ? " (the labeler's too)" : "")), sourceReply),
      el("div", { class: "reply other" }, el("span", { class: "title" }, "the other reply" + (agrees ? "" : " (the labeler's choice)")), otherReply),
    ),
    judgementTable(r.judgements || [], principleTexts),
  );
  return card;
}

function judgementTable(judgements, principleTexts) {
  const principles = [...new Set(judgements.map((j) => j.principle))];
  const rows = principles.map((p) => {
    const first = judgements.find((j) => j.principle === p && j.human_chosen_first);
    const second = judgements.find((j) => j.principle === p && !j.human_chosen_first);
    const pSource = (j, f) => (j ? (f ? j.p_a : 1 - j.p_a) : null);
    const lean = first && second ? first.p_a + second.p_a - 1 : null;
    return el(
      "tr",
      { class: "principle", "data-principle": p },
      el("td", {}, `${p}`, principleTexts[p] ? el("span", { class: "principle-text", title: principleTexts[p] }, principleTexts[p]) : null),
      el("td", { class: "num" }, fmt(first && first.p_a)),
      el("td", { class: "num" }, fmt(pSource(first, true))),
      el("td", { class: "num" }, fmt(second && second.p_a)),
      el("td", { class: "num" }, fmt(pSource(second, false))),
      el("td", { class: "num" }, [first, second].map((j) => fmt(j && j.option_mass, 2)).join(" / ")),
      el("td", { class: "num" }, lean === null ? "—" : (lean >= 0 ? "A +" : "B +") + fmt(Math.abs(lean))),
    );
  });
  const rationales = judgements.filter((j) => j.rationale);
  return el(
    "div",
    {},
    el(
      "table",
      { class: "orders" },
      el(
        "thead",
        {},
        el(
          "tr",
          {},
          el("th", {}, ""),
          el("th", { colspan: 2 }, "source's choice shown first (A)"),
          el("th", { colspan: 2 }, "source's choice shown second (B)"),
          el("th", {}, ""),
          el("th", {}, ""),
        ),
        el(
          "tr",
          {},
          el("th", {}, "principle"),
          el("th", {}, "P(A)"),
          el("th", {}, "P(source)"),
          el("th", {}, "P(A)"),
          el("th", {}, "P(source)"),
          el("th", { title: "probability mass on the two letters before normalizing" }, "mass"),
          el("th", { title: "P(A) in one order + P(A) in the other − 1: which letter wins whatever it holds" }, "lean"),
        ),
      ),
      el("tbody", {}, rows),
    ),
    rationales.length
      ? el(
          "details",
          {},
          el("summary", {}, `chains of thought (${rationales.length})`),
          rationales.map((j) => el("div", { class: "reply" }, el("span", { class: "title" }, `principle ${j.principle}, source's choice ${j.human_chosen_first ? "first" : "second"}`), j.rationale)),
        )
      : null,
  );
}

function distribution(rating) {
  const d = (rating && rating.distribution) || [];
  const top = Math.max(...d, 1e-9);
  return el(
    "span",
    { class: "dist", title: "P(rating 1…10)" },
    d.map((p, i) => el("span", { style: `height:${Math.round((p / top) * 28) + 1}px`, title: `${i + 1}: ${fmt(p)}` })),
  );
}

function ratingCard(item) {
  const r = item.record;
  const pair = splitPair(r);
  const agrees = item.agrees === true;
  const reply = (cls, title, text, reward, rating) =>
    el(
      "div",
      { class: "reply " + cls },
      el("span", { class: "title" }, title, " — reward ", el("strong", { class: "reward num", "data-value": String(reward) }, fmt(reward)), ", expected rating ", fmt(rating && rating.expected_score, 2), " ", distribution(rating)),
      text,
    );
  return el(
    "div",
    { class: "card pair " + (agrees ? "agree" : "disagree"), "data-index": item.index, "data-line": r.line ?? item.line },
    el(
      "div",
      { class: "card-head" },
      el("strong", {}, `pair at input line ${r.line ?? item.line}`),
      el("span", { class: "badge " + (agrees ? "good" : "bad") }, agrees ? "the source's choice is rewarded higher" : "the other reply is rewarded at least as high"),
    ),
    conversationView(pair.conversation),
    el(
      "div",
      { class: "replies" },
      reply("source", "the source's choice", pair.chosen, r.reward_chosen, r.rating_chosen),
      reply("other", "the other reply", pair.rejected, r.reward_rejected, r.rating_rejected),
    ),
  );
}

// --------------------------------------------------------------- search

const SEARCH_PAGE = 5;

async function showSearch(f) {
  const state = { offset: 0, q: "" };
  const list = el("div", { id: "questions" });
  const pager = el("div", { class: "pager" });
  const shown = el("span", {});
  const search = el("input", { id: "search", type: "search", placeholder: "search questions and steps" });
  let timer = null;
  search.addEventListener("input", () => {
    clearTimeout(timer);
    timer = setTimeout(() => {
      state.q = search.value;
      state.offset = 0;
      load();
    }, 200);
  });
  view().replaceChildren(
    el("h2", {}, f.name),
    el("p", {}, el("span", { id: "question-count" }, String(f.count)), " questions searched. The highlighted steps are the chosen solution; ▸ opens a step."),
    el("div", { class: "controls" }, search),
    shown,
    list,
    pager,
  );
  let seq = 0;
  async function load() {
    const mine = ++seq;
    const params = new URLSearchParams({ offset: state.offset, limit: SEARCH_PAGE });
    if (state.q.trim()) params.set("q", state.q.trim());
    const page = await api(`api/files/${f.id}/records?${params}`);
    if (mine !== seq || current !== f.id) return;
    list.replaceChildren(...page.items.map(questionCard));
    shown.replaceChildren(page.matched === page.total ? "" : `${page.matched} of ${page.total} questions match`);
    renderPager(pager, page, SEARCH_PAGE, (offset) => {
      state.offset = offset;
      load();
    });
  }
  await load();
}

function questionCard(item) {
  const r = item.record;
  const c = r.compute || {};
  const chosen = new Set(item.chosen_path || []);
  const tree = el("ul", { class: "tree" }, treeNode(r.tree.nodes, 0, chosen, 0));
  const setAll = (open) => {
    for (const n of tree.querySelectorAll(".node")) setOpen(n, open);
  };
  return el(
    "div",
    { class: "card question " + (r.correct ? "correct" : "wrong"), "data-index": item.index, "data-line": r.line ?? item.line },
    el(
      "div",
      { class: "card-head" },
      el("strong", {}, `question at input line ${r.line ?? item.line}`),
      el("span", { class: "badge " + (r.correct ? "good" : "bad") + " verdict" }, r.correct ? "correct" : "wrong"),
      el("span", { class: "badge" }, `${r.strategy}, N = ${r.budget}${r.verifier ? ", verifier " + r.verifier : ""}`),
      r.difficulty !== undefined && r.difficulty !== null ? el("span", { class: "badge" }, "difficulty " + fmt(r.difficulty, 2)) : null,
    ),
    el("div", { class: "msg question-text" }, r.question),
    el("p", {}, "answer ", el("strong", { class: "answer" }, r.answer ?? "none found"), " · reference ", el("strong", {}, r.reference), ` · ${r.candidates} finished solutions, ${r.unparsed} without an answer`),
    el(
      "table",
      { class: "compute" },
      el("tr", {}, ["tokens generated", "prompt tokens (computed / reused)", "model calls", "verifier calls", "FLOPs"].map((h) => el("th", {}, h))),
      el(
        "tr",
        {},
        el("td", { class: "num tokens" }, fmtInt(c.tokens_generated)),
        el("td", { class: "num" }, `${fmtInt(c.prompt_tokens)} (${fmtInt(c.prompt_tokens_computed)} / ${fmtInt(c.prompt_tokens_reused)})`),
        el("td", { class: "num" }, fmtInt(c.model_calls)),
        el("td", { class: "num" }, fmtInt(c.verifier_calls)),
        el("td", { class: "num flops" }, fmtSci(c.flops)),
      ),
    ),
    el("h3", {}, "chosen solution"),
    el("div", { class: "solution" }, r.solution || "(none)"),
    el(
      "h3",
      {},
      `tree (${r.tree.nodes.length - 1} steps) `,
      el("button", { class: "expand-all", onclick: () => setAll(true) }, "open all"),
      " ",
      el("button", { class: "collapse-all", onclick: () => setAll(false) }, "close all"),
    ),
    tree,
  );
}

function setOpen(node, open) {
  node.classList.toggle("collapsed", !open);
  const t = node.querySelector(":scope > .head > .toggle");
  if (t) {
    t.textContent = open ? "▾" : "▸";
    t.setAttribute("aria-expanded", String(open));
  }
}

function treeNode(nodes, id, chosen, depth) {
  const n = nodes[id];
  const isRoot = id === 0;
  const open = isRoot || chosen.has(id);
  const text = n.text || "";
  const preview = text.replace(/\s+/g, " ").trim();
  const mean = n.visits ? n.value_sum / n.visits : null;
  const li = el(
    "li",
    { class: "node" + (chosen.has(id) ? " chosen" : "") + (open ? "" : " collapsed"), "data-id": id, "data-depth": depth },
    el(
      "div",
      { class: "head" },
      el("button", { class: "toggle", "aria-expanded": String(open), title: "open or close this step" }, open ? "▾" : "▸"),
      el("span", {}, isRoot ? "question" : `step ${depth}`),
      n.score !== undefined && n.score !== null ? el("span", { class: "badge score", title: "the verifier's score of this step" }, "score " + fmt(n.score)) : null,
      n.visits ? el("span", { class: "badge visits", title: "MCTS visits and mean value" }, `visits ${n.visits}, Q ${fmt(mean)}`) : null,
      n.prior ? el("span", { class: "badge", title: "MCTS prior" }, "prior " + fmt(n.prior, 2)) : null,
      n.restart ? el("span", { class: "badge" }, "restart") : null,
      n.finished ? el("span", { class: "badge " + (chosen.has(id) ? "good" : "") }, "answer " + (n.answer ?? "none")) : null,
      isRoot ? null : el("span", { class: "preview" }, preview),
    ),
    el(
      "div",
      { class: "body" },
      isRoot ? null : el("div", { class: "text" }, text),
      n.children.length ? el("ul", {}, n.children.map((c) => treeNode(nodes, c, chosen, depth + 1))) : null,
    ),
  );
  li.querySelector(":scope > .head > .toggle").addEventListener("click", () => setOpen(li, li.classList.contains("collapsed")));
  return li;
}

// ----------------------------------------------------------------- runs

async function fetchAll(f) {
  const rows = [];
  const limit = 5000;
  for (let offset = 0; ; offset += limit) {
    const page = await api(`api/files/${f.id}/records?offset=${offset}&limit=${limit}`);
    rows.push(...page.items.map((i) => i.record));
    if (page.items.length < limit || rows.length >= page.matched) break;
  }
  return rows;
}

async function showMetrics(f) {
  const rows = await fetchAll(f);
  if (current !== f.id) return;
  const finite = (v) => v !== null && v !== undefined && Number.isFinite(Number(v));
  const loss = rows.filter((r) => finite(r.loss)).map((r) => [r.step, r.loss]);
  const evalLoss = rows.filter((r) => finite(r.eval_loss)).map((r) => [r.step, r.eval_loss]);
  const lr = rows.filter((r) => finite(r.lr)).map((r) => [r.step, r.lr]);
  const grad = rows.filter((r) => finite(r.grad_norm)).map((r) => [r.step, r.grad_norm]);
  const last = rows[rows.length - 1] || {};
  const tokens = rows.reduce((s, r) => s + (Number(r.tokens) || 0), 0);
  view().replaceChildren(
    el("h2", {}, f.name),
    el(
      "p",
      {},
      el("span", { id: "row-count" }, String(rows.length)),
      ` steps, ${fmtInt(tokens)} tokens; last loss ${fmt(last.loss, 4)}`,
      evalLoss.length ? `, last eval loss ${fmt(evalLoss[evalLoss.length - 1][1], 4)}` : "",
      ".",
    ),
    el(
      "div",
      { class: "charts" },
      chart({
        id: "chart-loss",
        title: "loss",
        xLabel: "step",
        series: [
          { name: "train loss", key: "loss", points: loss, color: COLORS[0] },
          { name: "eval loss", key: "eval_loss", points: evalLoss, color: COLORS[1], markers: true },
        ],
      }),
      chart({ id: "chart-lr", title: "learning rate", xLabel: "step", series: [{ name: "lr", key: "lr", points: lr, color: COLORS[2] }] }),
      grad.length ? chart({ id: "chart-grad", title: "gradient norm", xLabel: "step", series: [{ name: "grad norm", key: "grad_norm", points: grad, color: COLORS[3] }] }) : null,
    ),
  );
}

async function showSweep(f) {
  const doc = await api(`api/files/${f.id}/document`);
  if (current !== f.id) return;
  const rows = doc.rows || [];
  const hasFlops = rows.length > 0 && rows.every((r) => Number.isFinite(Number(r.flops_per_question)) && r.flops_per_question !== null && r.flops_per_question > 0);
  const xSelect = el(
    "select",
    { id: "sweep-x" },
    el("option", { value: "tokens" }, "generated tokens per question"),
    el("option", { value: "flops", disabled: !hasFlops }, "FLOPs per question"),
  );
  const holder = el("div", { class: "charts" });
  const draw = () => {
    const key = xSelect.value === "flops" ? "flops_per_question" : "tokens_per_question";
    const strategies = [...new Set(rows.map((r) => r.strategy))];
    const series = strategies.map((s, i) => ({
      name: s,
      key: s,
      color: COLORS[i % COLORS.length],
      markers: true,
      points: rows
        .filter((r) => r.strategy === s && Number(r[key]) > 0)
        .map((r) => [Number(r[key]), 100 * r.accuracy])
        .sort((a, b) => a[0] - b[0]),
    }));
    if (key === "tokens_per_question" && Array.isArray(doc.compute_optimal) && doc.compute_optimal.length) {
      series.push({
        name: "compute-optimal (in-sample)",
        key: "compute-optimal",
        color: "#000",
        dashed: true,
        markers: true,
        points: doc.compute_optimal.filter((r) => Number(r.tokens_per_question) > 0).map((r) => [Number(r.tokens_per_question), 100 * r.accuracy]).sort((a, b) => a[0] - b[0]),
      });
    }
    holder.replaceChildren(
      chart({ id: "chart-sweep", title: "accuracy against compute", xLabel: xSelect.selectedOptions[0].textContent + " (log scale)", yLabel: "accuracy %", series, logX: true, yRange: [0, 100], width: 720, height: 380 }),
    );
  };
  xSelect.addEventListener("change", draw);
  const head = ["strategy", "N", "accuracy", "correct", "tokens / question", "FLOPs / question", "verifier calls", "unparsed"];
  view().replaceChildren(
    el("h2", {}, f.name),
    el("p", {}, `${doc.task ?? "?"} · ${doc.questions ?? "?"} questions · verifier ${doc.verifier ?? "none"} · ${doc.backend ?? ""}`),
    el("div", { class: "controls" }, el("label", {}, "compute: ", xSelect)),
    holder,
    el(
      "table",
      { class: "sweep-rows" },
      el("tr", {}, head.map((h) => el("th", {}, h))),
      rows.map((r) =>
        el(
          "tr",
          {},
          el("td", {}, r.strategy),
          el("td", { class: "num" }, r.budget),
          el("td", { class: "num" }, fmt(100 * r.accuracy, 1) + " %"),
          el("td", { class: "num" }, `${r.correct ?? "?"} / ${r.questions ?? "?"}`),
          el("td", { class: "num" }, fmt(r.tokens_per_question, 1)),
          el("td", { class: "num" }, fmtSci(r.flops_per_question)),
          el("td", { class: "num" }, fmtInt(r.verifier_calls)),
          el("td", { class: "num" }, fmtInt(r.unparsed)),
        ),
      ),
    ),
  );
  draw();
}

// ---------------------------------------------------------------- chart

function niceTicks(lo, hi, count) {
  const span = hi - lo;
  const raw = span / Math.max(1, count);
  const mag = Math.pow(10, Math.floor(Math.log10(raw)));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => span / s <= count) || 10 * mag;
  const ticks = [];
  for (let t = Math.ceil(lo / step) * step; t <= hi + step * 1e-9; t += step) ticks.push(t);
  return ticks;
}

function tickLabel(v) {
  const a = Math.abs(v);
  if (a !== 0 && (a < 1e-3 || a >= 1e5)) return v.toExponential(1);
  return String(Number(v.toPrecision(4)));
}

// A line chart as inline SVG: one polyline per series with a point per
// data point (so a curve has exactly as many points as its rows).
function chart({ id, title, xLabel, yLabel, series, logX = false, yRange = null, width = 520, height = 300 }) {
  const pad = { left: 62, right: 14, top: 26, bottom: 40 };
  const all = series.flatMap((s) => s.points);
  const tx = (x) => (logX ? Math.log10(x) : x);
  let xs = all.map((p) => tx(p[0]));
  let ys = all.map((p) => p[1]);
  if (!xs.length) {
    xs = [0, 1];
    ys = [0, 1];
  }
  let [x0, x1] = [Math.min(...xs), Math.max(...xs)];
  let [y0, y1] = [Math.min(...ys), Math.max(...ys)];
  if (x0 === x1) [x0, x1] = [x0 - 0.5, x1 + 0.5];
  if (logX) {
    const xPad = (x1 - x0) * 0.04;
    x0 -= xPad;
    x1 += xPad;
  }
  if (y0 === y1) [y0, y1] = [y0 - (Math.abs(y0) || 1) * 0.1, y1 + (Math.abs(y1) || 1) * 0.1];
  if (yRange) {
    [y0, y1] = [Math.min(y0, yRange[0]), Math.max(y1, yRange[1])];
  } else {
    const yPad = (y1 - y0) * 0.05;
    y0 -= yPad;
    y1 += yPad;
  }
  const W = width - pad.left - pad.right;
  const H = height - pad.top - pad.bottom;
  const px = (x) => pad.left + ((tx(x) - x0) / (x1 - x0)) * W;
  const py = (y) => pad.top + H - ((y - y0) / (y1 - y0)) * H;
  const root = svg("svg", { id, width, height, viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": title });
  root.append(svg("text", { x: pad.left, y: 16, "font-weight": "600" }, title));
  let xTicks;
  if (logX) {
    // Decades, with 2 and 5 between them when the range spans few.
    const mantissas = x1 - x0 > 3 ? [1] : [1, 2, 5];
    xTicks = [];
    for (let e = Math.floor(x0); e <= Math.ceil(x1); e++) {
      for (const m of mantissas) {
        const t = m * Math.pow(10, e);
        if (Math.log10(t) >= x0 - 1e-9 && Math.log10(t) <= x1 + 1e-9) xTicks.push(t);
      }
    }
  } else {
    xTicks = niceTicks(x0, x1, 6);
  }
  for (const t of xTicks) {
    const x = px(t);
    root.append(svg("line", { class: "grid", x1: x, x2: x, y1: pad.top, y2: pad.top + H }));
    root.append(svg("text", { x, y: pad.top + H + 14, "text-anchor": "middle" }, tickLabel(t)));
  }
  for (const t of niceTicks(y0, y1, 5)) {
    const y = py(t);
    root.append(svg("line", { class: "grid", x1: pad.left, x2: pad.left + W, y1: y, y2: y }));
    root.append(svg("text", { x: pad.left - 6, y: y + 4, "text-anchor": "end" }, tickLabel(t)));
  }
  root.append(svg("line", { class: "axis", x1: pad.left, x2: pad.left + W, y1: pad.top + H, y2: pad.top + H }));
  root.append(svg("line", { class: "axis", x1: pad.left, x2: pad.left, y1: pad.top, y2: pad.top + H }));
  root.append(svg("text", { x: pad.left + W / 2, y: height - 6, "text-anchor": "middle" }, xLabel || ""));
  if (yLabel) root.append(svg("text", { x: 12, y: pad.top + H / 2, transform: `rotate(-90 12 ${pad.top + H / 2})`, "text-anchor": "middle" }, yLabel));
  for (const s of series) {
    if (!s.points.length) continue;
    const points = s.points.map((p) => `${px(p[0]).toFixed(2)},${py(p[1]).toFixed(2)}`).join(" ");
    const line = svg("polyline", {
      class: "series series-" + s.key,
      "data-series": s.key,
      points,
      stroke: s.color,
      "stroke-dasharray": s.dashed ? "6 4" : null,
    });
    line.append(svg("title", {}, s.name));
    root.append(line);
    if (s.markers) {
      for (const p of s.points) {
        const dot = svg("circle", { class: "marker marker-" + s.key, cx: px(p[0]).toFixed(2), cy: py(p[1]).toFixed(2), r: 3.5, fill: s.color });
        dot.append(svg("title", {}, `${s.name}: ${tickLabel(p[0])}, ${tickLabel(p[1])}`));
        root.append(dot);
      }
    }
  }
  return el(
    "div",
    { class: "chart" },
    root,
    el(
      "div",
      { class: "legend" },
      series.map((s) => el("span", {}, el("span", { class: "swatch", style: `background:${s.color}` }), `${s.name} (${s.points.length})`)),
    ),
  );
}

main();
